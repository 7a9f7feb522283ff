"""A session's end, reported: its manifest written, then its event emitted.

    ended    (Sessions.finish, before the end is saved) a job is written to
             `.processing/_reports/<id>.json`: the session as it ended, with the end's
             generation (newer than any earlier end of the session's)
    run      for each job, oldest first: read the ledger (committed blobs, dismissed parked
             files, the newest end written) and the session's parked files, upload the
             manifest `<date>/<session>.manifest.json` unless storage (or the ledger) holds a
             newer end's, emit `session.drained`, `session.drain_timed_out` or, for a session
             that drained again after a late write, `session.updated` (after the manifest, so a
             consumer woken by the event finds it), note the generation written in the
             ledger, delete the job; on failure, the job backs off and is tried again

A manifest never says more than storage holds, whatever order the jobs end in: the manifest
of an older end (a job that backed off through an outage while the session was started again,
stopped and ended anew) is never written over a newer one, and its event is not sent (the
newer end's is). The write is conditional on the manifest seen (`Storage.put_newer`).

Every step can be repeated: a crash anywhere means the job is done again after the restart
(the manifest is rewritten from the same ledger, the event has the same id). The id is the
same for the same end, even if a crash made the session drain twice.

With other replicas (APP_COORDINATION=azure) the leader ends sessions: it keeps the job on NFS
first (`keep`), records the end in the shared state, then queues it (`queue`); `gate` says for
each job whether its end is on record (run it), may still be (wait), or never will be (drop:
a judgement another replica overruled); `on_done` records that it was done. Jobs taken over
from a dead member are picked up by `take_over`.
"""

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import NonNegativeInt

from nfs_watcher_uploader.backoff import DueQueue
from nfs_watcher_uploader.blob.blobinfo import BlobLabels, iso_utc
from nfs_watcher_uploader.blob.storage import Storage
from nfs_watcher_uploader.cloud.jobs import Job, JobDoc, JobFiles
from nfs_watcher_uploader.cloud.ledger import Ledger, Record
from nfs_watcher_uploader.cloud.manifest import Excluded, FileEntry, Manifest, Parked, Totals
from nfs_watcher_uploader.cloud.webhooks import Webhooks, event_id
from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.constants import MAX_DEPTH
from nfs_watcher_uploader.items import ParkedFile, SessionStateName, printable
from nfs_watcher_uploader.nfs.layout import Layout, manifest_blob
from nfs_watcher_uploader.nfs.reading import DatePrefix, SessionName, Time
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.sessions.session import Session

logger = logging.getLogger(__name__)

# The parked files of one session under one date: (date, session) -> their listing.
ParkedListing = Callable[[str, str], Awaitable[list[ParkedFile]]]
Verdict = Literal["run", "wait", "drop"]
# With other replicas: may a job run now (see the module docstring)? And: it was done.
Gate = Callable[[Job], Verdict]
DoneHook = Callable[[Job], Awaitable[None]]
# Waiting jobs are asked again this often.
GATE_RETRY_S = 5.0


class Reports:
    def __init__(
        self,
        settings: Settings,
        layout: Layout,
        nfs: Nfs,
        storage: Storage,
        ledger: Ledger | None,
        labels: BlobLabels,
        webhooks: Webhooks,
        parked: ParkedListing,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.nfs, self.storage, self.ledger = nfs, storage, ledger
        self.labels, self.webhooks, self._parked = labels, webhooks, parked
        self._clock = clock
        self._retry = (settings.retry_base_s, settings.retry_max_s)
        self._rng = random.Random()
        self._files = JobFiles(layout.reports_root, nfs, _ReportJob)
        self._queue = DueQueue[str, Job](self._retry, self._rng)
        self.manifests_written = 0
        self._loaded = False  # the jobs an earlier run left are read
        self.gate: Gate | None = None
        self.on_done: DoneHook | None = None
        self.dropped = 0

    def __repr__(self) -> str:
        return f"Reports(due={len(self._queue)} manifests_written={self.manifests_written})"

    @property
    def enabled(self) -> bool:
        return self.ledger is not None or self.webhooks.enabled

    def due(self, date_prefix: str, session: str) -> bool:
        """The session's manifest or event is still to be done (or may be: the jobs an earlier
        run left are not read yet)."""
        if not self._loaded:
            return True
        return any(
            (job.get("date_prefix"), job.get("session")) == (date_prefix, session)
            for job in self._queue.values()
        )

    async def ended(self, session: Session, state: SessionStateName) -> None:
        """Note that `session` ended as `state`. Raises OSError when NFS fails."""
        if not self.enabled:  # APP_MANIFEST=off and no APP_WEBHOOK_URL: nothing to report
            return
        job = self.job_for(session, state)
        await self.keep(job)
        session.generation = job["generation"]
        self.queue(job)

    def job_for(self, session: Session, state: SessionStateName) -> Job:
        """The job that reports `session`'s end as `state` (its id is the same for the same
        end, wherever it is made)."""
        # Newer than any end before it, also when the state file was lost (the clock's).
        generation = max(session.generation + 1, int(self._clock() * 1_000_000))
        event = "session.updated" if session.updated else f"session.{state}"
        job: Job = {
            "id": event_id(session.date_prefix, session.name, state, repr(session.drain_start)),
            "created": self._clock(),
            "generation": generation,
            "event": event,
            "session": session.name,
            "date_prefix": session.date_prefix,
            "state": state,
            "started_at": session.started_at,
            "stopped_at": session.stopped_at,
            "finished_at": self._clock(),
            "excluded": _excluded(session),
            "not_uploaded": 0 if state == "drained" else session.waiting + len(session.pending),
        }
        return job

    async def keep(self, job: Job) -> None:
        """Write `job` to NFS (not queued yet). Raises OSError."""
        await self._files.add(job)

    def queue(self, job: Job) -> None:
        self._queue.add(str(job["id"]), job)

    def has(self, job_id: str) -> bool:
        """The job is queued here (due, waiting, or being done)."""
        return job_id in self._queue

    async def take_over(self) -> int:
        """Queue the jobs on NFS that are not queued yet (taken over from a dead member)."""
        jobs = [j for j in await self._files.read_all() if j["id"] not in self._queue]
        for job in jobs:
            self.queue(job)
        return len(jobs)

    async def forget(self, job_id: str) -> None:
        """A kept job that will never be due (see `gate`)."""
        self._queue.done(job_id)
        await self._files.remove(job_id)

    async def run(self) -> None:
        """Load the jobs left by an earlier run, then do each as it comes, until cancelled."""
        for job in await self._files.load(self._retry, self._rng):
            self._queue.add(str(job["id"]), job)
        self._loaded = True
        while True:
            job_id, job = await self._queue.next()
            verdict = "run" if self.gate is None else self.gate(job)
            if verdict == "wait":
                self._queue.done(job_id)
                self._queue.add(job_id, job, GATE_RETRY_S)
                continue
            if verdict == "drop":
                self.dropped += 1
                logger.info(
                    "Session %s: report %s dropped: that end was not recorded",
                    job.get("session"),
                    job_id,
                    extra={"session_name": str(job.get("session"))},
                )
                try:
                    await self.forget(job_id)
                except OSError:
                    pass  # dropped again at the next start
                continue
            try:
                await self._report(job)
                if self.on_done is not None:
                    await self.on_done(job)
            except Exception as exc:  # storage, NFS, or a damaged job: try again later
                attempt, delay = self._queue.failed(job_id)
                logger.warning(
                    "Session %s: manifest or event not written (%s), attempt %d; again in %.1f s",
                    job.get("session"),
                    exc,
                    attempt,
                    delay,
                    extra={"session_name": str(job.get("session"))},
                )
                continue
            self._queue.done(job_id)

    async def _report(self, job: Job) -> None:
        name, date, state = job["session"], job["date_prefix"], job["state"]
        generation = int(job.get("generation") or 0)
        data: dict[str, Any] = {
            "session": name,
            "date_prefix": date,
            "state": state,
            "complete": state == "drained",
            "manifest": None,
            "started_at": iso_utc(job["started_at"]),
            "stopped_at": _iso_or_none(job["stopped_at"]),
            "finished_at": iso_utc(job["finished_at"]),
        }
        if self.ledger is not None:
            manifest, written = await self._manifest(job, self.ledger)
            blob = manifest_blob(date, name)
            if written > generation or not await self._upload(blob, manifest):
                logger.info(
                    "Session %s: its end of %s is not reported: a newer end's manifest is in "
                    "storage",
                    name,
                    iso_utc(job["finished_at"]),
                    extra={"session_name": name},
                )
                await self._files.remove(job["id"])
                return
            await self.ledger.record_written(date, name, generation)
            totals = manifest.totals
            data |= {
                "complete": manifest.complete,
                "manifest": blob,
                "files": totals.files,
                "bytes": totals.bytes,
                "parked": totals.parked,
                "dismissed": totals.dismissed,
            }
            self.manifests_written += 1
            logger.info(
                "Session %s: manifest %s written (%d files, complete: %s)",
                name,
                blob,
                totals.files,
                manifest.complete,
                extra={"session_name": name},
            )
        await self.webhooks.emit(job.get("event") or f"session.{state}", data, job["id"])
        await self._files.remove(job["id"])

    async def _manifest(self, job: Job, ledger: Ledger) -> tuple[Manifest, int]:
        """The manifest of the job's end, and the newest end written so far (its ledger's)."""
        name, date = job["session"], job["date_prefix"]
        record = await self.nfs.call(
            lambda: ledger.read_all(date, name), timeout=self.nfs.timeout * 10
        )
        files, dismissed = await self._resolved(record), record.dismissed
        if record.problem is not None:
            logger.error("Session %s: %s", name, record.problem, extra={"session_name": name})
        parked = [
            Parked(
                path=printable(f.path),
                parked_as=printable(f.parked_as),
                reason=printable(f.reason),
            )
            for f in await self._parked(date, name)
        ]
        excluded = [Excluded.model_validate(e) for e in job["excluded"]]
        manifest = Manifest(
            session=name,
            date_prefix=date,
            prefix=f"{date}/{name}/",
            source_id=self.labels.source_id,
            uploader_version=self.labels.version,
            state=job["state"],
            generation=int(job.get("generation") or 0),
            # Never complete once a parked file was dismissed (it is not in storage), nor when
            # the ledger could not be read whole (what is in storage is not known).
            complete=(
                job["state"] == "drained"
                and not parked
                and not dismissed
                and record.problem is None
            ),
            started_at=iso_utc(job["started_at"]),
            stopped_at=_iso_or_none(job["stopped_at"]),
            finished_at=iso_utc(job["finished_at"]),
            written_at=iso_utc(self._clock()),
            totals=Totals(
                files=len(files),
                bytes=sum(f.size for f in files),
                parked=len(parked),
                excluded=len(excluded),
                not_uploaded=job["not_uploaded"],
                dismissed=len(dismissed),
            ),
            files=files,
            parked=parked,
            excluded=excluded,
            dismissed=dismissed,
        )
        return manifest, record.written

    async def _resolved(self, record: Record) -> list[FileEntry]:
        """The files of `record`, each blob with the line of the bytes it holds now where
        several ledgers disagree (a file sent again by another member after a late write):
        the line whose ETag it has, else whose MD5, else the last one read."""
        if not record.conflicts:
            return record.files
        chosen = {f.blob: f for f in record.files}
        for blob, versions in record.conflicts.items():
            found = await self.storage.look(blob)
            if found is None:
                continue
            etag, md5 = found
            match = [v for v in versions if v.etag is not None and v.etag == etag] or [
                v for v in versions if md5 is not None and v.md5 == md5.hex()
            ]
            if match:
                chosen[blob] = match[-1]
        return [chosen[name] for name in sorted(chosen)]

    async def _upload(self, blob: str, manifest: Manifest) -> bool:
        """Upload the manifest unless storage holds a newer end's (False)."""
        data = manifest.model_dump_json(indent=1).encode()
        info = self.labels.for_manifest(manifest.session)
        return await self.storage.put_newer(blob, data, info, manifest.generation)


class _ReportJob(JobDoc):
    """A session's end, to be reported (`Reports.ended` writes it). Its session and date name
    the manifest blob and the ledger: one that is not a session name or a date is not ours."""

    session: SessionName
    date_prefix: DatePrefix
    state: SessionStateName
    started_at: Time
    stopped_at: Time | None
    finished_at: Time
    excluded: list[Excluded]
    not_uploaded: int
    # Older jobs have neither: they are the oldest end, reported as their state says. (Not
    # bounded by this device's clock: one that starts a day behind, a board before NTP, would
    # set its own jobs aside.)
    generation: NonNegativeInt = 0
    event: Literal["session.drained", "session.drain_timed_out", "session.updated"] | None = None


def _excluded(session: Session) -> list[dict[str, str]]:
    """What the session's last scan found that is never uploaded, with the reason."""
    out = [
        {"path": printable(rel), "reason": f"{what}; left in incoming"}
        for rel, what in sorted(session.ignored.items())
    ]
    out += [
        {"path": printable(rel), "reason": f"a folder deeper than {MAX_DEPTH} levels"}
        for rel in sorted(session.too_deep)
    ]
    out += [
        {
            "path": printable(rel),
            "reason": "excluded by APP_INCLUDE / APP_EXCLUDE; left in incoming",
        }
        for rel in sorted(session.excluded)
    ]
    return out


def _iso_or_none(seconds: float | None) -> str | None:
    return None if seconds is None else iso_utc(seconds)
