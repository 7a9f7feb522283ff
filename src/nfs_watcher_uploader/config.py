"""Settings, read once from `APP_*` environment variables (see the README's settings table), each
checked on its own as it is read; `unsafe_paths` checks the three roots together.
`settings_checks.load_settings` reads them at start and refuses bad ones, naming each variable."""

import os
import socket
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from nfs_watcher_uploader.constants import (
    API_TOKEN_MIN_LENGTH,
    MAX_TAGS,
    RESERVED_TAG,
    SOURCE_ID_MAX,
    TAG_KEY_MAX,
    TAG_RE,
    TAG_VALUE_MAX,
)
from nfs_watcher_uploader.rates import Schedule, parse_rate, zone


class AzureAuth(StrEnum):
    AUTO = "auto"
    # Workload identity, then managed identity: what a pod has
    # (blob/credentials.workload_or_managed_identity).
    IDENTITY = "identity"
    # azure-identity's DefaultAzureCredential, which also tries developer tools: for a laptop.
    IDENTITY_DEFAULT = "identity-default"
    SAS = "sas"
    CONNECTION_STRING = "connection-string"
    ACCOUNT_KEY = "account-key"


class NameConflict(StrEnum):
    """What to do when a blob of the same name holds other bytes (blob/storage: `upload`)."""

    KEEP_BOTH = "keep-both"
    OVERWRITE = "overwrite"
    PARK = "park"


class Coordination(StrEnum):
    """How replicas on one share agree on who does what (README "Running N replicas")."""

    # One process per share: today's single replica, nothing in storage but the data.
    NONE = "none"
    # N replicas coordinated through leases and conditional writes in a control container.
    AZURE = "azure"


class UploadOrder(StrEnum):
    """Which waiting files go first (see work/order.py)."""

    OLDEST = "oldest"
    NEWEST = "newest"
    NAME = "name"


def _words(v: object) -> object:
    """'a, b,,c' -> ('a', 'b', 'c'): comma-separated settings."""
    if isinstance(v, str):
        return tuple(p.strip() for p in v.split(",") if p.strip())
    return v


class AccessTier(StrEnum):
    """The access tier a blob is created in (set at upload: no later re-tier is paid)."""

    HOT = "Hot"
    COOL = "Cool"
    COLD = "Cold"
    ARCHIVE = "Archive"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="APP_", extra="ignore", hide_input_in_errors=True)

    # Server
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=0, le=65535)
    # Bearer token for /v1/* (and /metrics with metrics_require_token): inline, or a file that
    # is read again when it changes (a mounted Secret). Neither: the API is open.
    api_token: SecretStr | None = None
    api_token_file: Path | None = None
    metrics_require_token: bool = False

    # Azure
    azure_account_url: str
    azure_container: str
    azure_auth: AzureAuth = AzureAuth.AUTO
    azure_connection_string: SecretStr | None = None
    azure_account_name: str | None = None
    azure_account_key: SecretStr | None = None
    azure_sas_token: SecretStr | None = None
    # False: start-up neither creates the container nor reads its properties, so a credential
    # that may only create and write blobs (a `cw` SAS) is enough.
    azure_create_container: bool = True

    # NFS paths
    nfs_incoming_dir: Path = Path("/mnt/nfs/incoming")
    nfs_processing_root: Path = Path("/mnt/nfs/.processing")

    # Local staging
    local_staging_root: Path = Path("/mnt/staging")

    # Watcher
    poll_interval_s: float = Field(default=2.0, ge=0)
    min_file_age_s: float = Field(default=5.0, ge=0)
    file_extensions: Annotated[frozenset[str], NoDecode] = frozenset()
    # Files with more than one hard link are left alone unless this is set: on NFS anyone may
    # link any file of the export into a session folder (see nfs/moves.claim).
    allow_hard_links: bool = False

    # Queue and workers
    max_queue_size: int = Field(default=2000, ge=1)
    # 16 beat 4 and 8 in `make bench` (small files 2.4 s vs 3.0 s) at 214 MiB peak RSS.
    worker_concurrency: int = Field(default=16, ge=1)

    # Azure upload tuning (None = this service's defaults, see blob/storage.py)
    azure_max_block_size: int | None = Field(default=None, ge=64 * 1024, le=4000 * 1024 * 1024)
    azure_max_single_put_size: int | None = Field(default=None, ge=0, le=5000 * 1024 * 1024)
    azure_max_concurrency: int = Field(default=8, ge=1)
    on_name_conflict: NameConflict = NameConflict.KEEP_BOTH

    # Which files below a session folder are uploaded (intake/filters.py): glob patterns on the path
    # relative to the session folder; excluded files stay in incoming and are counted.
    include: Annotated[tuple[str, ...], NoDecode] = ()
    exclude: Annotated[tuple[str, ...], NoDecode] = ()
    exclude_defaults: bool = True
    upload_order: UploadOrder = UploadOrder.OLDEST

    # Bandwidth (uplink/bandwidth.py): bytes per second for all uploads together, or a timetable.
    bandwidth_limit: Annotated[int | None, NoDecode] = None
    bandwidth_schedule: str | None = None
    timezone: str = "UTC"

    # GC
    gc_interval_s: float = Field(default=30.0, gt=0)

    # Reliability
    retry_base_s: float = Field(default=1.0, gt=0)
    retry_max_s: float = Field(default=300.0, gt=0)
    drain_timeout_s: float = Field(default=600.0, ge=0)
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    nfs_timeout_s: float = Field(default=30.0, gt=0)
    liveness_timeout_s: float = Field(default=120.0, gt=0)
    # Exit (non-zero) once liveness has failed this long: for Docker/compose, which never
    # restart an unhealthy container themselves. None: never.
    exit_on_stall_s: float | None = Field(default=None, gt=0)

    # What a consumer in the cloud gets (README "In the cloud")
    source_id: str = Field(default_factory=socket.gethostname)
    azure_access_tier: AccessTier | None = None
    # None: no blob index tags (setting them needs the tags permission); else these, plus
    # session=<name> on every blob.
    azure_tags: Annotated[dict[str, str] | None, NoDecode] = None
    manifest: bool = True
    # A session's ledger is removed this many days after its last line, once its manifest is in
    # storage and nothing of it is parked (cloud/retention).
    ledger_retention_days: float = Field(default=30.0, ge=0)
    webhook_url: SecretStr | None = None
    webhook_secret: SecretStr | None = None

    # Replicas (README "Running N replicas"): `none` is one process per share, as always.
    coordination: Coordination = Coordination.NONE
    # The container of the control blobs (members, the session state): derived from the data
    # container (`<data>-ctl`, coord/names) unless set; never the data container itself.
    azure_control_container: str | None = None
    # A SAS for the control container (secret), needed when APP_AZURE_SAS_TOKEN is a container
    # SAS (sr=c): it reaches one container only.
    azure_control_sas_token: SecretStr | None = None
    # A file stable this long may be claimed by any member, whoever rendezvous gives it to
    # (a member that is alive but stuck does not keep its files for ever).
    steal_after_s: float = Field(default=30.0, gt=0)
    # What /v1/status calls this member (the pod's name, from the downward API): a label only.
    member_name: str = Field(default_factory=socket.gethostname)

    @field_validator("file_extensions", mode="before")
    @classmethod
    def parse_extensions(cls, v: object) -> object:
        """Parse comma-separated extensions: '.bin,mp4, .DAT' -> {'.bin', '.mp4', '.dat'}."""
        if isinstance(v, str):
            parts = (p.strip().lower() for p in v.split(","))
            return frozenset(p if p.startswith(".") else f".{p}" for p in parts if p)
        return v

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def parse_patterns(cls, v: object) -> object:
        return _words(v)

    @field_validator("bandwidth_limit", mode="before")
    @classmethod
    def parse_bandwidth(cls, v: object) -> object:
        return parse_rate(v) if isinstance(v, str) else v

    @field_validator("bandwidth_schedule")
    @classmethod
    def check_schedule(cls, v: str | None) -> str | None:
        if v is not None and v.strip():
            Schedule.parse(v)
            return v
        return None

    @field_validator("timezone")
    @classmethod
    def check_timezone(cls, v: str) -> str:
        zone(v)
        return v

    @model_validator(mode="after")
    def _check_bandwidth(self) -> Self:
        if self.bandwidth_limit is not None and self.bandwidth_schedule is not None:
            raise ValueError(
                "set APP_BANDWIDTH_LIMIT or APP_BANDWIDTH_SCHEDULE, not both (a schedule covers "
                "every hour of the day)"
            )
        return self

    @field_validator("azure_account_url")
    @classmethod
    def _no_query(cls, v: str) -> str:
        # A SAS pasted into the URL would be printed wherever the URL is.
        if "?" in v:
            raise ValueError(
                "must not carry a query string: put a SAS in APP_AZURE_SAS_TOKEN (a secret)"
            )
        return v

    @field_validator("api_token")
    @classmethod
    def _strong_token(cls, v: SecretStr | None) -> SecretStr | None:
        return None if v is None else SecretStr(check_api_token(v.get_secret_value()))

    @field_validator("source_id")
    @classmethod
    def _check_source_id(cls, v: str) -> str:
        if not v or len(v) > SOURCE_ID_MAX or not (v.isascii() and v.isprintable()):
            raise ValueError(f"must be 1 to {SOURCE_ID_MAX} printable ASCII characters")
        return v

    @field_validator("azure_access_tier", mode="before")
    @classmethod
    def _tier_any_case(cls, v: object) -> object:
        if isinstance(v, str):
            return {t.value.lower(): t for t in AccessTier}.get(v.strip().lower(), v) or None
        return v

    @field_validator("azure_tags", mode="before")
    @classmethod
    def _parse_tags(cls, v: object) -> object:
        return parse_tags(v) if isinstance(v, str) else v

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, v: SecretStr | None) -> SecretStr | None:
        # The URL may hold a token: the message never repeats it.
        if v is not None and not v.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @model_validator(mode="after")
    def _check_auth(self) -> Self:
        needs = {
            AzureAuth.CONNECTION_STRING: (
                "APP_AZURE_CONNECTION_STRING",
                self.azure_connection_string,
            ),
            AzureAuth.ACCOUNT_KEY: ("APP_AZURE_ACCOUNT_KEY", self.azure_account_key),
            AzureAuth.SAS: ("APP_AZURE_SAS_TOKEN", self.azure_sas_token),
        }
        if self.azure_auth in needs and not needs[self.azure_auth][1]:
            raise ValueError(f"APP_AZURE_AUTH={self.azure_auth} needs {needs[self.azure_auth][0]}")
        if self.azure_auth in (AzureAuth.IDENTITY, AzureAuth.IDENTITY_DEFAULT) and (
            not self.azure_account_url.startswith("https://")
        ):
            raise ValueError(
                f"APP_AZURE_AUTH={self.azure_auth} needs an https:// APP_AZURE_ACCOUNT_URL"
            )
        if self.api_token is not None and self.api_token_file is not None:
            raise ValueError("set APP_API_TOKEN or APP_API_TOKEN_FILE, not both")
        if self.metrics_require_token and self.api_token is None and self.api_token_file is None:
            raise ValueError(
                "APP_METRICS_REQUIRE_TOKEN=true needs APP_API_TOKEN or APP_API_TOKEN_FILE"
            )
        if self.retry_max_s < self.retry_base_s:
            raise ValueError("APP_RETRY_MAX_S must not be below APP_RETRY_BASE_S")
        return self


def check_api_token(token: str) -> str:
    """The token without surrounding whitespace (a file written by `echo` ends in a newline), or
    ValueError saying why it is refused. Never echoes it."""
    token = token.strip()
    if len(token) < API_TOKEN_MIN_LENGTH:
        raise ValueError(
            f"the API token has {len(token)} characters; use at least {API_TOKEN_MIN_LENGTH} "
            "(e.g. `openssl rand -hex 32`), or unset it to leave the API open"
        )
    return token


def parse_tags(text: str) -> dict[str, str] | None:
    """`k=v,k2=v2` -> {k: v, k2: v2}, checked against Azure's rules for blob index tags. Empty
    means no tags; the bare word `session` asks for the session tag alone."""
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not entries:
        return None
    tags: dict[str, str] = {}
    for entry in entries:
        if entry == RESERVED_TAG:
            continue
        key, sep, value = entry.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"{entry!r} is not key=value")
        if key == RESERVED_TAG:
            raise ValueError(f"the tag {RESERVED_TAG!r} is set by the service to the session name")
        if len(key) > TAG_KEY_MAX or len(value) > TAG_VALUE_MAX:
            raise ValueError(
                f"tag {key[:TAG_KEY_MAX]!r}: keys hold at most {TAG_KEY_MAX} characters, "
                f"values {TAG_VALUE_MAX}"
            )
        if not TAG_RE.fullmatch(key) or not TAG_RE.fullmatch(value):
            raise ValueError(
                f"tag {key!r}: only letters, digits, space and + - . / : = _ are allowed"
            )
        tags[key] = value
    if len(tags) + 1 > MAX_TAGS:
        raise ValueError(
            f"at most {MAX_TAGS - 1} tags: a blob holds {MAX_TAGS}, one is the session"
        )
    return tags


def unsafe_paths(settings: Settings) -> list[str]:
    """What is wrong with the three roots, touching nothing: two of them equal or one inside
    another (start-up cleanup, claims and GC would then destroy each other's files), or the
    processing root on another filesystem than incoming (the claim is a rename). Folders are
    compared by path and by device and inode, so a bind mount or a symlink that aliases one
    root inside another is seen through."""
    roots = {
        "APP_NFS_INCOMING_DIR": settings.nfs_incoming_dir,
        "APP_NFS_PROCESSING_ROOT": settings.nfs_processing_root,
        "APP_LOCAL_STAGING_ROOT": settings.local_staging_root,
    }
    real = {name: Path(os.path.realpath(path)) for name, path in roots.items()}
    chains = {name: _chain(path) for name, path in real.items()}
    problems: list[str] = []
    names = list(real)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if real[a] == real[b] or _same_folder(real[a], real[b]):
                problems.append(f"{a} and {b} are the same folder ({real[a]}, {real[b]})")
            elif inside := _inside(a, b, real, chains) or _inside(b, a, real, chains):
                inner, outer = inside
                problems.append(f"{inner} ({real[inner]}) is inside {outer} ({real[outer]})")
    incoming = _device(real["APP_NFS_INCOMING_DIR"])
    processing = _device(real["APP_NFS_PROCESSING_ROOT"])
    if incoming is not None and processing is not None and incoming != processing:
        problems.append(
            "APP_NFS_PROCESSING_ROOT is on another filesystem than APP_NFS_INCOMING_DIR: "
            "files are claimed by renaming them, which only works within one filesystem"
        )
    return problems


Identity = tuple[int, int]


@dataclass(frozen=True, slots=True)
class _Chain:
    """A root's own (device, inode), None when it does not exist (yet), and those of its
    existing parents, nearest first. Each from one stat: another replica that creates or
    removes a root meanwhile never makes a parent's identity pass for the root's own."""

    own: Identity | None
    parents: list[Identity]


def _chain(path: Path) -> _Chain:
    return _Chain(_identity(path), [i for p in path.parents if (i := _identity(p)) is not None])


def _identity(path: Path) -> Identity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def _inside(
    inner: str, outer: str, real: dict[str, Path], chains: dict[str, _Chain]
) -> tuple[str, str] | None:
    """(inner, outer) when root `inner` is below root `outer`, by path or by identity."""
    if real[inner].is_relative_to(real[outer]):
        return inner, outer
    own = chains[outer].own
    if own is not None and own in chains[inner].parents:
        return inner, outer
    return None


def _device(path: Path) -> int | None:
    """The device of `path`, or of its nearest existing parent (what it would be created on)."""
    chain = _chain(path)
    found = chain.own or next(iter(chain.parents), None)
    return found[0] if found else None
