"""The roster: who is a member, who is alive, who leads, and who adopts the dead.

One listing of the control container, with metadata, every ROSTER_EVERY_S, shows every member
blob with its lease status, ETag and metadata, and the session state blob's ETag (so a change
of the state costs a read only when it happened).

    live      a member blob whose lease is held (Azure lists it `locked`) for a fixed period,
              as members take it, and not adopted
    dead      any other member blob: its lease expired, was broken or released, or it is held
              by a lease no member takes (an infinite one, acquired by hand: Storage Explorer's
              "Acquire Lease"), which its adopter breaks
    leader    the oldest live member (by the creation time storage gave its blob; then by name):
              every replica reads the same listing, so they agree without a lease of its own,
              and every leader action is conditional, so two brief leaders are harmless
    orphan    a dead member not adopted by a live one

Adoption, as the Event Hubs checkpoint store claims a partition: a metadata write with
If-Match on the ETag the listing showed, naming the adopter. Of several peers that try, one
wins; the others get 412 and move on. The write also fails (412 LeaseIdMissing) when the
member renewed its lease since the listing, and, being a write, it ends the dead member's
claim to its expired lease: Azure refuses its renew from then on, so a member that was only
paused learns at its next renew that it is over. A removal is conditional on the ETag too.

Everything listed is read as untrusted: blobs whose names are not ours are ignored and
counted, and metadata that does not parse leaves a member without progress, never without
its place in the roster.
"""

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobLeaseClient, BlobProperties, ContainerClient

from nfs_watcher_uploader.coord import progress as progress_codec
from nfs_watcher_uploader.coord.constants import (
    MEMBERS_MAX,
    MEMBERS_PREFIX,
    META_ADOPTED_AT,
    META_ADOPTED_BY,
    META_HOST,
    META_PROGRESS,
    META_VERSION,
    STATE_BLOB,
)
from nfs_watcher_uploader.coord.errors import STORAGE_ERRORS, classify, status_of, summary
from nfs_watcher_uploader.coord.fields import label, plain, quoted
from nfs_watcher_uploader.coord.names import incarnation_of, is_incarnation, member_blob
from nfs_watcher_uploader.coord.rendezvous import file_key, owner_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One member blob as the listing showed it."""

    incarnation: str
    etag: str  # quoted, for If-Match
    held: bool
    created: float  # storage's clock, seconds since the epoch
    host: str = ""
    version: str = ""
    adopted_by: str | None = None
    adopted_at: str | None = None
    progress: dict[str, dict[str, int]] = field(default_factory=dict[str, dict[str, int]])
    # What could not be read in its metadata (None: all of it could).
    problem: str | None = None
    # Locked by a lease no member takes (not for a fixed period): not `held`, and broken by
    # the adopter, whose write it would refuse.
    foreign_lease: bool = False

    @property
    def live(self) -> bool:
        return self.held and self.adopted_by is None

    @property
    def order(self) -> tuple[float, str]:
        return self.created, self.incarnation


@dataclass(frozen=True, slots=True)
class View:
    """One listing. Every replica that reads the same listing draws the same conclusions."""

    members: tuple[MemberRecord, ...]  # oldest first
    state_etag: str | None = None
    ignored: int = 0  # blobs in the control container that are not ours to read
    taken_at: float = 0.0  # monotonic

    def live(self) -> list[MemberRecord]:
        return [m for m in self.members if m.live]

    def live_names(self) -> list[str]:
        return [m.incarnation for m in self.members if m.live]

    def get(self, incarnation: str) -> MemberRecord | None:
        return next((m for m in self.members if m.incarnation == incarnation), None)

    def leader(self) -> str | None:
        """The oldest live member."""
        return next((m.incarnation for m in self.members if m.live), None)

    def orphans(self, me: str) -> list[MemberRecord]:
        """Dead members that no live member has adopted (one adopted by a member that died
        since is an orphan again: renames never replace, so adopting twice is safe)."""
        live = set(self.live_names())
        return [
            m
            for m in self.members
            if not m.live and m.incarnation != me and m.adopted_by not in live
        ]

    def adopted_by(self, me: str) -> list[MemberRecord]:
        return [m for m in self.members if not m.live and m.adopted_by == me]

    def owner_of(self, session: str, rel: str) -> str | None:
        """The live member a file goes to (None: no member is live)."""
        return owner_of(file_key(session, rel), self.live_names())

    def fingerprint(self) -> frozenset[tuple[str, str, bool]]:
        """Changes whenever a member joins, dies, is adopted or removed, or writes its blob."""
        return frozenset((m.incarnation, m.etag, m.held) for m in self.members)


class Roster:
    """Lists and acts on member blobs, with a control client of its own."""

    def __init__(self, client: ContainerClient) -> None:
        self._client = client
        self.listings = 0
        self.requests = 0
        self.adoptions = 0
        self.removals = 0
        self._reported: set[str] = set()

    def __repr__(self) -> str:
        return (
            f"Roster(listings={self.listings} adoptions={self.adoptions} removals={self.removals})"
        )

    def read(self) -> View:
        """One listing (one request per 5,000 blobs). Raises ControlUnavailable or
        ControlRefused."""
        members: list[MemberRecord] = []
        state_etag: str | None = None
        ignored = 0
        try:
            pages = self._client.list_blobs(include=["metadata"]).by_page()
            for page in pages:
                self.requests += 1
                for blob in page:
                    if blob.name == STATE_BLOB:
                        state_etag = quoted(str(blob.etag))
                    elif not blob.name.startswith(MEMBERS_PREFIX):
                        continue
                    elif len(members) >= MEMBERS_MAX or incarnation_of(blob.name) is None:
                        ignored += 1
                    else:
                        members.append(self._record(blob))
        except STORAGE_ERRORS as exc:
            raise classify(exc, "listing the control container") from None
        self.listings += 1
        if ignored:
            self._report("ignored", f"{ignored} blobs under {MEMBERS_PREFIX} are not members")
        members.sort(key=lambda m: m.order)
        return View(tuple(members), state_etag, ignored, time.monotonic())

    def _record(self, blob: BlobProperties) -> MemberRecord:
        incarnation = str(incarnation_of(blob.name))
        # A value may be missing (an empty one is listed as none), or anything at all.
        listed = cast(dict[str, object], blob.metadata or {})
        meta = {k: v for k, v in listed.items() if isinstance(v, str)}
        problems: list[str] = []
        adopted_by = meta.get(META_ADOPTED_BY)
        if adopted_by is not None and not is_incarnation(adopted_by):
            problems.append("its adopter is not an incarnation")
            adopted_by = None
        progress: dict[str, dict[str, int]] = {}
        if META_PROGRESS in meta:
            try:
                progress = progress_codec.parse(meta[META_PROGRESS])
            except ValueError as exc:
                problems.append(f"progress: {exc}")
        if problems:
            self._report(incarnation, f"member {incarnation}: " + "; ".join(problems))
        created = blob.creation_time or blob.last_modified
        locked = plain(blob.lease.status) == "locked"
        fixed = plain(blob.lease.duration) == "fixed"
        if locked and not fixed:
            self._report(
                f"{incarnation}-lease",
                f"member {incarnation}: held by a lease no member takes; read as dead",
            )
        return MemberRecord(
            incarnation=incarnation,
            etag=quoted(str(blob.etag)),
            held=locked and fixed,
            created=created.timestamp() if created else 0.0,
            host=label(meta.get(META_HOST, "")),
            version=label(meta.get(META_VERSION, "")),
            adopted_by=adopted_by,
            adopted_at=label(meta.get(META_ADOPTED_AT, "")) or None,
            progress=progress,
            problem="; ".join(problems) or None,
            foreign_lease=locked and not fixed,
        )

    def _report(self, key: str, text: str) -> None:
        if key not in self._reported:  # once per member, not at every listing
            self._reported.add(key)
            logger.warning("Control container: %s", text)

    def adopt(self, record: MemberRecord, me: str) -> MemberRecord | None:
        """Claim the dead member `record` for `me`, by a write conditional on its listed ETag.
        Returns the adopted record (with its new ETag), or None when another peer won, the
        member renewed since the listing, or its blob is gone."""
        labels = {META_HOST: record.host, META_VERSION: record.version}
        metadata = {k: v for k, v in labels.items() if v}
        metadata[META_ADOPTED_BY] = me
        metadata[META_ADOPTED_AT] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if record.progress:
            metadata[META_PROGRESS] = progress_codec.encode(record.progress)[0]
        blob = self._client.get_blob_client(member_blob(record.incarnation))
        try:
            if record.foreign_lease:  # a lease does not change the ETag: If-Match still holds
                self.requests += 1
                BlobLeaseClient(blob).break_lease(lease_break_period=0, if_match=record.etag)
            self.requests += 1
            written = blob.set_blob_metadata(metadata, if_match=record.etag)
        except HttpResponseError as exc:
            if status_of(exc) in (404, 409, 412):
                logger.info("Not adopting %s: %s", record.incarnation, summary(exc))
                return None
            raise classify(exc, f"adopting member {record.incarnation}") from None
        except STORAGE_ERRORS as exc:
            raise classify(exc, f"adopting member {record.incarnation}") from None
        self.adoptions += 1
        logger.warning("Adopted member %s (lease not held)", record.incarnation)
        return MemberRecord(
            incarnation=record.incarnation,
            etag=quoted(str(written["etag"])),
            held=False,
            created=record.created,
            host=record.host,
            version=record.version,
            adopted_by=me,
            adopted_at=metadata[META_ADOPTED_AT],
            progress=record.progress,
        )

    def remove(self, record: MemberRecord) -> bool:
        """Delete a dead member's blob once everything it had is handled, if it is still as
        `record` shows it (If-Match). False when it changed or is gone."""
        if record.live:
            raise ValueError("a live member is never removed")
        blob = self._client.get_blob_client(member_blob(record.incarnation))
        try:
            self.requests += 1
            blob.delete_blob(if_match=record.etag)
        except HttpResponseError as exc:
            if status_of(exc) in (404, 409, 412):
                return False
            raise classify(exc, f"removing member {record.incarnation}") from None
        except STORAGE_ERRORS as exc:
            raise classify(exc, f"removing member {record.incarnation}") from None
        self.removals += 1
        return True
