"""Durable jobs: work that must survive a restart (a session's manifest and event, a webhook
event), and the order in which they are tried.

`JobFiles` keeps one JSON file per job on NFS, named by its id: written (temp file, fsync,
rename) before anyone relies on it, deleted only once the job is done. In memory the jobs wait
in a `backoff.DueQueue`, each with the time of its next attempt, so that one failing job backs
off on its own and never holds up the others.

A job file is read back like any file on the share (`nfs.reading`, its folder entered without
following a link): one that is not a job of this service (a link, a FIFO, too large, too deep,
damaged, hand-edited, named after another id, or refused by its kind's own check: an event not
signed here) is set aside under `_set_aside/` with an error line naming it, and the other jobs
go on.
"""

import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, FiniteFloat

from nfs_watcher_uploader.backoff import until_ok
from nfs_watcher_uploader.constants import JOB_FILE_MAX, JOB_TMP_PREFIX
from nfs_watcher_uploader.nfs import trees
from nfs_watcher_uploader.nfs.moves import is_regular
from nfs_watcher_uploader.nfs.reading import (
    Unusable,
    parse_json,
    read_regular,
    set_aside_or_leave,
)
from nfs_watcher_uploader.nfs.runner import Nfs, until_spent
from nfs_watcher_uploader.nfs.state import write_atomic

logger = logging.getLogger(__name__)

_SUFFIX = ".json"
Job = dict[str, Any]


class JobDoc(BaseModel):
    """What every job file holds; each kind of job adds its own fields (a subclass)."""

    model_config = ConfigDict(extra="allow")

    id: str
    created: FiniteFloat


class JobFiles:
    def __init__(
        self,
        root: Path,
        nfs: Nfs,
        shape: type[JobDoc],
        check: Callable[[Job], str | None] = lambda job: None,
    ) -> None:
        # A file on NFS is input like any other: a job that is not of this shape, or that
        # `check` refuses (why), is set aside.
        self.root, self.nfs, self.shape, self._check = root, nfs, shape, check

    def __repr__(self) -> str:
        return f"JobFiles({self.root})"

    def _path(self, job_id: str) -> Path:
        return self.root / f"{job_id}{_SUFFIX}"

    async def add(self, job: Job) -> None:
        """Write `job` (which has an `id`) unless a job of that id is there. Raises OSError."""
        path, data = self._path(job["id"]), json.dumps(job).encode()
        root = self.root.parent
        await self.nfs.call(lambda: write_atomic(path, data, JOB_TMP_PREFIX, root, only_new=True))

    async def remove(self, job_id: str) -> None:
        """Raises OSError; a job already gone is fine."""
        await self.nfs.call(lambda: self._path(job_id).unlink(missing_ok=True))

    async def load(self, retry: tuple[float, float], rng: random.Random) -> list[Job]:
        """Every job on disk, oldest first (by `created`), trying again until NFS answers. Read
        in batches (`Nfs.in_batches`): no number of jobs makes a call run into its deadline."""
        return await until_ok(self._load, f"read {self.root}", retry=retry, rng=rng, log=logger)

    async def _load(self) -> list[Job]:
        return await self.read_all(tidy=True)

    async def read_all(self, tidy: bool = False) -> list[Job]:
        """Every job on disk, oldest first, checked like `load`. Raises OSError. With `tidy`,
        writes a crash cut short are removed: only at start, never while another member may
        be writing a job into this folder (one taken over from it)."""
        names = await self.nfs.call(self._names)
        if not tidy:
            names = [name for name in names if not name.startswith(JOB_TMP_PREFIX)]
        jobs = [job for job in await self.nfs.in_batches(names, self._read_batch) if job]
        jobs.sort(key=lambda j: float(j["created"]))
        return jobs

    def _names(self) -> list[str]:
        fd = trees.open_folder(self.root.parent, self.root.name)
        if fd is None:
            return []
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def _read_batch(self, names: Sequence[str], budget: float) -> list[Job | None]:
        fd = trees.open_folder(self.root.parent, self.root.name)
        if fd is None:
            return [None for _ in names]  # gone since it was listed
        try:
            return until_spent(names, budget, lambda name: self._read(fd, name))
        finally:
            os.close(fd)

    def _read(self, fd: int, name: str) -> Job | None:
        """The job in the file `name` of the jobs' folder, if it is one of ours."""
        if name.startswith(JOB_TMP_PREFIX):
            if is_regular(name, fd):  # a write a crash cut short: its job never was
                os.unlink(name, dir_fd=fd)
            return None
        if not name.endswith(_SUFFIX):
            return None
        try:
            raw = read_regular(name, JOB_FILE_MAX, dir_fd=fd)
            if raw is None:
                return None
            doc = parse_json(raw, self.shape)
            if name.removesuffix(_SUFFIX) != doc.id:
                raise Unusable(f"it holds job {doc.id!r}, not the job it is named after")
            job = json.loads(raw)
            if (problem := self._check(job)) is not None:
                raise Unusable(problem)
            return job
        except Unusable as exc:
            path = self.root / name
            done = set_aside_or_leave(path, self.root.parent, fd)
            logger.error("Not a job: %s (%s); %s", path, exc, done)
            return None
