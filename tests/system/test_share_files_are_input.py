"""Whatever stands in place of a file the service reads back from the share (its own state, the
bandwidth override, report and outbox jobs, ledgers, parked files' reasons) is input: a FIFO
never blocks it, deep nesting never raises, and the service goes on without the file, set
aside with a line naming it."""

import functools
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


def _job(job_id: str, session: str, date: str, **fields: Any) -> bytes:
    """A report job as `Reports.ended` writes one, with `fields` changed."""
    job = {
        "id": job_id,
        "created": 1.0,
        "session": session,
        "date_prefix": date,
        "state": "drained",
        "started_at": 1.0,
        "stopped_at": 2.0,
        "finished_at": 3.0,
        "excluded": [],
        "not_uploaded": 0,
        "generation": 1,
        "event": "session.drained",
    }
    return json.dumps(job | fields).encode()


@pytest.mark.adversarial
def test_a_report_job_read_back_names_one_session_of_one_date(
    share: Share, service_factory: Callable[..., RunningService]
) -> None:
    """A report job read back was checked for its shape only: one whose session was
    `victim/rec` wrote its manifest over the blob `<date>/victim/rec.manifest.json` (a
    recording of session `victim`); one whose date held `..` had the ledger read from outside
    the ledgers' folder, and was tried again for ever.

    Issue 21 review, finding 1.
    """
    date = today_utc()
    container = share.azurite.container(share.settings.azure_container)
    container.create_container()
    container.upload_blob(f"{date}/victim/rec.manifest.json", b"a recording")
    reports = share.processing / "_reports"
    planted = {
        "inside-another": _job("inside-another", "victim/rec", date),
        "outside": _job("outside", "x", "20261204/../../..", generation=2),
    }
    for name, data in planted.items():
        write_file(reports / f"{name}.json", data)
    running = service_factory(share.settings)
    aside = share.processing / "_set_aside" / "_reports"
    wait_for(
        lambda: aside.is_dir() and len(list(aside.iterdir())) == len(planted),
        what="the planted jobs set aside",
    )
    assert sorted(p.name.split(".unusable-")[0] for p in aside.iterdir()) == sorted(
        f"{name}.json" for name in planted
    )
    assert (
        container.get_blob_client(f"{date}/victim/rec.manifest.json").download_blob().readall()
        == b"a recording"
    )
    _end_a_session(running, share, "later")
    assert wait_manifest(container, date, "later")["state"] == "drained"


def _nest(top: Path, levels: int) -> None:
    """`top/d/d/.../d/f`, `levels` folders deep (made by descriptor: no path grows too long)."""
    top.mkdir(parents=True, exist_ok=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def _unnest(top: Path) -> None:
    """Remove what `_nest` made below `top`, one level at a time (pytest's clean-up of
    `tmp_path` recurses, and would fail on it)."""
    nest, moved = top / "d", top / "d.next"
    while nest.is_dir():
        (nest / "f").unlink(missing_ok=True)
        if (nest / "d").is_dir():
            os.rename(nest / "d", moved)
            os.rmdir(nest)
            os.rename(moved, nest)
        else:
            os.rmdir(nest)


@pytest.mark.adversarial
def test_folders_nested_past_any_session_path_in_the_trees_read_back_never_stop_a_listing(
    share: Share,
    service_factory: Callable[..., RunningService],
    request: pytest.FixtureRequest,
) -> None:
    """The processing, parked and reasons trees were walked to any depth, one recursion per
    folder: 1,500 nested folders planted in them raised RecursionError, so start-up's
    recovery, `GET /v1/files/failed` and the manifest of the session they were planted in
    failed (500, or retried for ever). No file of ours is deeper than MAX_DEPTH levels below
    its session folder.

    Issue 21 review, finding 2.
    """
    date = today_utc()
    for tree in ("", "_failed", "_failed_reasons", "_completed"):
        top = share.processing / tree / date / "deep"
        _nest(top, 1500)
        request.addfinalizer(functools.partial(_unnest, top))
    write_file(share.processing / "_failed" / date / "deep" / "rec.bin", b"parked earlier")
    # Recovered (a session with a parked file, which ends when its drain times out), ready.
    running = service_factory(share.settings.model_copy(update={"drain_timeout_s": 1.0}))
    listed = parked_files(running)
    assert [f["filename"] for f in listed] == ["rec.bin"]
    container = share.azurite.container(share.settings.azure_container)
    manifest = wait_manifest(container, date, "deep")
    assert manifest["state"] == "drain_timed_out"
    assert [f["path"] for f in manifest["parked"]] == ["rec.bin"]
    assert running.get("/healthz").status_code == 200


@pytest.mark.adversarial
def test_a_link_planted_where_the_service_writes_its_own_files_never_leads_its_writes_out(
    share: Share, service_factory: Callable[..., RunningService], tmp_path: Path
) -> None:
    """Reason files and report jobs were written through their folder's path (temp file,
    then a rename over the name): a symbolic link planted as `_failed_reasons/<date>/<session>`
    or `_reports` led both out of the share, and the rename replaced a file of that name
    wherever the link pointed (here a file `rec.` beside the victim's other files).

    Issue 21 review, finding 3.
    """
    date = today_utc()
    outside, jobs_outside = tmp_path / "outside", tmp_path / "jobs-outside"
    outside.mkdir()
    jobs_outside.mkdir()
    (outside / "rec.").write_bytes(b"not the service's")
    reasons = share.processing / "_failed_reasons" / date
    reasons.mkdir(parents=True)
    os.symlink(outside, reasons / "lnk")
    os.symlink(jobs_outside, share.processing / "_reports")
    running = service_factory(share.settings.model_copy(update={"drain_timeout_s": 1.0}))
    running.post("/v1/watch/start", json={"session_name": "lnk"})
    write_file(share.settings.nfs_incoming_dir / "lnk" / "rec.", b"a name that cannot be a blob")
    wait_for(lambda: session_view(running, "lnk")["failed"] == 1, what="rec. parked")
    (listed,) = parked_files(running)
    assert listed["filename"] == "rec." and "'.'" in listed["reason"]
    running.post("/v1/watch/stop")
    container = share.azurite.container(share.settings.azure_container)
    wait_manifest(container, date, "lnk")
    assert [p.name for p in outside.iterdir()] == ["rec."]
    assert (outside / "rec.").read_bytes() == b"not the service's"
    assert list(jobs_outside.iterdir()) == []
    assert (share.processing / "_failed_reasons" / date / "lnk" / "rec.").is_file()


@pytest.mark.adversarial
def test_a_link_planted_in_the_parked_tree_never_leads_a_parked_file_out_of_it(
    share: Share, service_factory: Callable[..., RunningService], tmp_path: Path
) -> None:
    """A file was parked by a rename to its path in `_failed/`: a symbolic link planted as
    `_failed/<date>/<session>` took the recording out of the share, where no listing (they
    walk the tree by descriptor) found it, and its reason, left without its file, was
    recorded as an operator's dismissal in the manifest.

    Issue 21 review, finding 5.
    """
    date = today_utc()
    outside = tmp_path / "outside"
    outside.mkdir()
    (share.processing / "_failed" / date).mkdir(parents=True)
    os.symlink(outside, share.processing / "_failed" / date / "lnk")
    running = service_factory(share.settings.model_copy(update={"drain_timeout_s": 1.0}))
    running.post("/v1/watch/start", json={"session_name": "lnk"})
    write_file(share.settings.nfs_incoming_dir / "lnk" / "rec.", b"a name that cannot be a blob")
    wait_for(lambda: session_view(running, "lnk")["failed"] == 1, what="rec. parked")
    assert [f["filename"] for f in parked_files(running)] == ["rec."]
    running.post("/v1/watch/stop")
    container = share.azurite.container(share.settings.azure_container)
    manifest = wait_manifest(container, date, "lnk")
    assert [f["path"] for f in manifest["parked"]] == ["rec."]
    assert manifest["dismissed"] == []
    assert list(outside.iterdir()) == []
    parked = share.processing / "_failed" / date / "lnk" / "rec."
    assert parked.read_bytes() == b"a name that cannot be a blob"
