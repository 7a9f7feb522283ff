"""The order files go up in (APP_UPLOAD_ORDER): the watcher offers ready files in it, and the
work queue hands them to the workers in it.

    oldest   oldest mtime first (the default): a backlog drains in the order it was recorded
    newest   newest mtime first: live monitoring sees the latest recording first
    name     by path below the session folder

Work that does not come from a scan (recovered after a restart, retried, requeued, sent again
after a late write) goes before new files, in the order it came: it is older than anything a
scan finds.
"""

import asyncio
import heapq
import itertools

from nfs_watcher_uploader.config import UploadOrder
from nfs_watcher_uploader.items import WorkItem

Key = tuple[int, int, str]


def sort_key(order: UploadOrder, rel: str, mtime_ns: int) -> Key:
    """Where a file found by a scan goes (lower first)."""
    if order is UploadOrder.NEWEST:
        return (1, -mtime_ns, rel)
    if order is UploadOrder.NAME:
        return (1, 0, rel)
    return (1, mtime_ns, rel)


class WorkQueue(asyncio.Queue[WorkItem]):
    """An asyncio.Queue that hands out items in `order` instead of first in, first out (the
    same hooks asyncio.PriorityQueue uses)."""

    def __init__(self, maxsize: int, order: UploadOrder) -> None:
        self.order = order
        self._seq = itertools.count()
        super().__init__(maxsize)

    # asyncio.Queue counts `_queue` for qsize, empty and full: here a heap.
    def _init(self, maxsize: int) -> None:
        self._queue: list[tuple[Key, int, WorkItem]] = []

    def _put(self, item: WorkItem) -> None:
        seq = next(self._seq)
        key = (0, 0, "") if item.seen is None else sort_key(self.order, item.rel, item.seen[1])
        heapq.heappush(self._queue, (key, seq, item))

    def _get(self) -> WorkItem:
        return heapq.heappop(self._queue)[2]
