"""Files this run marked completed, waiting for GC's last look: what was committed of each, so
that GC deletes a file only while it still has that size and mtime. The transfer of a file adds
to it; GC reads a snapshot and forgets what it has dealt with."""

from dataclasses import dataclass
from pathlib import Path

from nfs_watcher_uploader.items import WorkItem


@dataclass(frozen=True, slots=True)
class Completed:
    """A file in the completed tree: what was committed, for GC's last look before deleting."""

    item: WorkItem
    size: int
    mtime_ns: int


class CompletedFiles:
    """Completed path -> what was committed. Touched on the event loop only."""

    def __init__(self) -> None:
        self._records: dict[Path, Completed] = {}

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"CompletedFiles(waiting={len(self._records)})"

    def add(self, path: Path, record: Completed) -> None:
        self._records[path] = record

    def snapshot(self) -> dict[Path, Completed]:
        """A copy, for a thread to check without reading state the loop changes."""
        return dict(self._records)

    def forget(self, path: Path, record: Completed) -> None:
        """GC dealt with `record`; a file completed anew at `path` since is kept."""
        if self._records.get(path) is record:
            del self._records[path]
