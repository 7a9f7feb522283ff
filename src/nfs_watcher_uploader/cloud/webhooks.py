"""Webhook events: `session.drained`, `session.drain_timed_out`, `session.updated` (an ended
session's manifest written anew after a late write), `file.parked`, `file.conflict_renamed`,
POSTed as JSON to APP_WEBHOOK_URL.

    emit     the event is written to the outbox (`.processing/_outbox/<id>.json`, fsynced)
    run      one task delivers them, one POST at a time with its own timeout; a 2xx deletes the
             event, anything else retries it with backoff (per event, so one refused event
             never holds up the rest), for as long as it takes, across restarts

So delivery is at least once: the id (also in the `X-Event-Id` header) lets a receiver drop a
repeat. The body is signed with HMAC-SHA256 of APP_WEBHOOK_SECRET, `X-Signature-256:
sha256=<hex>` as GitHub does. The outbox is on the share, which others can write: an event is
kept there with its signature, and one read back whose signature is not right is not the
service's (it is set aside, never signed and sent). Uploads never wait for a delivery: they
only write the outbox. The URL may carry a token: logs name only its scheme, host and port.
"""

import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, ConfigDict

from nfs_watcher_uploader.backoff import DueQueue
from nfs_watcher_uploader.blob.blobinfo import iso_utc, uploader_version
from nfs_watcher_uploader.cloud.jobs import JobDoc, JobFiles
from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.constants import OUTBOX_MAX
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.nfs.runner import Nfs

logger = logging.getLogger(__name__)

# One delivery may take this long in all (a receiver that hangs costs no more).
DELIVERY_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
# What is read of a receiver's answer: only its status matters.
ANSWER_READ_MAX = 64 * 1024
SIGNATURE_HEADER = "X-Signature-256"


def sign(secret: bytes, body: bytes) -> str:
    """The `X-Signature-256` value of `body`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def event_id(*parts: str) -> str:
    """An id that is the same whenever the same occurrence is reported again (after a crash),
    so that a receiver can drop the repeat."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "nfs-watcher-uploader:" + "/".join(parts)))


@dataclass(frozen=True, slots=True)
class _Event:
    type: str
    body: bytes


SESSION_EVENT = "session."


class _EventDoc(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str


class _OutboxJob(JobDoc):
    """An event waiting for delivery (`Webhooks.emit` writes it), signed when there is a
    secret."""

    event: _EventDoc
    signature: str | None = None


class Webhooks:
    def __init__(
        self,
        settings: Settings,
        layout: Layout,
        nfs: Nfs,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        url = settings.webhook_url
        self._url = None if url is None else url.get_secret_value()
        secret = settings.webhook_secret
        self._secret = None if secret is None else secret.get_secret_value().encode()
        self._where = _where(self._url) if self._url else None
        self._user_agent = f"nfs-watcher-uploader/{uploader_version()}"
        self._source_id = settings.source_id
        self._retry = (settings.retry_base_s, settings.retry_max_s)
        self._rng = rng or random.Random()
        self._outbox = JobFiles(layout.outbox_root, nfs, _OutboxJob, self._signed_here)
        self.nfs = nfs
        self._queue = DueQueue[str, _Event](self._retry, self._rng)
        self._clock = clock
        self.delivered = 0
        self.failed_attempts = 0
        self.dropped = 0

    def __repr__(self) -> str:
        return (
            f"Webhooks(to={self._where} pending={self.pending} delivered={self.delivered} "
            f"failed_attempts={self.failed_attempts} dropped={self.dropped})"
        )

    @property
    def enabled(self) -> bool:
        return self._url is not None

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def emit(self, type_: str, data: dict[str, Any], id_: str | None = None) -> None:
        """Put an event in the outbox. Never raises: an event that cannot be kept is logged."""
        if self._url is None:
            return
        id_ = id_ or str(uuid.uuid4())
        if id_ in self._queue:
            return  # the same occurrence, reported again
        # A session's end (one per session) is always kept: a flood of file events must not
        # silence the one a consumer waits for.
        if len(self._queue) >= OUTBOX_MAX and not type_.startswith(SESSION_EVENT):
            self.dropped += 1
            logger.error("Webhook outbox full (%d events): dropped %s %s", OUTBOX_MAX, type_, id_)
            return
        event = {
            "id": id_,
            "type": type_,
            "created_at": iso_utc(self._clock()),
            "source_id": self._source_id,
            "data": data,
        }
        body = json.dumps(event).encode()
        job: dict[str, Any] = {"id": id_, "created": self._clock(), "event": event}
        if self._secret is not None:
            job["signature"] = sign(self._secret, body)
        try:
            await self._outbox.add(job)
        except OSError as exc:
            self.dropped += 1
            logger.error("Webhook event %s %s lost: cannot write the outbox: %s", type_, id_, exc)
            return
        self._queue.add(id_, _Event(type_, body))

    def _signed_here(self, job: dict[str, Any]) -> str | None:
        """Why the outbox event `job` is not one this service wrote (with this secret), or
        None. Its body is the event as written (`json.dumps` gives back the same text)."""
        if self._secret is None:
            return None
        body = json.dumps(job["event"]).encode()
        if not hmac.compare_digest(str(job.get("signature")), sign(self._secret, body)):
            return "its signature is not the service's: an event it did not write"
        return None

    async def take_over(self) -> int:
        """Queue the events in the outbox that are not queued yet (taken over from a dead
        member, APP_COORDINATION=azure)."""
        if self._url is None:
            return 0
        jobs = await self._outbox.read_all()
        taken = 0
        for job in jobs:
            if job["id"] not in self._queue:
                event = cast(dict[str, Any], job["event"])
                self._queue.add(
                    str(job["id"]), _Event(str(event["type"]), json.dumps(event).encode())
                )
                taken += 1
        return taken

    async def run(self) -> None:
        """Load the outbox, then deliver until cancelled."""
        if self._url is None:
            return
        for job in await self._outbox.load(self._retry, self._rng):
            event = cast(dict[str, Any], job["event"])
            self._queue.add(str(job["id"]), _Event(str(event["type"]), json.dumps(event).encode()))
        if self.pending:
            logger.info("Webhook outbox: %d events to deliver to %s", self.pending, self._where)
        timeout = aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                id_, event = await self._queue.next()
                await self._deliver(http, id_, event)

    async def _deliver(self, http: aiohttp.ClientSession, id_: str, event: _Event) -> None:
        problem = await self._post(http, id_, event)
        if problem is None:
            self.delivered += 1
            self._queue.done(id_)
            try:
                await self._outbox.remove(id_)
            except OSError as exc:  # delivered again after a restart: the id tells
                logger.warning("Cannot delete delivered event %s from the outbox: %s", id_, exc)
            return
        self.failed_attempts += 1
        attempt, delay = self._queue.failed(id_)
        logger.warning(
            "Webhook %s %s to %s failed (%s), attempt %d; again in %.1f s",
            event.type,
            id_,
            self._where,
            problem,
            attempt,
            delay,
        )

    async def _post(self, http: aiohttp.ClientSession, id_: str, event: _Event) -> str | None:
        """None when the receiver took the event, else what went wrong (naming no secret)."""
        assert self._url is not None
        headers = {
            "Content-Type": "application/json",
            "User-Agent": self._user_agent,
            "X-Event-Id": id_,
            "X-Event-Type": event.type,
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, event.body)
        try:
            async with http.post(
                self._url, data=event.body, headers=headers, allow_redirects=False
            ) as answer:
                await answer.content.read(ANSWER_READ_MAX)
                return None if 200 <= answer.status < 300 else f"HTTP {answer.status}"
        except Exception as exc:  # any failure costs a retry, never the sender
            # Only the class and the OS reason: aiohttp's messages may repeat the URL.
            reason = getattr(getattr(exc, "os_error", None), "strerror", None)
            return type(exc).__name__ + (f": {reason}" if reason else "")


def _where(url: str) -> str:
    """`https://host:port` of `url`: never its user, password, path or query."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname}{port}"
