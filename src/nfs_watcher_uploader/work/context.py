"""What the steps of a file share (`Context`: where files go, whose they are, NFS, the counters,
delivery) and what a test may put in their place (`Seams`). Owned by the pipeline, which builds
them; the transfer of a file and the parked files take them."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from nfs_watcher_uploader.cloud.delivery import Delivery
from nfs_watcher_uploader.items import Stats
from nfs_watcher_uploader.nfs import copying, moves
from nfs_watcher_uploader.nfs.copying import Staged
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.nfs.moves import Moved
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.sessions.registry import Sessions
from nfs_watcher_uploader.telemetry import Telemetry

if TYPE_CHECKING:
    from nfs_watcher_uploader.work.progress import FileState

# Test seams: called between stage and upload with the staged path and what was staged (it
# may return a replacement, to corrupt an in-memory copy); the claim; the other renames; the
# copy.
StagedHook = Callable[[Path, Staged], Staged | None]
ClaimFn = Callable[[Path, str, Path, tuple[int, int] | None, bool], Moved]
# (src, dst, expect, *, dst_dir_fd=None): `moves.move`.
MoveFn = Callable[..., Moved]
CopyFn = Callable[..., Staged]


@dataclass(frozen=True, slots=True)
class Seams:
    """What a test may put in place of the real steps (see the types above)."""

    on_staged: StagedHook | None = None
    claim: ClaimFn = moves.claim
    move: MoveFn = moves.move
    copy: CopyFn = copying.copy_and_hash


class Progress(Protocol):
    """Where a long step reports that it is still moving, and which step a file is in (a
    worker's slot)."""

    progress: float

    def touch(self) -> None: ...

    def enter(self, state: "FileState", size: int | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class Replica:
    """What the steps of a file need to know about the other replicas on the share.

    `valid` says whether this process may claim now (with APP_COORDINATION=azure: its
    membership is valid, see coord/validity.py); it is asked in the claim's own thread, just
    before the rename. `shared`: other replicas may take this process's claimed files over
    (a peer adopted them while this one was paused), so a claimed file that is gone was taken
    by a peer: not an error, and not counted here."""

    valid: Callable[[], bool] = lambda: True
    shared: bool = False


ALONE = Replica()


@dataclass(frozen=True, slots=True)
class Context:
    """What the steps of a file share: where files go, whose they are, NFS, the counters."""

    layout: Layout
    sessions: Sessions
    nfs: Nfs
    telemetry: Telemetry
    stats: Stats
    delivery: Delivery
    replica: Replica = ALONE
