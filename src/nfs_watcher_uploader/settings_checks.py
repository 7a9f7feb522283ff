"""Settings that can never work, found before anything is touched: a container name Azure
refuses, and settings that contradict each other. Each problem is one line that names the
variables and the fix; start-up (and `verify`) stop with exit status 1 on any: `load_settings`
reads the settings and runs every check (each variable's own, the roots' `unsafe_paths`, these).

    container name     APP_AZURE_CONTAINER against Azure's rules
    two endpoints      APP_AZURE_ACCOUNT_URL is not the blob endpoint of
                       APP_AZURE_CONNECTION_STRING (one of them would be silently ignored)
    two credentials    APP_AZURE_AUTH names one credential, and another is set too
    replicas           APP_COORDINATION=azure with APP_ON_NAME_CONFLICT=overwrite, or with
                       a control container name Azure refuses (or the data container's)

Secrets are never quoted: of a connection string only its endpoint is shown.
"""

import string
import sys
from urllib.parse import urlsplit

from pydantic import ValidationError

from nfs_watcher_uploader.config import (
    AzureAuth,
    Coordination,
    NameConflict,
    Settings,
    unsafe_paths,
)
from nfs_watcher_uploader.constants import (
    CONTAINER_NAME_MAX,
    CONTAINER_NAME_MIN,
    SPECIAL_CONTAINERS,
)
from nfs_watcher_uploader.coord.names import control_container_name

_CONTAINER_CHARS = frozenset(string.ascii_lowercase + string.digits + "-")
_CONTAINER_RULES = (
    f"Azure's rules: {CONTAINER_NAME_MIN} to {CONTAINER_NAME_MAX} lowercase letters, digits "
    "and single hyphens, starting and ending with a letter or a digit"
)
# Azurite's well-known endpoint, for `UseDevelopmentStorage=true`.
_DEVELOPMENT_ENDPOINT = "http://127.0.0.1:10000/devstoreaccount1"
# The variable of each credential that APP_AZURE_AUTH can ask for alone.
_CREDENTIALS = {
    AzureAuth.SAS: "APP_AZURE_SAS_TOKEN",
    AzureAuth.CONNECTION_STRING: "APP_AZURE_CONNECTION_STRING",
    AzureAuth.ACCOUNT_KEY: "APP_AZURE_ACCOUNT_KEY",
}


def load_settings() -> Settings:
    """Settings from the environment, or exit with a message that names each bad variable
    (never echoing values: some are secrets), each unsafe combination of folders or each
    setting that cannot work, before anything is touched."""
    try:
        settings = Settings()  # pyright: ignore[reportCallIssue]
    except ValidationError as exc:
        lines: list[str] = []
        for err in exc.errors():
            loc = "_".join(str(p) for p in err["loc"]).upper()
            name = f"APP_{loc}" if loc else "settings"
            lines.append(f"  {name}: {err['msg']}")
        sys.exit("nfs-watcher-uploader: invalid configuration\n" + "\n".join(lines))
    _exit_if(unsafe_paths(settings), "unsafe settings")
    _exit_if(problems(settings), "settings that cannot work")
    return settings


def _exit_if(found: list[str], what: str) -> None:
    if found:
        sys.exit(
            f"nfs-watcher-uploader: {what}, nothing was touched\n"
            + "\n".join(f"  {p}" for p in found)
        )


def problems(settings: Settings) -> list[str]:
    """Every way `settings` cannot work, one line each (none: fine)."""
    out: list[str] = []
    if (problem := container_name_problem(settings.azure_container)) is not None:
        out.append(problem)
    out += _endpoint_conflict(settings)
    out += _credential_conflict(settings)
    out += _coordination_problems(settings)
    return out


def _coordination_problems(settings: Settings) -> list[str]:
    if settings.coordination is not Coordination.AZURE:
        return []
    out: list[str] = []
    if settings.on_name_conflict is NameConflict.OVERWRITE:
        out.append(
            "APP_ON_NAME_CONFLICT=overwrite cannot be used with APP_COORDINATION=azure: a paused "
            "replica and the one that took its files over may both commit a file for a moment, "
            "and with overwrite the later commit replaces the earlier without a condition (a "
            "late one may replace a newer version). Use keep-both or park, which compare MD5s"
        )
    try:
        control_container_name(settings.azure_container, settings.azure_control_container)
    except ValueError as exc:
        out.append(str(exc))
    return out


def container_name_problem(name: str) -> str | None:
    """What is wrong with container `name` by Azure's rules, naming the rule; None if nothing."""
    if name in SPECIAL_CONTAINERS:
        return None
    if not CONTAINER_NAME_MIN <= len(name) <= CONTAINER_NAME_MAX:
        broken = f"is {len(name)} characters long"
    elif not set(name) <= _CONTAINER_CHARS:
        broken = "may hold only lowercase letters a-z, digits and hyphens"
    elif name[0] == "-" or name[-1] == "-":
        broken = "must start and end with a letter or a digit"
    elif "--" in name:
        broken = "must not hold two hyphens in a row"
    else:
        return None
    return f"APP_AZURE_CONTAINER={name!r} {broken} ({_CONTAINER_RULES})"


def connection_string_fields(connection_string: str) -> dict[str, str]:
    """The `Key=value` fields of a connection string, by lowercase key (a value keeps its own
    `=`s: a SharedAccessSignature holds several)."""
    fields: dict[str, str] = {}
    for part in connection_string.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    return fields


def blob_endpoint(connection_string: str) -> str | None:
    """The blob endpoint a connection string points at (its BlobEndpoint, or the one its
    AccountName, protocol and EndpointSuffix make), or None when it names none."""
    fields = connection_string_fields(connection_string)
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return _DEVELOPMENT_ENDPOINT
    if endpoint := fields.get("blobendpoint"):
        return endpoint
    account = fields.get("accountname")
    if not account:
        return None
    protocol = fields.get("defaultendpointsprotocol", "https")
    suffix = fields.get("endpointsuffix", "core.windows.net")
    return f"{protocol}://{account}.blob.{suffix}"


def _same_endpoint(a: str, b: str) -> bool:
    """Scheme, host, port and path compared as a client would use them (case of the host,
    default ports and a trailing slash do not matter)."""

    def key(url: str) -> tuple[str, str, int | None, str]:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        try:
            port = parts.port or {"https": 443, "http": 80}.get(scheme)
        except ValueError:
            port = None
        return scheme, (parts.hostname or "").lower(), port, parts.path.rstrip("/")

    return key(a) == key(b)


def _endpoint_conflict(settings: Settings) -> list[str]:
    if settings.azure_connection_string is None:
        return []
    endpoint = blob_endpoint(settings.azure_connection_string.get_secret_value())
    if endpoint is None or _same_endpoint(endpoint, settings.azure_account_url):
        return []
    shown = urlsplit(endpoint)._replace(query="", fragment="").geturl()
    return [
        f"APP_AZURE_ACCOUNT_URL ({settings.azure_account_url}) is not the blob endpoint of "
        f"APP_AZURE_CONNECTION_STRING ({shown}): one of them would be ignored. Make them the "
        "same account, or unset the one you do not mean"
    ]


def _credential_conflict(settings: Settings) -> list[str]:
    auth = settings.azure_auth
    if auth is AzureAuth.AUTO:
        return []
    given = {
        AzureAuth.SAS: settings.azure_sas_token,
        AzureAuth.CONNECTION_STRING: settings.azure_connection_string,
        AzureAuth.ACCOUNT_KEY: settings.azure_account_key,
    }
    others = [_CREDENTIALS[mode] for mode, value in given.items() if value and mode is not auth]
    if not others:
        return []
    uses = _CREDENTIALS.get(auth, "a managed or workload identity")
    also = " and ".join(others)
    return [
        f"APP_AZURE_AUTH={auth} uses {uses} only, but {also} {'is' if len(others) == 1 else 'are'}"
        " set too: unset what you do not mean, or set APP_AZURE_AUTH=auto to try each in turn"
    ]
