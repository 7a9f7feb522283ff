"""The control client: the SDK's synchronous blob client on a `requests` session of its own,
with short timeouts and no retries of its own.

Control requests never share anything with uploads: not the event loop, not the aiohttp
session, not the metered transport that paces every upload request through the bandwidth
bucket (where a renew would wait its turn behind 8 MiB blocks: tests/coord measure both), and
not the SDK's retry policy, which would sleep for seconds inside a renew. A request that fails
is tried again by the loop that made it, on its own schedule. Each thread that sends control
requests makes its own client (a `requests` session is not meant to be shared by threads).
"""

from typing import Any

import requests
from azure.core.exceptions import ResourceExistsError
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import ContainerClient

from nfs_watcher_uploader.coord.constants import CONNECT_TIMEOUT_S, READ_TIMEOUT_S
from nfs_watcher_uploader.coord.errors import STORAGE_ERRORS, classify


def control_client(
    container: str,
    *,
    account_url: str | None = None,
    credential: Any = None,
    connection_string: str | None = None,
    session: requests.Session | None = None,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    read_timeout: float = READ_TIMEOUT_S,
) -> ContainerClient:
    """A client of `container` with its own HTTP session (or `session`): either from
    `connection_string`, or `account_url` with any credential the synchronous SDK takes (an
    account key, an `AzureSasCredential`, a synchronous token credential)."""
    transport = RequestsTransport(
        session=session or requests.Session(),
        session_owner=True,
        connection_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    options: dict[str, Any] = {
        "transport": transport,
        "retry_total": 0,
        "connection_timeout": connect_timeout,
        "read_timeout": read_timeout,
    }
    if connection_string is not None:
        return ContainerClient.from_connection_string(connection_string, container, **options)
    if account_url is None:
        raise ValueError("control_client needs an account URL or a connection string")
    return ContainerClient(account_url, container, credential=credential, **options)


def ensure_container(client: ContainerClient) -> bool:
    """Create the control container if it does not exist; True when this call created it.
    Raises ControlUnavailable or ControlRefused."""
    try:
        client.create_container()
    except ResourceExistsError:
        return False
    except STORAGE_ERRORS as exc:
        raise classify(exc, f"creating the control container {client.container_name}") from None
    return True
