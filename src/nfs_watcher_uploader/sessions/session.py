"""One session: its state (active, draining, drained, drain_timed_out), the work this process
owns for it, and the progress of its files as the API and the manifest report them."""

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from nfs_watcher_uploader.items import SessionStateName, Where, WorkItem, error_text, printable
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.nfs.scan import Scan, ScanMap
from nfs_watcher_uploader.rates import SampledRate

# Where a file this process works on is: waiting in the queue, being transferred, or waiting
# for its next attempt.
Phase = Literal["queued", "in_flight", "retrying"]
WATCHED_STATES = ("active", "draining")
NOTICES_KEPT = 20
# A session's date, state, start, stop and reopening: what a restart changes.
_Dates = tuple[str, SessionStateName, float, float | None, float | None]


@dataclass
class Session:
    """One session: what a restart keeps (name, date, state, times) and what this process
    learnt since (the counters, its work in progress, the last scan's findings)."""

    name: str
    date_prefix: str
    state: SessionStateName
    started_at: float
    stopped_at: float | None = None
    # Set when an ended session drains again (parked files retried or dismissed, a late
    # write): it drains again from then.
    redrained_at: float | None = None
    # The generation of its latest end (`reports`): a manifest is never written over by the
    # report of an older end.
    generation: int = 0
    # It drains again because a file it had uploaded changed (a late write): its next end is
    # reported as an update (`session.updated`).
    updated: bool = False
    # Progress: since this process started, from what the ledger and the parked files said at
    # start-up (`restore`).
    files_seen: int = 0
    bytes_seen: int = 0
    uploaded: int = 0
    bytes_uploaded: int = 0
    waiting: int = 0
    # Files the filter leaves in incoming, from the last scan.
    excluded: list[str] = field(default_factory=list[str])
    renamed: int = 0
    late_writes: int = 0
    dismissed: int = 0
    last_error: str | None = None
    # Work this process owns for the session: the file's place -> (phase, the work's ticket).
    pending: dict[tuple[Where, str], tuple[Phase, int]] = field(
        default_factory=dict[tuple[Where, str], tuple[Phase, int]]
    )
    # Files parked in the failed folder.
    parked: set[str] = field(default_factory=set[str])
    # From the last scan: entries that are not regular files, folders too deep to upload.
    ignored: dict[str, str] = field(default_factory=dict[str, str])
    too_deep: list[str] = field(default_factory=list[str])
    unreadable: dict[str, str] = field(default_factory=dict[str, str])
    # Files dated in the future: judged by how long they stay unchanged here.
    future: set[str] = field(default_factory=set[str])
    # Files left in incoming because an earlier file of the same name is still in progress.
    held: set[str] = field(default_factory=set[str])
    notices: deque[str] = field(default_factory=lambda: deque[str](maxlen=NOTICES_KEPT))
    # Blobs counted from the ledger at start-up whose files were still in progress then (blob ->
    # size): uploaded again (found already there), they are not counted twice.
    restored: dict[str, int] = field(default_factory=dict[str, int])
    # The last scan's files in incoming (the watcher's own map, not a copy), and their bytes,
    # summed when first asked (`bytes_in_incoming`).
    incoming: ScanMap = field(default_factory=ScanMap, repr=False)
    _incoming_bytes: tuple[ScanMap | None, int] = (None, 0)
    # The rate of its bytes done, sampled when the API asks (work/progress).
    done_rate: SampledRate | None = field(default=None, repr=False)
    # With other replicas (APP_COORDINATION=azure): the generation of the shared state whose
    # write began the current drain, and the generation this member's last pass began with if
    # it found nothing of the session here (0: it found something, or has not looked).
    drain_gen: int = 0
    quiet_gen: int = 0

    @property
    def watched(self) -> bool:
        return self.state in WATCHED_STATES

    def bytes_in_incoming(self) -> int:
        """Bytes of the files the last scan found in incoming (computed once per scan, when
        asked: a scan may list 100,000 files)."""
        summed_for, total = self._incoming_bytes
        if summed_for is not self.incoming:
            total = sum(seen[0] for seen in self.incoming.values() if seen and seen[0] > 0)
            self._incoming_bytes = (self.incoming, total)
        return total

    @property
    def drain_start(self) -> float:
        """When the current drain began: the stop, or the retry that reopened the session."""
        return self.redrained_at or self.stopped_at or 0.0

    def count(self, phase: Phase) -> int:
        return sum(1 for p, _ in self.pending.values() if p == phase)

    def busy(self) -> set[str]:
        """Names that work is queued, in flight or retrying for, in incoming or claimed: a file
        of such a name in incoming is not offered (again) until that work is done."""
        return {rel for where, rel in self.pending if where != "completed"}

    def mark(self, item: WorkItem, phase: Phase) -> None:
        self.pending[item.place] = (phase, item.ticket)

    def release(self, item: WorkItem) -> None:
        """No more work on `item` (done, parked, skipped). Work that holds its place since
        (another ticket) is left alone."""
        if self.pending.get(item.place, (None, 0))[1] == item.ticket:
            del self.pending[item.place]

    def count_uploaded(self, item: WorkItem, size: int | None) -> None:
        self.release(item)
        counted = self.restored.pop(Layout.blob_name(item), None)
        if counted is None:
            self.uploaded += 1
            self.bytes_uploaded += size or 0
        elif size:  # sent again, whole, over a blob the ledger had: its size now
            self.bytes_uploaded += size - counted

    def restore(
        self,
        uploaded: int,
        bytes_uploaded: int,
        pending: int,
        restored: dict[str, int],
        *,
        dismissed: int,
    ) -> None:
        """Counters after a restart, from the ledger (`uploaded`, `bytes_uploaded`: one per
        blob, as the manifest counts; `dismissed`: the parked files an operator took out, as
        the manifest lists them) and the parked files (already in `parked`); `pending` files
        left in progress have no line yet, `restored` blobs do (see the field)."""
        self.uploaded, self.bytes_uploaded, self.restored = uploaded, bytes_uploaded, restored
        self.dismissed = dismissed
        self.files_seen = uploaded + len(self.parked) + pending
        # Files in progress are staged again, and counted then.
        self.bytes_seen = bytes_uploaded - sum(restored.values())

    def park(self, item: WorkItem, parked_as: str | None, error: str) -> None:
        """`item` is parked as `parked_as` (None: it had vanished, nothing was parked)."""
        self.release(item)
        if parked_as is not None:
            self.parked.add(parked_as)
        self.fail(error)

    def found_parked(self, parked_as: str) -> None:
        """A file parked by an earlier run."""
        self.parked.add(parked_as)

    def unpark(self, parked_as: str) -> None:
        self.parked.discard(parked_as)

    def dismiss(self, parked_as: str, text: str) -> None:
        """An operator took the parked file out: it no longer keeps the session from draining."""
        self.parked.discard(parked_as)
        self.dismissed += 1
        self.notice(text)

    def fail(self, error: str) -> None:
        self.last_error = error_text(error)

    def hold(self, rel: str) -> bool:
        """`rel` waits in incoming for an earlier file of its name; True the first time."""
        first = rel not in self.held
        self.held.add(rel)
        return first

    def claimed(self, before: WorkItem, after: WorkItem | None) -> None:
        """A claim ended: `after` is the claimed item, None when the file was not taken."""
        self.held.discard(before.rel)
        self.release(before)
        if after is not None:
            self.files_seen += 1
            self.mark(after, "in_flight")

    def staged(self, size: int) -> None:
        self.bytes_seen += size

    def count_renamed(self, text: str) -> None:
        self.renamed += 1
        self.notice(text)

    def count_late_write(self, text: str) -> None:
        self.late_writes += 1
        self.notice(text)

    def ignore(self, item: WorkItem, what: str, text: str) -> None:
        """`item` is not a regular file of ours: no work on it, and it is reported."""
        self.release(item)
        self.ignored[item.rel] = what
        self.notice(text)

    def observe(self, scan: Scan, future: list[str]) -> list[tuple[int, str]]:
        """Take what a scan found that will never be uploaded; return what is new, as (log
        level, message) for the watcher to log."""
        new: list[tuple[int, str]] = []
        if scan.problem is not None and self.last_error != scan.problem:
            new.append((logging.ERROR, f"{scan.problem}; nothing in it is taken"))
            self.fail(scan.problem)
        for rel, what in scan.ignored.items():
            if self.ignored.get(rel) != what:
                new.append((logging.WARNING, f"{rel}: {what}; left alone"))
        for rel in set(scan.too_deep) - set(self.too_deep):
            new.append((logging.ERROR, f"{rel}: folder too deep to upload; cannot drain"))
        for rel, why in scan.unreadable.items():
            if self.unreadable.get(rel) != why:
                new.append((logging.ERROR, f"{rel}: cannot be read ({why}); cannot drain"))
        for rel in set(future) - self.future:
            new.append(
                (logging.WARNING, f"{rel}: its mtime is in the future (the writer's clock?)")
            )
        self.future = set(future)
        for _, text in new:
            self.notice(text)
        self.ignored, self.too_deep = scan.ignored, scan.too_deep
        self.incoming = scan.files
        self.unreadable = scan.unreadable
        # A file whose name an earlier, claimed file still holds waits in incoming.
        # (Counted from the work in progress, which is small, not from the files, which may be
        # 100,000 at every poll.)
        waiting_for = {
            rel for where, rel in self.pending if where == "claimed" and rel in scan.files
        }
        for rel in sorted(waiting_for - self.held):
            new.append((logging.INFO, f"{rel}: waits until an earlier file of that name is done"))
            self.notice(new[-1][1])
        self.held = (self.held & scan.files.keys()) | waiting_for
        self.waiting = len(scan.files) - len(self.busy() & scan.files.keys())
        self.excluded = scan.excluded
        return new

    def restart(self, date_prefix: str, now: float) -> "_Dates":
        """Make this drained (or timed out) session active again, keeping what it still owns
        (parked files, work in progress). Returns what `undo` needs."""
        before = (
            self.date_prefix,
            self.state,
            self.started_at,
            self.stopped_at,
            self.redrained_at,
        )
        self.date_prefix, self.state, self.started_at, self.stopped_at = (
            date_prefix,
            "active",
            now,
            None,
        )
        self.redrained_at = None  # its next drain starts at its next stop
        return before

    def undo(self, before: "_Dates") -> None:
        (
            self.date_prefix,
            self.state,
            self.started_at,
            self.stopped_at,
            self.redrained_at,
        ) = before

    def notice(self, text: str) -> None:
        """Keep `text` (made printable) among the session's latest notices."""
        self.notices.append(printable(text))

    def __repr__(self) -> str:
        return (
            f"Session({self.name!r} {self.state} date={self.date_prefix} "
            f"uploaded={self.uploaded} pending={len(self.pending)} parked={len(self.parked)})"
        )


def today_utc(clock: Callable[[], float] = time.time) -> str:
    return datetime.fromtimestamp(clock(), UTC).strftime("%Y%m%d")
