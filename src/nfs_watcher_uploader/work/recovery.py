"""Recovery: on start, queue every file a previous run left unfinished.

Files under `.processing/<YYYYMMDD>/<session>/` were claimed but not completed; their upload is
repeated (a blob already there with the same bytes is recognised, not sent again). Files in
`_completed/` were committed by the previous run, which took with it what it knew of them: each
is checked once more against its blob (named like it), where it lies, before GC may delete it;
one written to after its upload goes up again over the same blob. Parked files under `_failed/`
are counted, not retried; each session's counters are read back from its ledger (`recount`).
A session found only through such files is resumed: as the active session when no state file
was ever written (the original design's auto-resume), else as draining. Folders whose names
cannot be session names are left alone and reported.
"""

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from nfs_watcher_uploader.constants import COMPLETED_DIR, PARKED_DIR
from nfs_watcher_uploader.items import WorkItem, check_session_name, printable
from nfs_watcher_uploader.nfs import trees
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.sessions.registry import Sessions
from nfs_watcher_uploader.work.pipeline import Pipeline
from nfs_watcher_uploader.work.recount import recount

logger = logging.getLogger(__name__)


async def recover(
    sessions: Sessions,
    pipeline: Pipeline,
    nfs: Nfs,
    settle_parked: Callable[[], Awaitable[object]] | None = None,
) -> int:
    """Queue unfinished and completed files, count parked ones (after `settle_parked`, which
    deals with reasons left without their parked file). Returns how many files were queued."""
    layout = pipeline.layout

    def listing() -> tuple[list[WorkItem], list[WorkItem], list[WorkItem]]:
        return (
            _items(layout.processing_root),
            _items(layout.processing_root, PARKED_DIR),
            [layout.as_completed(i) for i in _items(layout.processing_root, COMPLETED_DIR)],
        )

    left, parked, completed = await nfs.call(listing, timeout=nfs.timeout * 10)
    fresh_install = sessions.loaded and not sessions.by_name
    for item in parked:
        sessions.for_item(item).found_parked(item.rel)
    for item in left:
        sessions.for_item(item)
    if fresh_install and left:
        newest = max(left, key=lambda i: (i.date_prefix, i.session_name))
        sessions.resume(newest.session_name)
    if left or parked:
        try:
            await sessions.save()
        except OSError:
            logger.warning("Could not save session state after recovery", exc_info=True)
    # Before anything is queued: no park may start while reasons without files are settled,
    # and what is uploaded again must find its counts in place.
    if settle_parked is not None:
        await settle_parked()
    await recount(sessions, pipeline.delivery.ledger, left + completed, nfs)
    queued = sum(pipeline.put(item) for item in left + completed)
    if queued:
        logger.info("Recovery: queued %d files left in %s", queued, layout.processing_root)
    return queued


def _items(root: Path, *parts: str) -> list[WorkItem]:
    """The claimed files below `root/parts/<date>/<session>/`; a folder whose name cannot be a
    session's (an operator's restore, say) is left alone, with an error line."""
    items: list[WorkItem] = []
    refused: set[str] = set()
    for date, name, rel, _ in trees.iter_tree_files(root, *parts):
        try:
            check_session_name(name)
        except ValueError as exc:
            if name not in refused:
                refused.add(name)
                logger.error(
                    "Leaving %s alone: %s",
                    printable(str(root.joinpath(*parts, date, name))),
                    printable(str(exc)),
                )
            continue
        items.append(WorkItem(name, date, rel, claimed=True))
    return items
