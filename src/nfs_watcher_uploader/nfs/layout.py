"""Where each file of the pipeline lives, computed in one place.

    incoming/<session>/<rel>                        written by the recorder
    <processing>/<date>/<session>/<rel>             claimed (renamed here, same filesystem)
    <processing>/_completed/<blob name>             blob committed; GC deletes it
    <processing>/_failed/<date>/<session>/<rel>     parked, never deleted; its reason in
    <processing>/_failed_reasons/<date>/<session>/<rel>
    <staging>/nfs-watcher-uploader/<date>/<session>/<rel>  the local copy that is uploaded
    blob <date>/<session>/<rel>                     unless a name conflict chose another

    <processing>/_ledgers/<date>/<session>.jsonl    one line per blob committed
    <processing>/_reports/<id>.json                 a session's end: manifest and event due
    <processing>/_outbox/<id>.json                  a webhook event not yet delivered
    blob <date>/<session>.manifest.json             the session's manifest

`rel` is the file's path relative to its session folder ('cam2/rec1.bin'). A file's blob has
at least three segments and a manifest's two, so no file is ever named like a manifest; and no
session may be named like one (`items.is_manifest_like`), so no manifest shadows a session
folder either.
"""

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.constants import (
    COMPLETED_DIR,
    CONFLICT_MARK,
    LEDGER_SUFFIX,
    LEDGERS_DIR,
    MANIFEST_SUFFIX,
    NAME_MAX,
    OUTBOX_DIR,
    PARKED_DIR,
    PARKED_REASONS_DIR,
    REPORTS_DIR,
    STAGING_DIR,
)
from nfs_watcher_uploader.items import WorkItem


@dataclass(frozen=True, slots=True)
class Layout:
    incoming_root: Path
    processing_root: Path
    staging_root: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> "Layout":
        return cls(
            settings.nfs_incoming_dir, settings.nfs_processing_root, settings.local_staging_root
        )

    @property
    def completed_root(self) -> Path:
        return self.processing_root / COMPLETED_DIR

    @property
    def parked_root(self) -> Path:
        return self.processing_root / PARKED_DIR

    @property
    def reasons_root(self) -> Path:
        return self.processing_root / PARKED_REASONS_DIR

    @property
    def outbox_root(self) -> Path:
        return self.processing_root / OUTBOX_DIR

    @property
    def reports_root(self) -> Path:
        return self.processing_root / REPORTS_DIR

    def ledger(self, date_prefix: str, session_name: str) -> Path:
        return self.processing_root / LEDGERS_DIR / date_prefix / f"{session_name}{LEDGER_SUFFIX}"

    def session_folder(self, session_name: str) -> Path:
        return self.incoming_root / session_name

    def incoming(self, item: WorkItem) -> Path:
        return self.incoming_root / item.session_name / item.rel

    def processing(self, item: WorkItem) -> Path:
        return self.processing_root / _tail(item)

    def completed(self, item: WorkItem) -> Path:
        """Named after the file's blob, so no two completed files can want one name."""
        return self.completed_root / self.blob_name(item)

    def source(self, item: WorkItem) -> Path:
        """Where the bytes of a claimed `item` are read from."""
        return self.completed(item) if item.completed else self.processing(item)

    def as_completed(self, item: WorkItem) -> WorkItem:
        """The work that checks `item`'s file again in the completed tree, against its blob."""
        blob = self.blob_name(item)
        rel = blob.split("/", 2)[2]  # below <date>/<session>/
        return WorkItem(
            item.session_name,
            item.date_prefix,
            rel,
            True,
            blob_name=blob,
            completed=True,
            etag=item.etag,
        )

    def parked(self, item: WorkItem, rel: str | None = None) -> Path:
        return self.parked_root / _tail(item, rel)

    def reason(self, item: WorkItem, rel: str | None = None) -> Path:
        return self.reasons_root / _tail(item, rel)

    @property
    def staging_dir(self) -> Path:
        """Our own folder on the staging disk: nothing else there is ever touched."""
        return self.staging_root / STAGING_DIR

    def staged(self, item: WorkItem) -> Path:
        return self.staging_dir / _tail(item)

    @staticmethod
    def blob_name(item: WorkItem) -> str:
        return item.blob_name or f"{item.date_prefix}/{item.session_name}/{item.rel}"


def manifest_blob(date_prefix: str, session_name: str) -> str:
    return f"{date_prefix}/{session_name}{MANIFEST_SUFFIX}"


def _tail(item: WorkItem, rel: str | None = None) -> Path:
    return Path(item.date_prefix, item.session_name, rel or item.rel)


def versioned(path: str, version: int) -> str:
    """`d/s/chunk.bin` for version 1, then `d/s/chunk~2.bin`, `d/s/chunk~3.bin`...: the name a
    file takes when another file already has its own (a blob, a parked file). The stem is
    shortened where the name would pass NAME_MAX bytes (a parked file must fit on disk)."""
    if version == 1:
        return path
    folder, leaf = posixpath.split(path)
    stem, ext = posixpath.splitext(leaf)
    mark = f"{CONFLICT_MARK}{version}"
    while len(os.fsencode(stem + mark + ext)) > NAME_MAX:
        if stem:
            stem = stem[:-1]
        else:
            ext = ext[:-1]
    return posixpath.join(folder, f"{stem}{mark}{ext}")
