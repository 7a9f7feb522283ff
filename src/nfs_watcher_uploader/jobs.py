"""Durable jobs: work that must survive a restart (a session's manifest and event, a webhook
event), and the order in which they are tried.

`JobFiles` keeps one JSON file per job on NFS, named by its id: written (temp file, fsync,
rename) before anyone relies on it, deleted only once the job is done. `DueQueue` holds the
jobs in memory, each with the time of its next attempt, so that one failing job backs off on
its own and never holds up the others.
"""

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, FiniteFloat

from nfs_watcher_uploader.backoff import backoff_delay
from nfs_watcher_uploader.constants import JOB_TMP_PREFIX
from nfs_watcher_uploader.fsops import Nfs, write_atomic

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
        attempt = 0
        while True:
            try:
                return await self.nfs.call(self._load)
            except OSError as exc:
                attempt += 1
                delay = backoff_delay(attempt, *retry, rng)
                logger.warning("Cannot read %s (%s); trying again in %.1f s", self.root, exc, delay)
                await asyncio.sleep(delay)

    def _load(self) -> list[Job]:
        for leftover in self.root.glob(f"{JOB_TMP_PREFIX}*"):
            leftover.unlink(missing_ok=True)  # a write a crash cut short: its job never was
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


@dataclass
class _Due[T]:
    value: T
    attempt: int = 0
    at: float = 0.0  # time.monotonic() of the next attempt


class DueQueue[T]:
    """Jobs by id, in the order they came, each tried when its time has come."""

    def __init__(self, retry: tuple[float, float], rng: random.Random | None = None) -> None:
        self._retry = retry
        self._rng = rng or random.Random()
        self._items: dict[str, _Due[T]] = {}
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._items

    def values(self) -> list[T]:
        return [due.value for due in self._items.values()]

    def add(self, job_id: str, value: T) -> None:
        if job_id not in self._items:
            self._items[job_id] = _Due(value)
            self._wake.set()

    def done(self, job_id: str) -> None:
        self._items.pop(job_id, None)

    def failed(self, job_id: str) -> tuple[int, float]:
        """Back the job off; returns its attempt count and the delay to its next attempt."""
        due = self._items[job_id]
        due.attempt += 1
        delay = backoff_delay(due.attempt, *self._retry, self._rng)
        due.at = time.monotonic() + delay
        return due.attempt, delay

    async def next(self) -> tuple[str, T]:
        """The oldest job whose time has come, waiting for one if need be."""
        while True:
            now = time.monotonic()
            for job_id, due in self._items.items():
                if due.at <= now:
                    return job_id, due.value
            soonest = min((d.at for d in self._items.values()), default=None)
            self._wake.clear()
            try:
                async with asyncio.timeout(None if soonest is None else soonest - now):
                    await self._wake.wait()
            except TimeoutError:
                pass
