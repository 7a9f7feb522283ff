"""Parked files: files that cannot succeed by retrying, kept with their reason, never deleted.

    .processing/_failed/<d>/<s>/<rel>          the file
    .processing/_failed_reasons/<d>/<s>/<rel>  {"reason", "rel", "blob_name", "at"}

A second file parked under a name already parked takes the next free name (`name~2`); the
reason file keeps its original path, so a requeue puts it back where it came from. A park is
announced (`file.parked`); a requeue makes a session that had ended drain again, so that it
ends anew, with a new manifest.

A reason file is read back like any file on the share (`read_reason`, through `nfs.reading`):
one that is not a regular file of ours, or whose path would lead out of its session folder or
to another folder than the one its file is parked in, is set aside with an error line, and its
file is listed as parked under the name it has. Listings walk the trees by descriptor, then
read the reasons not read before in batches (`_read_batch`), each an NFS call that stops after
a share of the NFS deadline: no number of parked files makes a call run into its deadline.
"""

import asyncio
import functools
import json
import logging
import os
import posixpath
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, FiniteFloat, field_validator

from nfs_watcher_uploader.constants import (
    MAX_NAME_VERSIONS,
    PARKED_DIR,
    PARKED_REASONS_DIR,
    SMALL_FILE_MAX,
)
from nfs_watcher_uploader.errors import SessionConflict
from nfs_watcher_uploader.items import (
    ParkedFile,
    WorkItem,
    error_text,
    is_session_name,
    log_extra,
    path_problem,
    printable,
)
from nfs_watcher_uploader.nfs import moves, state, trees
from nfs_watcher_uploader.nfs.layout import versioned
from nfs_watcher_uploader.nfs.moves import Moved
from nfs_watcher_uploader.nfs.reading import (
    Unusable,
    parse_json,
    read_regular,
    set_aside_or_leave,
)
from nfs_watcher_uploader.nfs.runner import until_spent
from nfs_watcher_uploader.redaction import redact
from nfs_watcher_uploader.work.context import Context, MoveFn

logger = logging.getLogger(__name__)

# The reason shown for a parked file whose reason file is missing or unusable.
NOT_RECORDED = "(reason not recorded)"

# (date, session, parked_as): one parked file.
Key = tuple[str, str, str]


class Reason(BaseModel):
    """A reason file, as `ParkedFiles.park` writes it; anything else in it is ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    reason: str = NOT_RECORDED
    # The file's path below its session folder, where a requeue puts it back.
    rel: str | None = None
    at: FiniteFloat | None = None

    @field_validator("rel")
    @classmethod
    def _inside_its_session(cls, v: str | None) -> str | None:
        if v is not None and (problem := path_problem(v)) is not None:
            raise ValueError(f"not a path inside its session folder: {problem}")
        return v


@dataclass(frozen=True, slots=True)
class Found:
    """A reason as read back: what it says (defaults where it says nothing usable), and, when
    the file was unusable, why and where it was set aside."""

    reason: Reason
    problem: str | None = None


class ReasonFolders:
    """Folders of the reasons tree, each entered once (without following a link) for a batch
    of reads: on a server some milliseconds away every path step is a round trip."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._open: dict[tuple[str, ...], int | None] = {}

    def get(self, *parts: str) -> int | None:
        if parts not in self._open:
            self._open[parts] = trees.open_folder(self.root, PARKED_REASONS_DIR, *parts)
        return self._open[parts]

    def close(self) -> None:
        for fd in self._open.values():
            if fd is not None:
                os.close(fd)
        self._open.clear()


def read_reason(root: Path, key: Key, folders: ReasonFolders | None = None) -> Found:
    """The reason of the parked file `key`, read from the processing `root` without following a
    link; an unusable one is set aside (under `_set_aside/`). Blocking: run it through Nfs."""
    date, session, parked_as = key
    *parts, name = parked_as.split("/")
    mine = folders is None
    folders = folders or ReasonFolders(root)
    try:
        fd = folders.get(date, session, *parts)
        if fd is None:
            return Found(Reason())
        try:
            raw = read_regular(name, SMALL_FILE_MAX, dir_fd=fd)
            if raw is None:
                return Found(Reason())
            reason = parse_json(raw, Reason)
            if reason.rel is not None and not _parked_as_from(reason.rel, parked_as):
                raise Unusable(
                    f"its path {printable(reason.rel)!r} is not the one its file "
                    f"{printable(parked_as)!r} was parked from"
                )
            return Found(reason)
        except Unusable as exc:
            path = root / PARKED_REASONS_DIR / date / session / parked_as
            return Found(Reason(), f"{exc}; {set_aside_or_leave(path, root, fd)}")
    finally:
        if mine:
            folders.close()


def _parked_as_from(rel: str, parked_as: str) -> bool:
    """`parked_as` is the name a file of path `rel` is parked under: `rel` itself, or one of
    its versions (`name~2`) when that name was taken (`ParkedFiles._park`)."""
    if rel == parked_as:
        return True
    if posixpath.dirname(rel) != posixpath.dirname(parked_as):
        return False
    return any(versioned(rel, v) == parked_as for v in range(2, MAX_NAME_VERSIONS + 1))


def named_as_listed(session_name: str, parked_as: str, names: Iterable[str]) -> str | None:
    """The one of `names` (a session's parked files, as NFS holds them) that `parked_as` names,
    given as NFS holds it or as listings show it (printable: a control character as `\\x1b`, a
    byte that is not UTF-8 as `\\xff`); None when none. Two it could name (`a\\x1b` written
    out, and `a` + ESC) raise SessionConflict: neither is touched."""
    named = {n for n in names if parked_as in (n, printable(n))}
    if len(named) > 1:
        raise SessionConflict(
            f"{printable(parked_as)!r} of session {session_name!r} may name "
            f"{len(named)} parked files; remove the one you mean from _failed/ by hand"
        )
    return named.pop() if named else None


def log_unusable(key: Key, problem: str) -> None:
    """The one line that names a reason file set aside."""
    logger.error(
        "Reason file of parked %s unusable: %s",
        printable("/".join(key)),
        printable(problem),
        extra={"session_name": key[1], "file_name": printable(key[2])},
    )


def remove_reason(root: Path, key: Key) -> None:
    """Remove the reason file of `key` (a regular file only, reached without a link)."""
    date, session, parked_as = key
    *folders, name = parked_as.split("/")
    fd = trees.open_folder(root, PARKED_REASONS_DIR, date, session, *folders)
    if fd is None:
        return
    try:
        if moves.is_regular(name, fd):
            os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class _Parked:
    item: WorkItem  # with the file's original rel
    parked_as: str  # its rel in the parked tree
    reason: str

    @property
    def key(self) -> Key:
        return self.item.date_prefix, self.item.session_name, self.parked_as

    def as_file(self) -> ParkedFile:
        item = self.item
        return ParkedFile(
            item.date_prefix, item.session_name, item.rel, self.parked_as, self.reason
        )


class ParkedFiles:
    """Park, list and requeue parked files. `requeue` queues an item (Pipeline.put)."""

    def __init__(
        self,
        context: Context,
        requeue: Callable[[WorkItem], bool],
        move: MoveFn = moves.move,
    ) -> None:
        self.layout, self.sessions, self.nfs = context.layout, context.sessions, context.nfs
        self.telemetry, self.stats = context.telemetry, context.stats
        self.webhooks = context.delivery.webhooks
        self._requeue, self._move = requeue, move
        # Held while parked files leave the parked tree (requeue, dismissals): two at once
        # would both list the same files.
        self.changing = asyncio.Lock()
        # Reasons read (or written) before: a reason file never changes once written, so a
        # listing reads only the reasons of files parked since.
        self._reasons: dict[Key, Reason] = {}

    def __repr__(self) -> str:
        return f"ParkedFiles(parked={self.sessions.parked()} reasons_known={len(self._reasons)})"

    async def park(self, item: WorkItem, reason: str) -> None:
        """Move the claimed file into the parked tree with its reason. Raises OSError when NFS
        fails (the caller retries later); nothing is ever parked over another parked file."""
        reason = redact(reason)  # kept on the share and shown: no credential in it
        blob_name = self.layout.blob_name(item)
        at = time.time()
        record = json.dumps(
            {"reason": reason, "rel": item.rel, "blob_name": blob_name, "at": at}
        ).encode()
        # Names the session holds parked, their files there or not: one whose file is gone is
        # a dismissal not recorded yet (dismissals.py), whose reason must not be written over.
        held = frozenset(self.sessions.for_item(item).parked)
        moved, parked_as = await self.nfs.call(lambda: self._park(item, record, held))
        error = f"{item.rel}: {reason}"
        done = moved is Moved.DONE
        if done:
            key = (item.date_prefix, item.session_name, parked_as)
            self._reasons[key] = Reason(reason=reason, rel=item.rel, at=at)
        self.sessions.for_item(item).park(item, parked_as if done else None, error)
        self.stats.parked += 1
        self.stats.last_error = error_text(error)
        self.telemetry.parked()
        where = self.layout.parked(item, parked_as) if done else None
        logger.error(
            "Parked %s: %s%s",
            printable(item.rel),
            error_text(reason),
            f"; it is in {printable(str(where))}" if where else "; it had vanished",
            extra=log_extra(item),
        )
        if done:
            data = {
                "session": item.session_name,
                "date_prefix": item.date_prefix,
                "path": printable(item.rel),
                "parked_as": printable(parked_as),
                "blob_name": printable(blob_name),
                "reason": printable(reason),
            }
            await self.webhooks.emit("file.parked", data)

    def _park(self, item: WorkItem, record: bytes, held: frozenset[str]) -> tuple[Moved, str]:
        src, root = self.layout.processing(item), self.layout.processing_root
        # The reason is written first, so the file is never listed without it. Both go into
        # their trees by descriptor: a link planted there never leads a parked file out (where
        # no listing would find it, and its reason alone would read as a dismissal).
        for version in range(1, MAX_NAME_VERSIONS + 1):
            rel = versioned(item.rel, version)
            if rel in held:
                continue
            parked = self.layout.parked(item, rel)
            folder = trees.make_folder(root, *parked.parent.relative_to(root).parts)
            try:
                if not moves.is_absent(parked.name, folder):
                    continue
                state.write_atomic(self.layout.reason(item, rel), record, ".reason.tmp-", root)
                moved = self._move(src, parked, None, dst_dir_fd=folder)
            finally:
                os.close(folder)
            if moved is not Moved.DONE:
                remove_reason(root, (item.date_prefix, item.session_name, rel))
            if moved is not Moved.TAKEN:
                return moved, rel
        raise OSError(f"{MAX_NAME_VERSIONS} parked files are named like {item.rel}")

    def forget(self, key: Key) -> None:
        """The parked file `key` left the parked tree (requeued, dismissed)."""
        self._reasons.pop(key, None)

    async def listing(
        self,
        date_prefix: str | None = None,
        session_name: str | None = None,
        limit: int | None = None,
    ) -> list[ParkedFile]:
        """Parked files with their reasons, read from the parked tree: all of them, or those of
        one session (under one date, if given); only the first `limit` in name order (only
        their reasons are read: the status page asks a page's worth). Raises OSError when NFS
        fails."""
        return [p.as_file() for p in await self._find(date_prefix, session_name, limit)]

    async def _find(
        self, date_prefix: str | None, session_name: str | None, limit: int | None = None
    ) -> list[_Parked]:
        root = self.layout.processing_root

        def folders() -> list[tuple[str, str]]:
            dates = trees.date_dirs(root, PARKED_DIR)
            return [
                (date, name)
                for date in dates
                if date_prefix in (None, date)
                for name, is_dir, _ in trees.listdir(root, PARKED_DIR, date)
                if is_dir and session_name in (None, name)
            ]

        keys: list[Key] = []
        for date, name in await self.nfs.call(folders):
            files = await self.nfs.call(
                functools.partial(trees.files_below, root, PARKED_DIR, date, name)
            )
            keys += [(date, name, parked_as) for parked_as in files]
        listed = set(keys)
        keys = keys[:limit]
        await self._read_reasons(keys)
        for key in [k for k in self._reasons if k not in listed]:
            if date_prefix in (None, key[0]) and session_name in (None, key[1]):
                del self._reasons[key]  # gone from the parked tree
        out: list[_Parked] = []
        for key in keys:
            date, name, parked_as = key
            reason = self._reasons.get(key, Reason())
            item = WorkItem(name, date, reason.rel or parked_as, claimed=True)
            out.append(_Parked(item, parked_as, reason.reason))
        return out

    async def _read_reasons(self, keys: list[Key]) -> None:
        """Read the reasons not known yet, in batches (`Nfs.in_batches`)."""
        todo = [key for key in keys if key not in self._reasons]
        for key, found in zip(todo, await self.nfs.in_batches(todo, self._read_batch), strict=True):
            self._reasons[key] = found.reason
            if found.problem is not None:
                log_unusable(key, found.problem)

    def _read_batch(self, keys: Sequence[Key], budget: float) -> list[Found]:
        folders = ReasonFolders(self.layout.processing_root)
        try:
            return until_spent(keys, budget, lambda key: read_reason(folders.root, key, folders))
        finally:
            folders.close()

    async def requeue(self, session_name: str | None, parked_as: str | None = None) -> int:
        """Move parked files back into `.processing` and queue them: all, a session's, or the
        session's file `parked_as` (its name as NFS holds it, or as the listing shows it:
        printable). Returns how many. Raises SessionConflict when `parked_as` could name two
        files (see `named_as_listed`)."""
        async with self.changing:
            count = 0
            found = await self._find(None, session_name)
            if parked_as is not None:  # one file: the one it names, if any (SessionConflict)
                names = (p.parked_as for p in found)
                named = named_as_listed(session_name or "", parked_as, names)
                found = [p for p in found if p.parked_as == named]
            for parked in found:
                item = parked.item
                if not is_session_name(item.session_name):  # listed, never taken (recovery)
                    continue
                moved = await self.nfs.call(functools.partial(self._unpark, parked))
                if moved is Moved.TAKEN:
                    logger.warning(
                        "Parked %s stays parked: a file of that name is in progress",
                        printable(item.rel),
                        extra=log_extra(item),
                    )
                if moved is not Moved.DONE:
                    continue
                self.forget(parked.key)
                session = self.sessions.for_item(item)
                session.unpark(parked.parked_as)
                await self.sessions.reopen(session)
                self._requeue(item)
                count += 1
            return count

    def _unpark(self, parked: _Parked) -> Moved:
        """Move the parked file (reached without following a link) back to where it was
        claimed; its reason goes once it is there."""
        date, session, parked_as = parked.key
        *folders, name = parked_as.split("/")
        root = self.layout.processing_root
        fd = trees.open_folder(root, PARKED_DIR, date, session, *folders)
        if fd is None:
            return Moved.GONE
        try:
            if not moves.is_regular(name, fd):
                return Moved.GONE
            moved = moves.move(name, self.layout.processing(parked.item), src_dir_fd=fd)
        finally:
            os.close(fd)
        if moved is Moved.DONE:
            remove_reason(root, parked.key)
        return moved
