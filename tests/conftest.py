import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.config import Settings

from .helpers import Azurite, RunningService, make_settings, serve


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
