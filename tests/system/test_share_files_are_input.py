"""Whatever stands in place of a file the service reads back from the share (its own state, the
bandwidth override, report and outbox jobs, ledgers, parked files' reasons) is input: a FIFO
never blocks it, deep nesting never raises, and the service goes on without the file, set
aside with a line naming it."""

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.sessions.session import today_utc
from tests.support.cloud import manifest_of, wait_manifest
from tests.support.helpers import (
    Azurite,
    RunningService,
    parked_files,
    session_view,
    wait_for,
    write_file,
)
from tests.support.webhook_receiver import WebhookReceiver


@dataclass
class Share:
    """The test's view of a service and its share, and the FIFOs planted in it."""

    settings: Settings
    azurite: Azurite
    receiver: WebhookReceiver
    fifos: list[Path]

    @property
    def processing(self) -> Path:
        return self.settings.nfs_processing_root

    def fifo(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        self.fifos.append(path)


@pytest.fixture
def share(settings_factory: Any, azurite: Azurite) -> Iterator[Share]:
    receiver = WebhookReceiver().start()
    settings = settings_factory(nfs_timeout_s=2.0, webhook_url=f"{receiver.url}/hook")
    planted = Share(settings, azurite, receiver, [])
    yield planted
    receiver.stop()
    for fifo in planted.fifos:  # a reader blocked on one (the bug) may go
        try:
            os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))
        except OSError:
            pass


def _end_a_session(running: RunningService, share: Share, name: str) -> str:
    date = running.post("/v1/watch/start", json={"session_name": name}).json()["date_prefix"]
    write_file(share.settings.nfs_incoming_dir / name / "rec.bin", b"recorded")
    wait_for(lambda: session_view(running, name)["uploaded"] == 1, what="rec.bin uploaded")
    running.post("/v1/watch/stop")
    return date


def _sessions_json(share: Share) -> Callable[[RunningService], None]:
    share.fifo(share.processing / "sessions.json")

    def check(running: RunningService) -> None:
        status = running.get("/v1/status").json()
        assert "FIFO" in (status["state_error"] or "")

    return check


def _bandwidth_json(share: Share) -> Callable[[RunningService], None]:
    share.fifo(share.processing / "bandwidth.json")

    def check(running: RunningService) -> None:
        assert running.get("/v1/bandwidth").json()["source"] == "none"

    return check


def _report_job(share: Share) -> Callable[[RunningService], None]:
    share.fifo(share.processing / "_reports" / "1b4e28ba-2fa1-51d2-883f-0016d3cca427.json")

    def check(running: RunningService) -> None:
        date = _end_a_session(running, share, "after")
        container = share.azurite.container(share.settings.azure_container)
        assert wait_manifest(container, date, "after")["complete"] is True

    return check


def _outbox_job(share: Share) -> Callable[[RunningService], None]:
    share.fifo(share.processing / "_outbox" / "1b4e28ba-2fa1-51d2-883f-0016d3cca427.json")

    def check(running: RunningService) -> None:
        _end_a_session(running, share, "told")
        wait_for(
            lambda: any(d.event["type"] == "session.drained" for d in share.receiver.accepted()),
            what="the session's event delivered",
        )

    return check


def _ledger(share: Share) -> Callable[[RunningService], None]:
    share.fifo(share.processing / "_ledgers" / today_utc() / "led.jsonl")

    def check(running: RunningService) -> None:
        date = _end_a_session(running, share, "led")
        container = share.azurite.container(share.settings.azure_container)
        manifest = wait_manifest(container, date, "led")
        assert [f["path"] for f in manifest["files"]] == ["rec.bin"]

    return check


def _parked_with(reason: Callable[[Share, Path], None]) -> Callable[[Share], Any]:
    """A file an earlier run parked, its reason file replaced by `reason`."""

    def plant(share: Share) -> Callable[[RunningService], None]:
        date = today_utc()
        parked = share.processing / "_failed" / date / "old" / "rec.bin"
        write_file(parked, b"parked by an earlier run")
        reason(share, share.processing / "_failed_reasons" / date / "old" / "rec.bin")

        def check(running: RunningService) -> None:
            (listed,) = parked_files(running)
            assert (listed["filename"], listed["reason"]) == ("rec.bin", "(reason not recorded)")
            assert running.post("/v1/files/retry").status_code == 200

        return check

    return plant


def _fifo_reason(share: Share, path: Path) -> None:
    share.fifo(path)


def _nested_reason(share: Share, path: Path) -> None:
    write_file(path, b'{"reason": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


@pytest.mark.adversarial
@pytest.mark.parametrize(
    "plant",
    [
        _sessions_json,
        _bandwidth_json,
        _report_job,
        _outbox_job,
        _ledger,
        _parked_with(_fifo_reason),
        _parked_with(_nested_reason),
    ],
    ids=[
        "sessions.json",
        "bandwidth.json",
        "report job",
        "outbox job",
        "ledger",
        "reason",
        "deeply nested reason",
    ],
)
def test_a_fifo_or_deep_nesting_in_any_file_read_back_never_stops_the_service(
    share: Share,
    service_factory: Callable[..., RunningService],
    plant: Callable[[Share], Callable[[RunningService], None]],
) -> None:
    """A FIFO among the files the service reads back blocked a thread for ever: with
    `sessions.json` the service never became ready; with a reason file every listing and
    manifest leaked a thread until the NFS guard failed every call. A reason file of deeply
    nested JSON raised RecursionError: `GET /v1/files/failed` and retry answered 500, and no
    manifest was written again.

    Issue 21, finding 6.
    """
    check = plant(share)
    running = service_factory(share.settings)  # ready, within the usual 30 s
    check(running)
    assert running.get("/healthz").status_code == 200
    assert running.service.nfs.abandoned == 0
    for fifo in share.fifos:
        assert not fifo.exists() or not fifo.is_fifo()


def test_a_report_is_written_though_a_job_beside_it_is_not_ours(
    share: Share, service_factory: Callable[..., RunningService]
) -> None:
    """A job file that is not one of ours (damaged) is set aside with its path kept."""
    job = share.processing / "_reports" / "not-a-job.json"
    write_file(job, json.dumps({"id": "other", "created": 1.0}).encode())
    running = service_factory(share.settings)
    date = _end_a_session(running, share, "beside")
    container = share.azurite.container(share.settings.azure_container)
    wait_for(lambda: manifest_of(container, date, "beside"), what="its manifest")
    aside = share.processing / "_set_aside" / "_reports"
    assert [p.name.split(".unusable-")[0] for p in aside.iterdir()] == ["not-a-job.json"]
    assert not job.exists()
