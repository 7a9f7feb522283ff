import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.config import Settings
from tests.support.browser import launch
from tests.support.helpers import Azurite, RunningService, free_port, make_settings, serve
from tests.support.relay import Relay


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    server = Azurite()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def container_name() -> str:
    return f"t{uuid.uuid4().hex[:20]}"


@pytest.fixture
def settings_factory(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return make_settings(tmp_path, azurite, container_name, **overrides)

    return make


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


@pytest.fixture
def service_factory() -> Iterator[Callable[..., RunningService]]:
    """Start real servers; each is stopped at the end of the test."""
    running: list[RunningService] = []

    def start(settings: Settings, **options: Any) -> RunningService:
        r = serve(settings, **options)
        running.append(r)
        return r

    yield start
    for r in running:
        if r.thread.is_alive():
            r.stop()


@pytest.fixture
def running(service_factory: Callable[..., RunningService], settings: Settings) -> RunningService:
    return service_factory(settings)


@pytest.fixture
def own_azurite(tmp_path: Path) -> Iterator[Azurite]:
    """An Azurite of this test alone, keeping its data on disk: it can be stopped (an outage)
    and started again."""
    server = Azurite(port=free_port(), location=tmp_path / "azurite")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def relay(azurite: Azurite) -> Iterator[Relay]:
    """A counting relay in front of the shared Azurite: what went over the wire."""
    r = Relay(azurite.port).start()
    yield r
    r.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's chromium through Playwright (skipped, saying why, where it cannot run)."""
    yield from launch()
