"""The session manifest: what a consumer in the cloud reads to know a session is whole.

One JSON blob per session, `<date>/<session>.manifest.json`, written when the session ends
(drained or timed out) from its ledger, and again whenever it ends again (parked files
retried, or dismissed). `complete` is true only when the session drained: every file below its
folder is in storage, nothing is parked and nothing was dismissed (a dismissed file was taken
out of the parked files by an operator: it is not in storage, whatever became of it). The
writer (`reports`) and `verify` share these models.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict

MANIFEST_VERSION = 1


class _Model(BaseModel):
    # A newer writer may add fields: an older reader ignores them.
    model_config = ConfigDict(extra="ignore", frozen=True)


class FileEntry(_Model):
    """One committed blob: a line of the ledger, an entry of the manifest."""

    blob: str  # its full name in the container
    path: str  # the file's path below the session folder, as the recorder wrote it
    size: int
    md5: str  # hex, of the bytes read from NFS (the blob's Content-MD5 and `md5` metadata)
    source_mtime: str  # ISO 8601 UTC
    uploaded_at: str  # ISO 8601 UTC: when the blob was committed, or found already committed
    # The blob's ETag after this commit (or as found): a rewrite of the blob is conditional on
    # it (If-Match), so that it never replaces a version it did not write. None: not known
    # (a line written before the ETag was recorded).
    etag: str | None = None


class Parked(_Model):
    path: str
    parked_as: str
    reason: str


class Dismissed(_Model):
    """A parked file an operator took out (DELETE /v1/files/failed/..., or removed by hand):
    not in storage. A line of the ledger, an entry of the manifest."""

    path: str  # the file's path below the session folder
    parked_as: str
    reason: str  # why it was parked
    parked_at: str | None  # ISO 8601 UTC, when known
    dismissed_at: str  # ISO 8601 UTC: when the service took note


class Excluded(_Model):
    path: str
    reason: str


class Totals(_Model):
    files: int
    bytes: int
    parked: int
    excluded: int
    # Files not in storage when the session ended that are neither parked nor excluded: still
    # waiting in incoming or in progress (only a timed-out session has any).
    not_uploaded: int
    # Parked files taken out by an operator (older manifests have none).
    dismissed: int = 0


class Manifest(_Model):
    manifest_version: int = MANIFEST_VERSION
    session: str
    date_prefix: str
    prefix: str  # every file's blob starts with this
    source_id: str
    uploader_version: str
    state: Literal["drained", "drain_timed_out"]
    # Which end of the session this is: a later end has a larger one (also in the blob's
    # metadata `generation`), and no manifest is ever written over a later end's.
    generation: int = 0
    complete: bool
    started_at: str
    stopped_at: str | None
    finished_at: str
    written_at: str
    totals: Totals
    files: list[FileEntry]
    parked: list[Parked]
    excluded: list[Excluded]
    dismissed: list[Dismissed] = []
