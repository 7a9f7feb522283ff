"""Durable jobs: work that must survive a restart (a session's manifest and event, a webhook
event), and the order in which they are tried.

`JobFiles` keeps one JSON file per job on NFS, named by its id: written (temp file, fsync,
rename) before anyone relies on it, deleted only once the job is done. In memory the jobs wait
in a `backoff.DueQueue`, each with the time of its next attempt, so that one failing job backs
off on its own and never holds up the others.
"""

import json
import logging
import random
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, FiniteFloat

from nfs_watcher_uploader.backoff import until_ok
from nfs_watcher_uploader.constants import JOB_TMP_PREFIX
from nfs_watcher_uploader.nfs.runner import Nfs
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
    def __init__(self, root: Path, nfs: Nfs, shape: type[JobDoc]) -> None:
        # A file on NFS is input like any other: a job that is not of this shape is skipped.
        self.root, self.nfs, self.shape = root, nfs, shape

    def __repr__(self) -> str:
        return f"JobFiles({self.root})"

    def _path(self, job_id: str) -> Path:
        return self.root / f"{job_id}{_SUFFIX}"

    async def add(self, job: Job) -> None:
        """Write `job` (which has an `id`) unless a job of that id is there. Raises OSError."""
        path, data = self._path(job["id"]), json.dumps(job).encode()

        def add() -> None:
            if not path.exists():
                write_atomic(path, data, JOB_TMP_PREFIX)

        await self.nfs.call(add)

    async def remove(self, job_id: str) -> None:
        """Raises OSError; a job already gone is fine."""
        await self.nfs.call(lambda: self._path(job_id).unlink(missing_ok=True))

    async def load(self, retry: tuple[float, float], rng: random.Random) -> list[Job]:
        """Every job on disk, oldest first (by `created`), trying again until NFS answers."""
        return await until_ok(
            lambda: self.nfs.call(self._load), f"read {self.root}", retry=retry, rng=rng, log=logger
        )

    def _load(self) -> list[Job]:
        for leftover in self.root.glob(f"{JOB_TMP_PREFIX}*"):
            leftover.unlink(missing_ok=True)  # a write a crash cut short: its job never was
        return self.read_all()

    def read_all(self) -> list[Job]:
        """Every job on disk, oldest first, checked like `load` (blocking: in a thread)."""
        jobs: list[Job] = []
        for path in sorted(self.root.glob(f"*{_SUFFIX}")):
            try:
                raw = path.read_bytes()
                doc = self.shape.model_validate_json(raw)
                if path.stem != doc.id:
                    raise ValueError("not a job of ours")
                job = json.loads(raw)
            except FileNotFoundError:
                continue
            except (ValueError, RecursionError) as exc:  # a ValidationError is a ValueError
                logger.error("Ignoring %s: not a job (%s)", path, _first_line(exc))
                continue
            jobs.append(job)
        jobs.sort(key=lambda j: float(j["created"]))
        return jobs


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
