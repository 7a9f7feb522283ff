"""Which live member a file goes to: rendezvous (highest random weight) hashing of
(session, path).

Every member computes the same answer from the same list of live members, with no message
between them. When a member leaves, only the files it had move (each to the member with the
next highest weight); when one joins, only the files it now wins move to it. Two members that
disagree for a moment about who is live both try to claim a file, and the rename lets one
win: disagreement costs a failed rename, never a double claim.
"""

import hashlib
from collections.abc import Iterable

_SEP = b"\0"  # neither a session name nor a path holds a NUL byte


def file_key(session: str, rel: str) -> bytes:
    """The key of a file: its session and its path below the session folder (a path that is
    not valid UTF-8 keeps its bytes)."""
    return session.encode() + _SEP + rel.encode("utf-8", "surrogateescape")


def weight(member: str, key: bytes) -> int:
    digest = hashlib.blake2b(member.encode() + _SEP + key, digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(key: bytes, members: Iterable[str]) -> str | None:
    """The member with the highest weight for `key` (ties, which need a 64-bit collision,
    go to the greater name); None when there is no member."""
    best: tuple[int, str] | None = None
    for member in members:
        candidate = (weight(member, key), member)
        if best is None or candidate > best:
            best = candidate
    return None if best is None else best[1]
