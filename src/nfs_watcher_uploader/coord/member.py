"""One process incarnation's membership: its blob in the control container, and the lease
that says it is alive.

    join     create `members/<incarnation>` only if no blob has that name (If-None-Match: *),
             then take a LEASE_S lease on it with the incarnation (a UUID) as the lease id;
             the blob's ETag must not have changed in between (a peer may have taken the new,
             still unleased blob for a dead one and adopted it)
    renew    every RENEW_EVERY_S, from a thread of its own with a control client of its own,
             but only while `healthy()` says this replica's NFS scans succeed (a hung mount
             lets the lease lapse, and peers adopt); RENEW_RETRY_S after a renew that failed
             for a reason that may pass
    progress the counters set by `set_progress`, written into the blob's metadata after a
             renew, only when they changed and at most every PROGRESS_EVERY_S; an `urgent`
             set is written at once (from the renewing thread), and `wait_written` says when
    leave    on a clean stop: write the last counters, then release the lease (peers adopt
             what is left at once), or delete the blob when nothing is left

Validity (validity.py) ends LEASE_S after the send time of the last renew that went through.

The incarnation is over, for good, when a renew is refused (409: the lease was lost, broken or
taken), when the blob is gone (404: a peer adopted it and removed it), or when the blob's ETag
is not the one this member last wrote (a peer wrote it: an adoption). Azure lets an expired
lease be renewed until the blob is written or leased again, so a member that was only slow
carries on; one that was adopted meanwhile finds out at its next renew. A lost incarnation
never takes its lease again: nothing here acquires except `join`, which runs once. `on_lost` is
told (once, from the renewing thread); the service then starts over as a new incarnation, or
exits non-zero.
"""

import collections
import logging
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobClient, BlobLeaseClient, ContainerClient

from nfs_watcher_uploader.coord import progress as progress_codec
from nfs_watcher_uploader.coord.constants import (
    LEASE_S,
    META_HOST,
    META_PROGRESS,
    META_VERSION,
    PROGRESS_EVERY_S,
    RENEW_EVERY_S,
    RENEW_RETRY_S,
)
from nfs_watcher_uploader.coord.errors import (
    STORAGE_ERRORS,
    CoordError,
    IncarnationLost,
    classify,
    error_code,
    status_of,
    summary,
)
from nfs_watcher_uploader.coord.fields import label, quoted
from nfs_watcher_uploader.coord.names import is_incarnation, member_blob, new_incarnation
from nfs_watcher_uploader.coord.progress import Progress
from nfs_watcher_uploader.coord.validity import Validity, boottime

logger = logging.getLogger(__name__)

LATENCIES_KEPT = 200
# A metadata write refused because this member's own lease has expired (nobody else holds
# it): not a loss by itself; the next renew says whether the blob was adopted meanwhile.
_OWN_LEASE_EXPIRED = "LeaseNotPresentWithBlobOperation"


@dataclass(frozen=True, slots=True)
class Latency:
    """How long renews took, in seconds (for /v1/status, metrics and measurements)."""

    count: int
    median: float
    p99: float
    max: float

    def __str__(self) -> str:
        return (
            f"median {self.median * 1000:.1f} ms, p99 {self.p99 * 1000:.1f} ms, "
            f"max {self.max * 1000:.1f} ms over {self.count} renews"
        )


def latency(seconds: Sequence[float]) -> Latency | None:
    """Median, 99th percentile (within the values: no extrapolation) and maximum."""
    if not seconds:
        return None
    p99 = (
        statistics.quantiles(seconds, n=100, method="inclusive")[98]
        if len(seconds) > 1
        else seconds[0]
    )
    return Latency(len(seconds), statistics.median(seconds), p99, max(seconds))


class Member:
    """One incarnation. `client` is this member's own (see client.py): only its thread uses it
    once `start` has been called."""

    def __init__(
        self,
        client: ContainerClient,
        *,
        host: str = "",
        version: str = "",
        incarnation: str | None = None,
        lease_s: int = LEASE_S,
        renew_every_s: float = RENEW_EVERY_S,
        retry_s: float = RENEW_RETRY_S,
        progress_every_s: float = PROGRESS_EVERY_S,
        healthy: Callable[[], bool] = lambda: True,
        on_lost: Callable[[str], None] | None = None,
        clock: Callable[[], float] = boottime,
    ) -> None:
        self.incarnation = incarnation or new_incarnation()
        if not is_incarnation(self.incarnation):
            raise ValueError("an incarnation is a UUID in lowercase (it is also the lease id)")
        self._blob: BlobClient = client.get_blob_client(member_blob(self.incarnation))
        self._lease = BlobLeaseClient(self._blob, lease_id=self.incarnation)
        labels = {META_HOST: label(host), META_VERSION: label(version)}
        self._labels = {k: v for k, v in labels.items() if v}
        self.lease_s, self.renew_every_s, self.retry_s = lease_s, renew_every_s, retry_s
        self.progress_every_s = progress_every_s
        self._healthy, self._on_lost, self._clock = healthy, on_lost, clock
        self.validity = Validity(lease_s, clock)
        # The blob's ETag as this member last wrote it (None until created).
        self._etag: str | None = None
        self._joined = False
        self.lost: str | None = None
        self._progress_lock = threading.Lock()
        self._progress: str | None = None  # encoded, waiting to be written
        self._progress_written: str | None = None
        self._progress_at = float("-inf")
        # Sets of progress counted, the one written last, and an urgent one waiting.
        self._progress_seq = 0
        self._written_seq = 0
        self._urgent = False
        self._written = threading.Condition(self._progress_lock)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # What it did, for /v1/status, metrics and the tests.
        self.requests = 0
        self.renews = 0
        self.renew_failures = 0
        self.skipped = 0  # renews not sent: NFS scans were failing
        self.progress_writes = 0
        self.last_error: str | None = None
        self.latencies: collections.deque[float] = collections.deque(maxlen=LATENCIES_KEPT)

    def __repr__(self) -> str:
        return (
            f"Member({self.incarnation} {self.validity!r} renews={self.renews} "
            f"failures={self.renew_failures} skipped={self.skipped} "
            f"progress_writes={self.progress_writes} lost={self.lost!r})"
        )

    # --- what the service asks ---------------------------------------------------------------

    def valid(self) -> bool:
        """May this member claim now?"""
        return self.lost is None and self.validity.valid()

    def steady(self) -> bool:
        """May this member adopt now? (valid without a gap for a whole lease period)"""
        return self.lost is None and self.validity.steady()

    def set_progress(self, progress: Progress, urgent: bool = False) -> int:
        """Counters to publish with a coming renew (written only when they changed); `urgent`
        ones are written at once. Returns the number of this set, for `wait_written`."""
        encoded, left_out = progress_codec.encode(progress)
        if left_out:
            logger.warning("Progress of %d sessions left out of the member blob: too big", left_out)
        with self._progress_lock:
            self._progress = encoded
            self._progress_seq += 1
            self._urgent = self._urgent or urgent
            seq = self._progress_seq
        if urgent:
            self._wake.set()
        return seq

    def wait_written(self, seq: int, timeout: float) -> bool:
        """Wait until the counters set as `seq` (or later ones) are in the member blob; False
        when they are not within `timeout` (storage away, or this member lost)."""
        with self._written:
            return (
                self._written.wait_for(
                    lambda: self._written_seq >= seq or self.lost is not None, timeout
                )
                and self._written_seq >= seq
            )

    # --- join, renew, leave ------------------------------------------------------------------

    def join(self) -> None:
        """Create this incarnation's blob and take its lease. Raises ControlUnavailable (try
        `join` again), ControlRefused, or IncarnationLost (start over with a new Member)."""
        if self._joined or self.lost is not None:
            raise RuntimeError("an incarnation joins once")
        if self._etag is None:
            self._create()
        sent = self._clock()
        try:
            self.requests += 1
            # Idempotent: Azure grants an acquire with the lease id that holds the lease.
            self._lease.acquire(lease_duration=self.lease_s)
        except HttpResponseError as exc:
            if status_of(exc) in (404, 409, 412):
                self._lose(f"could not take the lease of the new member blob: {summary(exc)}")
            raise classify(exc, "taking the member lease") from None
        except STORAGE_ERRORS as exc:
            raise classify(exc, "taking the member lease") from None
        if quoted(self._lease.etag or "") != self._etag:
            self._lose("the new member blob was written by a peer before its lease was taken")
        self.validity.renewed(sent)
        self._joined = True
        logger.info("Joined as member %s", self.incarnation)

    def _create(self) -> None:
        metadata = dict(self._labels)
        try:
            self.requests += 1
            created = self._blob.upload_blob(b"", metadata=metadata, if_none_match="*")
        except HttpResponseError as exc:
            if status_of(exc) in (409, 412):
                # Ours from an attempt whose answer was lost, or someone else's: either way,
                # not a blob this incarnation can be sure it made.
                self._lose(f"member blob already exists: {summary(exc)}")
            raise classify(exc, "creating the member blob") from None
        except STORAGE_ERRORS as exc:
            raise classify(exc, "creating the member blob") from None
        self._etag = quoted(str(created["etag"]))

    def start(self) -> None:
        """Renew from a thread of its own until `leave` (or the incarnation is lost)."""
        if not self._joined:
            raise RuntimeError("join first")
        self._thread = threading.Thread(
            target=self._run, name=f"member-{self.incarnation[:8]}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        delay = self.renew_every_s
        due = time.monotonic() + delay
        while self.lost is None and not self._stop.is_set():
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                break
            if time.monotonic() < due:  # woken early: an urgent progress write
                try:
                    self._write_progress(urgent_only=True)
                except Exception as exc:
                    logger.exception("Member %s: the renewing thread failed", self.incarnation)
                    self._lose(f"the renewing thread failed: {type(exc).__name__}")
                    return
                continue
            started = time.monotonic()
            try:
                ok = self.renew_once()
            except Exception as exc:  # a bug: say so, rather than let the lease lapse unseen
                logger.exception("Member %s: the renewing thread failed", self.incarnation)
                self._lose(f"the renewing thread failed: {type(exc).__name__}")
                return
            due = started + (self.renew_every_s if ok else self.retry_s)

    def renew_once(self) -> bool:
        """One renew (and a progress write when one is due). True when the lease was renewed;
        False when it was not sent (NFS unhealthy) or failed for a reason that may pass."""
        if self.lost is not None:
            return False
        if not self._is_healthy():
            self.skipped += 1
            return False
        sent = self._clock()
        started = time.monotonic()
        try:
            self.requests += 1
            self._lease.renew()
        except HttpResponseError as exc:
            if status_of(exc) in (404, 409):
                self._lose(f"renew refused: {summary(exc)}")
                return False
            return self._failed(classify(exc, "renewing the member lease"))
        except STORAGE_ERRORS as exc:
            return self._failed(classify(exc, "renewing the member lease"))
        self.latencies.append(time.monotonic() - started)
        if quoted(self._lease.etag or "") != self._etag:
            self._lose("the member blob was written by a peer (adopted)")
            return False
        self.validity.renewed(sent)
        self.renews += 1
        self.last_error = None
        self._write_progress()
        return True

    def _is_healthy(self) -> bool:
        try:
            return self._healthy()
        except Exception:  # a health check that fails says: not healthy
            logger.exception("Member %s: the health check failed", self.incarnation)
            return False

    def _failed(self, error: CoordError) -> bool:
        self.renew_failures += 1
        if self.last_error != str(error):
            logger.warning("Member %s: %s", self.incarnation, error)
        self.last_error = str(error)
        return False

    def _write_progress(self, urgent_only: bool = False, now_anyway: bool = False) -> None:
        with self._progress_lock:
            wanted, seq, urgent = self._progress, self._progress_seq, self._urgent
        now = time.monotonic()
        if urgent_only and not urgent:
            return
        if urgent_only and not self.validity.valid():
            return  # not before the next renew: a write needs the lease
        if wanted is None or wanted == self._progress_written:
            self._mark_written(seq)
            return
        if not (urgent or now_anyway) and now - self._progress_at < self.progress_every_s:
            return
        metadata = {**self._labels, META_PROGRESS: wanted}
        try:
            self.requests += 1
            written = self._blob.set_blob_metadata(
                metadata, lease=self.incarnation, if_match=self._etag
            )
        except HttpResponseError as exc:
            if status_of(exc) == 404 or (
                status_of(exc) == 412 and error_code(exc) != _OWN_LEASE_EXPIRED
            ):
                self._lose(f"progress write refused: {summary(exc)}")
            else:
                self._failed(classify(exc, "writing progress"))
            return
        except STORAGE_ERRORS as exc:
            self._failed(classify(exc, "writing progress"))
            return
        self._etag = quoted(str(written["etag"]))
        self._progress_written, self._progress_at = wanted, now
        self.progress_writes += 1
        self._mark_written(seq)

    def _mark_written(self, seq: int) -> None:
        with self._written:
            self._written_seq = max(self._written_seq, seq)
            if self._written_seq >= self._progress_seq:
                self._urgent = False
            self._written.notify_all()

    def _lose(self, why: str) -> None:
        """End this incarnation for good; raises IncarnationLost when joining."""
        first = self.lost is None
        self.lost = why
        self.validity.end()
        with self._written:
            self._written.notify_all()
        if first:
            logger.error("Member %s is lost: %s; it claims nothing more", self.incarnation, why)
            if self._on_lost is not None and self._joined:
                self._on_lost(why)
        if not self._joined:
            raise IncarnationLost(why) from None  # no SDK error text travels with it

    def leave(self, delete: bool = False) -> None:
        """Stop renewing; then delete the blob (`delete`: nothing of this member is left on
        NFS) or release the lease, so that peers adopt what is left without waiting for it to
        lapse. Best effort: a failure is logged, and the lease lapses anyway."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.lost is not None or not self._joined:
            return
        if self.validity.valid():
            try:  # the last counters, for the sums every replica shows
                self._write_progress(now_anyway=True)
            except Exception:
                logger.exception("Member %s: last progress not written", self.incarnation)
        self.validity.end()
        self.lost = "left"
        try:
            self.requests += 1
            if delete:
                self._blob.delete_blob(lease=self.incarnation, if_match=self._etag)
            else:
                self._lease.release()
        except STORAGE_ERRORS as exc:
            logger.warning(
                "Member %s: could not %s on leaving (%s); its lease lapses within %d s",
                self.incarnation,
                "remove its blob" if delete else "release its lease",
                classify(exc, "leaving"),
                self.lease_s,
            )
