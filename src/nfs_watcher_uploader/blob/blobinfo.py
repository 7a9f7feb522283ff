"""What a blob carries besides its bytes, for whoever reads it in the cloud.

    metadata      session, source_mtime (ISO 8601 UTC), source_id (APP_SOURCE_ID),
                  uploader_version, md5 (the whole file's, hex; Content-MD5 holds it too)
    Content-Type  from the file name (the standard library's table, never the host's)
    access tier   APP_AZURE_ACCESS_TIER, set by the upload itself
    index tags    APP_AZURE_TAGS plus session=<name>, when APP_AZURE_TAGS is set

Metadata names are C# identifiers, as Azure requires; every value is ASCII (an HTTP header).
"""

import importlib.metadata
import math
import mimetypes
import posixpath
from dataclasses import dataclass, field
from typing import Any

from azure.storage.blob import StandardBlobTier

from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.constants import RESERVED_TAG

DEFAULT_CONTENT_TYPE = "application/octet-stream"
# The standard library's own table only: /etc/mime.types differs between the dev machine and
# the image, and a blob's Content-Type must not depend on where it was uploaded from.
_TYPES = mimetypes.MimeTypes(filenames=())
# A compressed file is stored as it is: its type is the compression's, never Content-Encoding
# (an HTTP client would then unpack it, and the bytes would no longer match their MD5).
_COMPRESSED = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
    "br": "application/x-brotli",
}


def uploader_version() -> str:
    try:
        return importlib.metadata.version("nfs-watcher-uploader")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def content_type(name: str) -> str:
    """The Content-Type for a blob named `name`."""
    guessed, encoding = _TYPES.guess_type(posixpath.basename(name), strict=False)
    if encoding is not None:
        return _COMPRESSED.get(encoding, DEFAULT_CONTENT_TYPE)
    return guessed or DEFAULT_CONTENT_TYPE


def iso_utc(seconds: float) -> str:
    """`2026-11-29T08:15:02.123456Z`, for any finite number of seconds (one read back from the
    share may be 1e308: its microseconds are no float)."""
    whole = math.floor(seconds)
    return iso_utc_ns(whole * 1_000_000_000 + round((seconds - whole) * 1_000_000) * 1000)


def iso_utc_ns(ns: int) -> str:
    """Like `iso_utc`, from nanoseconds, in integers (a float would round some microseconds).
    Any time a filesystem can hold is a time: before 1970, and past 9999 (ISO 8601's expanded
    years, `+10000-01-01T00:00:00.000000Z`), which `datetime` cannot represent."""
    seconds, below = divmod(ns, 1_000_000_000)
    days, in_day = divmod(seconds, 86_400)
    year, month, day = _civil(days)
    hour, rest = divmod(in_day, 3600)
    minute, second = divmod(rest, 60)
    y = f"{year:04d}" if 0 <= year <= 9999 else f"{year:+05d}"
    return f"{y}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{below // 1000:06d}Z"


def _civil(days: int) -> tuple[int, int, int]:
    """(year, month, day) of the proleptic Gregorian calendar, `days` after 1970-01-01, for any
    integer (Howard Hinnant's `civil_from_days`)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """Content-Type, metadata, tags and tier of one blob, as the SDK's upload calls take them."""

    content_type: str = DEFAULT_CONTENT_TYPE
    metadata: dict[str, str] = field(default_factory=dict[str, str])
    tags: dict[str, str] | None = None
    tier: StandardBlobTier | None = None

    def upload_kwargs(self) -> dict[str, Any]:
        """For upload_blob and commit_block_list (content settings apart)."""
        out: dict[str, Any] = {"metadata": self.metadata}
        if self.tags is not None:
            out["tags"] = self.tags
        if self.tier is not None:
            out["standard_blob_tier"] = self.tier
        return out


class BlobLabels:
    """Makes the BlobInfo of each blob from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.source_id = settings.source_id
        self.version = uploader_version()
        self._tags = settings.azure_tags
        tier = settings.azure_access_tier
        self._tier = None if tier is None else StandardBlobTier(tier.value)

    def __repr__(self) -> str:
        return f"BlobLabels(source_id={self.source_id!r} tier={self._tier} tags={self._tags})"

    def common(self, session: str) -> dict[str, str]:
        """The metadata every blob of `session` has, the manifest's included."""
        return {"session": session, "source_id": self.source_id, "uploader_version": self.version}

    def tags(self, session: str) -> dict[str, str] | None:
        return None if self._tags is None else {**self._tags, RESERVED_TAG: session}

    def for_file(self, session: str, blob_name: str, md5: bytes, mtime_ns: int) -> BlobInfo:
        metadata = {
            **self.common(session),
            "source_mtime": iso_utc_ns(mtime_ns),
            "md5": md5.hex(),
        }
        return BlobInfo(content_type(blob_name), metadata, self.tags(session), self._tier)

    def for_manifest(self, session: str) -> BlobInfo:
        """A manifest stays in the account's default tier: an archived one could not be read."""
        return BlobInfo("application/json", self.common(session), self.tags(session))
