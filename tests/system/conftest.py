"""Fixtures of the whole-service tests."""

from collections.abc import Iterator

import pytest

from tests.support.otlp_receiver import OtlpReceiver


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    """An OTLP/HTTP receiver on a free loopback port."""
    r = OtlpReceiver().start()
    yield r
    r.stop()
