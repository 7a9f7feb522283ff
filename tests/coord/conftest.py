"""Fixtures of the coordination tests: a fresh control container on the session's Azurite,
members that leave at the end of the test, a clock the test moves, a counting relay."""

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

from nfs_watcher_uploader.coord.client import control_client, ensure_container
from nfs_watcher_uploader.coord.member import Member
from tests.support.helpers import ACCOUNT, KEY, Azurite
from tests.support.http_relay import HttpRelay


class ManualClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Control:
    """A control container, and how to reach it: straight, or through `endpoint`."""

    name: str
    azurite: Azurite

    def connection_string(self, endpoint: str | None = None) -> str:
        url = endpoint or self.azurite.url
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={url};"
        )

    def client(self, endpoint: str | None = None, **options: Any) -> ContainerClient:
        """A control client of its own (its own HTTP session)."""
        return control_client(
            self.name, connection_string=self.connection_string(endpoint), **options
        )


@pytest.fixture
def control(azurite: Azurite) -> Control:
    made = Control(f"t{uuid.uuid4().hex[:20]}-ctl", azurite)
    assert ensure_container(made.client())
    return made


@pytest.fixture
def join(control: Control) -> Iterator[Callable[..., Member]]:
    """Join a member (started: renewing in its thread, unless start=False); every member
    leaves at the end of the test."""
    members: list[Member] = []

    def make(start: bool = True, client: ContainerClient | None = None, **kw: Any) -> Member:
        member = Member(client or control.client(), **kw)
        members.append(member)
        member.join()
        if start:
            member.start()
        return member

    yield make
    for member in members:
        member.leave()


@pytest.fixture
def relay(azurite: Azurite) -> Iterator[HttpRelay]:
    running = HttpRelay(azurite.port).start()
    yield running
    running.stop()
