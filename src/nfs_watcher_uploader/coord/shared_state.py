"""The shared session state: one blob, changed only by compare-and-swap on its ETag.

    read     one ranged GET of at most STATE_MAX_BYTES (+1, to see that a blob is larger):
             the document and its ETag; a blob that is not a state document is reported as
             damaged and read as empty; a missing blob is empty (ETag None)
    update   read, apply the rule (transitions.py), write with If-Match on the ETag read (or
             If-None-Match: * when there was no blob); on 412 (or 409 for a create) another
             replica wrote first: read again and apply the rule again to what it wrote, so a
             rule is never checked against a state that is no longer there
    import   the first replica puts today's `sessions.json` in place, create-only: of several
             that start at once, one imports and the others find the blob there

A damaged blob is copied under `damaged/` (create-only) before an update replaces it, as a
damaged `sessions.json` is set aside in single-replica mode. A document written by a newer
version (StateTooNew) is never replaced.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from azure.core.exceptions import HttpResponseError
from azure.storage.blob import ContainerClient, ContentSettings

from nfs_watcher_uploader.coord.constants import (
    CAS_TRIES,
    DAMAGED_PREFIX,
    STATE_BLOB,
    STATE_MAX_BYTES,
)
from nfs_watcher_uploader.coord.errors import (
    STORAGE_ERRORS,
    ControlUnavailable,
    classify,
    error_code,
    status_of,
)
from nfs_watcher_uploader.coord.fields import quoted
from nfs_watcher_uploader.coord.statedoc import EMPTY, StateDoc, dump, parse, reason

logger = logging.getLogger(__name__)

_JSON = ContentSettings(content_type="application/json")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state as read: `etag` None when there is no blob; `damaged` says why the blob
    could not be read as a state (`doc` is then empty) and `raw` holds what was read."""

    doc: StateDoc
    etag: str | None
    damaged: str | None = None
    raw: bytes = b""


Change = Callable[[StateDoc], StateDoc]


class SharedState:
    """The state blob, through a control client (see client.py)."""

    def __init__(
        self,
        client: ContainerClient,
        blob: str = STATE_BLOB,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._blob = client.get_blob_client(blob)
        self._clock = clock
        self.reads = 0
        self.writes = 0
        self.conflicts = 0  # writes that lost a race and were done again

    def __repr__(self) -> str:
        return f"SharedState(reads={self.reads} writes={self.writes} conflicts={self.conflicts})"

    def read(self) -> Snapshot:
        """The state now. Raises ControlUnavailable, ControlRefused, or StateTooNew."""
        try:
            self.reads += 1
            stream = self._blob.download_blob(offset=0, length=STATE_MAX_BYTES + 1)
            raw = stream.readall()
        except HttpResponseError as exc:
            if error_code(exc) == "BlobNotFound":
                return Snapshot(EMPTY, None)
            if status_of(exc) == 416:  # a range on an empty blob
                return self._damaged(b"", "an empty blob", None)
            raise classify(exc, "reading the session state") from None
        except STORAGE_ERRORS as exc:
            raise classify(exc, "reading the session state") from None
        etag = quoted(str(stream.properties.etag))
        if len(raw) > STATE_MAX_BYTES:
            # What was read is kept aside; the rest is never downloaded.
            return self._damaged(raw, f"more than {STATE_MAX_BYTES} bytes", etag)
        try:
            return Snapshot(parse(raw), etag)
        except ValueError as exc:
            return self._damaged(raw, reason(exc), etag)

    def _damaged(self, raw: bytes, why: str, etag: str | None) -> Snapshot:
        text = f"the session state blob {STATE_BLOB} is damaged ({why})"
        logger.error("%s; read as empty until it is replaced", text)
        return Snapshot(EMPTY, etag, text, raw)

    def update(self, change: Change, fallback: StateDoc | None = None) -> Snapshot:
        """Apply `change` to the current state and write the result, again and again until
        no other writer came in between. Returns what was written (or read, when `change`
        changed nothing). Raises what `change` raises (SessionConflict), ControlUnavailable
        (storage, or CAS_TRIES races lost in a row), ControlRefused, StateTooNew.

        `fallback` is the last state the caller read whole: when the blob is damaged, gone
        (deleted by hand), or of an older generation (an older copy put back), `change`
        applies to it instead, so that no session is forgotten or brought back because someone
        replaced or removed the blob."""
        for _ in range(CAS_TRIES):
            snap = self.read()
            base = snap.doc
            # Damaged, removed, or an older state put back (a lower generation: every write
            # raises it).
            lost = (
                snap.damaged is not None
                or snap.etag is None
                or (fallback is not None and fallback.generation > base.generation)
            )
            if lost and fallback is not None and fallback.generation >= base.generation:
                base = fallback
            new = change(base)
            if new == snap.doc and snap.damaged is None:
                return snap
            generation = max(base.generation, snap.doc.generation) + 1
            new = new.model_copy(update={"generation": generation})
            if snap.damaged is not None:
                self._set_aside(snap)
            etag = self._write(new, snap.etag)
            if etag is not None:
                return Snapshot(new, etag)
            self.conflicts += 1
        raise ControlUnavailable(f"the session state kept changing ({CAS_TRIES} writes lost)")

    def _write(self, doc: StateDoc, etag: str | None) -> str | None:
        """Write `doc` if the blob still has `etag` (None: if there is no blob); the new ETag,
        or None when another writer came first."""
        try:
            self.writes += 1
            written = self._blob.upload_blob(
                dump(doc),
                overwrite=True,
                content_settings=_JSON,
                if_match=etag,
                if_none_match="*" if etag is None else None,
            )
        except HttpResponseError as exc:
            if status_of(exc) in (409, 412):
                return None
            raise classify(exc, "writing the session state") from None
        except STORAGE_ERRORS as exc:
            raise classify(exc, "writing the session state") from None
        return quoted(str(written["etag"]))

    def _set_aside(self, snap: Snapshot) -> None:
        name = f"{DAMAGED_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(self._clock()))}"
        name += f"-{(snap.etag or '').strip(chr(34))}.json"
        try:
            self._client.get_blob_client(name).upload_blob(snap.raw, if_none_match="*")
        except HttpResponseError as exc:
            if status_of(exc) not in (409, 412):  # 409: kept already, by an earlier try
                raise classify(exc, "keeping the damaged session state") from None
        except STORAGE_ERRORS as exc:
            raise classify(exc, "keeping the damaged session state") from None
        logger.error("Damaged session state kept as %s; it is replaced now", name)

    def import_local(self, raw: bytes | None) -> bool:
        """Put today's `sessions.json` (its bytes; None: there is none) in place if there is
        no shared state yet. True when this call did; False when a state was there (or the
        file is not a state: it is reported, and the shared state starts empty)."""
        if raw is None:
            return False
        try:
            doc = parse(raw)
        except ValueError as exc:
            logger.error("Not importing the local session state file: %s", reason(exc))
            return False
        # Generation 1 at least: every state a member can have seen is then a write's.
        doc = doc.model_copy(update={"generation": doc.generation + 1})
        return self._write(doc, None) is not None
