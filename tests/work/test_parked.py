"""A file that cannot succeed by retrying is parked with its reason, never over another parked
file, and a retry puts each back once."""

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.errors import PermanentError
from nfs_watcher_uploader.nfs.copying import Staged
from tests.support.cloud import blobs_of
from tests.support.helpers import (
    Azurite,
    HeldCopy,
    RunningService,
    blob_bytes,
    parked_files,
    session_view,
    until,
    wait_for,
    write_file,
)


def _idle(running: RunningService) -> bool:
    status = running.get("/v1/status").json()
    return status["queue_depth"] == status["in_flight"] == status["retrying"] == 0


@pytest.mark.adversarial
def test_a_second_park_of_the_same_name_keeps_the_first(
    service_factory: Any, settings_factory: Any
) -> None:
    """Finding adversary-7 (first adversarial review, issue 10)."""
    settings = settings_factory()
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "park"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "park"
    write_file(incoming / "bad.", b"first")
    wait_for(lambda: len(parked_files(running)) == 1)
    write_file(incoming / "bad.", b"second")
    wait_for(lambda: len(parked_files(running)) == 2)
    parked = sorted(parked_files(running), key=lambda f: f["parked_as"])
    assert [p["filename"] for p in parked] == ["bad.", "bad."]
    folder = settings.nfs_processing_root / "_failed" / date / "park"
    kept = {(folder / p["parked_as"]).read_bytes() for p in parked}
    assert kept == {b"first", b"second"}
    assert all(p["reason"].startswith("blob names must not end") for p in parked)


@pytest.mark.adversarial
def test_concurrent_retries_upload_and_count_a_file_once(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """Finding adversary-8 (first adversarial review, issue 10)."""
    names = {f"x{i}.bin" for i in range(10)}
    refuse = set(names)

    def refuse_once(staged: Path, copied: Staged) -> None:
        if staged.name in refuse:
            refuse.discard(staged.name)
            raise PermanentError("injected: refused once")

    settings = settings_factory()
    running = service_factory(settings, on_staged=refuse_once)
    date = running.post("/v1/watch/start", json={"session_name": "twice"}).json()["date_prefix"]
    data = {name: os.urandom(5000) for name in names}
    for name in names:
        write_file(settings.nfs_incoming_dir / "twice" / name, data[name])
    wait_for(lambda: len(parked_files(running)) == len(names))
    together = threading.Barrier(8)

    def retry(_: int) -> int:
        with httpx.Client(base_url=running.base_url, timeout=30) as c:
            together.wait()
            return c.post("/v1/files/retry").json()["requeued"]

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(retry, range(8))) == len(names)
    container = azurite.container(settings.azure_container)
    wait_for(lambda: all(blob_bytes(container, f"{date}/twice/{n}") == d for n, d in data.items()))
    wait_for(lambda: _idle(running), what="nothing queued, in flight or retrying")
    view = session_view(running, "twice")
    assert view["uploaded"] == len(names)
    assert view["bytes_uploaded"] == sum(map(len, data.values()))
    assert running.service.pipeline.stats.uploaded == len(names)


@pytest.mark.adversarial
def test_a_retry_while_a_same_named_file_is_queued_uploads_both(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """x.bin (version one) is parked. A new x.bin (version two) is queued, not yet claimed.
    POST /v1/files/retry moves version one back into `.processing` and counts it as requeued,
    but `Pipeline.put` refuses to queue it (x.bin is already pending). Version two's claim then
    finds `.processing/x.bin` taken and is held; no one works on version one. Both stay for as
    long as the session is active, and after a stop it times out instead of draining.

    Should: both versions end up in storage (x.bin and x~2.bin).

    Finding adversary-review-C (second adversarial review, issue 10).
    """
    refuse = {"x.bin"}

    def refuse_once(staged: Path, copied: Staged) -> None:
        if staged.name in refuse:
            refuse.discard(staged.name)
            raise PermanentError("injected: refused once")

    hold = HeldCopy("hold.bin")
    settings = settings_factory(worker_concurrency=1)
    running = service_factory(settings, on_staged=refuse_once, copy=hold)
    date = running.post("/v1/watch/start", json={"session_name": "rt"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "rt"
    write_file(incoming / "x.bin", b"version one")
    wait_for(lambda: len(parked_files(running)) == 1, what="x.bin parked")
    write_file(incoming / "hold.bin", b"hold")
    assert hold.started.wait(20)
    write_file(incoming / "x.bin", b"version two")
    wait_for(lambda: session_view(running, "rt")["queued"] == 1, what="version two queued")
    assert running.post("/v1/files/retry").json()["requeued"] == 1
    hold.release.set()
    container = azurite.container(settings.azure_container)
    wanted = {b"version one", b"version two"}
    proc = settings.nfs_processing_root
    until(
        lambda: set(blobs_of(container, f"{date}/rt/x").values()) == wanted,
        15,
        lambda: (
            f"blobs {sorted(blobs_of(container, f'{date}/rt/'))}; held="
            f"{session_view(running, 'rt')['held']}, nothing working on "
            f"{sorted(str(p.relative_to(proc)) for p in proc.rglob('x.bin'))}"
        ),
    )


@pytest.mark.adversarial
def test_a_second_park_of_a_name_at_name_max_is_parked_too(
    service_factory: Any, settings_factory: Any
) -> None:
    """Two files of one 255-byte name (NAME_MAX) that Azure refuses (it ends in '.'). The first
    is parked under its name; the second should be parked as `name~2`, which is 257 bytes:
    ENAMETOOLONG, so `_park` fails and the file goes back to retrying, for ever (each attempt
    stages it again), never listed in /v1/files/failed.

    Should: both are parked and listed (under a name that fits: shortened, or in a folder).

    Finding adversary-review-H (second adversarial review, issue 10).
    """
    settings = settings_factory()
    running = service_factory(settings)
    running.post("/v1/watch/start", json={"session_name": "long"})
    name = "A" * 254 + "."
    assert len(name.encode()) == 255
    write_file(settings.nfs_incoming_dir / "long" / name, b"first")
    wait_for(lambda: len(parked_files(running)) == 1, what="the first parked")
    write_file(settings.nfs_incoming_dir / "long" / name, b"second")
    until(
        lambda: len(parked_files(running)) == 2,
        10,
        lambda: (
            f"parked {len(parked_files(running))}; the second: retrying="
            f"{session_view(running, 'long')['retrying']} (ENAMETOOLONG parking it as ...A~2.)"
        ),
    )


@pytest.mark.slow
def test_permanent_errors_park_and_retry_on_request(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    refuse = {"refused-once.bin"}

    def refuse_once(staged: Path, copied: Staged) -> None:
        if staged.name in refuse:
            refuse.discard(staged.name)
            raise PermanentError("injected: storage refused this file")

    settings = settings_factory()
    running = service_factory(settings, on_staged=refuse_once)
    date = running.post("/v1/watch/start", json={"session_name": "perm"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "perm"
    write_file(incoming / "refused-once.bin", b"good bytes")
    write_file(incoming / "bad-name.", b"a name Azure refuses")
    write_file(incoming / "fine.bin", b"fine")

    def two_parked() -> list[dict[str, str]] | None:
        files = running.get("/v1/files/failed").json()["files"]
        return files if len(files) == 2 else None

    failed = wait_for(two_parked, timeout=20)
    assert failed is not None
    reasons = {f["filename"]: f["reason"] for f in failed}
    assert reasons["bad-name."] == "blob names must not end with '.', '/' or '\\'"
    assert reasons["refused-once.bin"] == "injected: storage refused this file"
    parked = settings.nfs_processing_root / "_failed" / date / "perm"
    assert (parked / "bad-name.").read_bytes() == b"a name Azure refuses"
    # fine.bin goes up beside them, not necessarily before both are parked.
    view = wait_for(
        lambda: (v := running.get("/v1/sessions/perm").json())["uploaded"] == 1 and v,
        timeout=20,
        what="fine.bin uploaded",
    )
    assert view["failed"] == 2
    status = running.get("/v1/status").json()
    assert status["processed_err"] == 2 and status["failed"] == 2
    # Stop: the session cannot drain while files are parked.
    running.post("/v1/watch/stop")
    assert running.post("/v1/files/retry", json={"session_name": "perm"}).json() == {"requeued": 2}
    container = azurite.container(settings.azure_container)
    assert wait_for(lambda: blob_bytes(container, f"{date}/perm/refused-once.bin")) == b"good bytes"
    wait_for(lambda: len(running.get("/v1/files/failed").json()["files"]) == 1, timeout=20)
    assert (parked / "bad-name.").exists()  # parked again, never deleted
    assert running.get("/v1/sessions/perm").json()["drained"] is False


def test_one_parked_file_is_retried_by_its_name_and_bad_names_are_refused(
    service_factory: Any, settings_factory: Any
) -> None:
    """POST /v1/files/retry with `parked_as` requeues that file only (the status page's Retry
    button); `parked_as` needs `session_name`, and a name with `..` is 422, changing nothing."""
    settings: Settings = settings_factory()
    running = service_factory(settings)
    running.post("/v1/watch/start", json={"session_name": "one"})
    for name in ("a.", "b."):
        write_file(settings.nfs_incoming_dir / "one" / name, b"x")
    wait_for(lambda: session_view(running, "one")["failed"] == 2, what="both parked")
    bad = [
        ({"parked_as": "a."}, "parked_as needs session_name"),
        ({"session_name": "one", "parked_as": "../a."}, "must not hold"),
        ({"session_name": "one", "parked_as": ""}, "1 to 1024 characters"),
    ]
    for body, why in bad:
        answer = running.post("/v1/files/retry", json=body)
        assert answer.status_code == 422 and why in answer.text, answer.text
    assert session_view(running, "one")["failed"] == 2
    answer = running.post("/v1/files/retry", json={"session_name": "one", "parked_as": "a."})
    assert answer.json() == {"requeued": 1}
    # a. went through the queue again and was parked again; b. stayed where it was.
    wait_for(lambda: running.get("/v1/status").json()["processed_err"] == 3, what="a. again")
    assert sorted(p["parked_as"] for p in parked_files(running)) == ["a.", "b."]
    assert running.get("/v1/status").json()["processed_err"] == 3


@pytest.mark.adversarial
def test_a_reason_naming_a_path_outside_its_session_is_set_aside_never_followed(
    service_factory: Any, settings_factory: Any, azurite: Azurite, tmp_path: Path
) -> None:
    """A parked file's reason file carries its original path, and a retry put the file back
    there, unchecked: a reason whose `rel` holds `..` (anyone who can write incoming can write
    `.processing` on an all_squash export) moved the parked file anywhere on the filesystem
    and uploaded it outside `<date>/<session>/`.

    Issue 21, finding 2.
    """
    settings = settings_factory()
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "rsn"}).json()["date_prefix"]
    write_file(settings.nfs_incoming_dir / "rsn" / "bad.", b"parked for its name")
    wait_for(lambda: len(parked_files(running)) == 1, what="bad. parked")
    reason = settings.nfs_processing_root / "_failed_reasons" / date / "rsn" / "bad."
    record = json.loads(reason.read_bytes())
    reason.write_bytes(json.dumps({**record, "rel": "../../../escape/x.bin"}).encode())
    running.stop()  # the next run has not read the reason yet
    running = service_factory(settings)
    assert running.post("/v1/files/retry").json()["requeued"] == 1
    until(
        lambda: [p["filename"] for p in parked_files(running)] == ["bad."] and _idle(running),
        15,
        lambda: f"parked {parked_files(running)}; escaped: {(tmp_path / 'escape').exists()}",
    )
    assert not (tmp_path / "escape").exists()
    parked = settings.nfs_processing_root / "_failed" / date / "rsn" / "bad."
    assert parked.read_bytes() == b"parked for its name"
    container = azurite.container(settings.azure_container)
    assert all(b.name.startswith(f"{date}/rsn/") for b in container.list_blobs())
    aside = settings.nfs_processing_root / "_set_aside" / "_failed_reasons" / date / "rsn"
    assert [p.name.split(".unusable-")[0] for p in aside.iterdir()] == ["bad."]


@pytest.mark.adversarial
def test_a_link_in_place_of_the_parked_tree_leads_nowhere(
    service_factory: Any, settings_factory: Any, tmp_path: Path
) -> None:
    """`.processing/_failed` replaced by a link to a folder shaped like it: a listing would read
    what it points at, and a retry would move those files into `.processing`, upload them, and
    GC would delete them.

    Found attacking issue 21's change.
    """
    settings = settings_factory()
    elsewhere = tmp_path / "elsewhere"
    write_file(elsewhere / "20261201" / "s" / "precious.bin", b"not the service's")
    settings.nfs_processing_root.mkdir(parents=True)
    (settings.nfs_processing_root / "_failed").symlink_to(elsewhere)
    running = service_factory(settings)
    assert parked_files(running) == []
    assert running.post("/v1/files/retry").json()["requeued"] == 0
    assert (elsewhere / "20261201" / "s" / "precious.bin").read_bytes() == b"not the service's"


@pytest.mark.adversarial
def test_a_reason_that_cannot_be_set_aside_is_left_and_the_listing_answers(
    service_factory: Any, settings_factory: Any
) -> None:
    """An unusable reason file is set aside; when it cannot be (a file where `_set_aside`
    should be), the listing still answers: the reason stays, refused again at its next read.

    Found attacking issue 21's change.
    """
    settings = settings_factory()
    proc = settings.nfs_processing_root
    write_file(proc / "_failed" / "20261201" / "s" / "rec.bin", b"parked earlier")
    reasons = proc / "_failed_reasons" / "20261201" / "s"
    reasons.mkdir(parents=True)
    os.mkfifo(reasons / "rec.bin")
    write_file(proc / "_set_aside", b"a file, not a folder")
    running = service_factory(settings)
    (listed,) = parked_files(running)
    assert listed["reason"] == "(reason not recorded)"
    assert (reasons / "rec.bin").is_fifo()


@pytest.mark.adversarial
def test_a_retry_of_a_listed_name_that_could_be_two_parked_files_retries_neither(
    service_factory: Any, settings_factory: Any
) -> None:
    """Review of issues 22/23, finding 3: a retry names one file as listed (ESC shown as
    `\\x1b`); when that could be two parked files (one with ESC, one with `\\x1b` written out),
    it is refused (409, as a dismissal is) and both stay parked, instead of moving back a file
    the operator did not name. The exact name of a file that prints as itself still works."""
    running = service_factory(settings_factory())
    running.post("/v1/watch/start", json={"session_name": "twins"})
    incoming = os.fsencode(running.settings.nfs_incoming_dir / "twins")
    for name in (b"twin-\x1b.", b"twin-\\x1b.", b"alone."):
        with open(os.path.join(incoming, name), "wb") as f:
            f.write(b"x")
    view = lambda: running.get("/v1/sessions/twins").json()  # noqa: E731
    wait_for(lambda: view()["failed"] == 3, what="all three parked")
    body = {"session_name": "twins", "parked_as": "twin-\\x1b."}
    answer = running.client.post("/v1/files/retry", json=body)
    assert answer.status_code == 409 and "may name 2 parked files" in answer.text, answer.text
    failed = os.fsencode(running.settings.nfs_processing_root / "_failed")
    left = sorted(n for _, _, files in os.walk(failed) for n in files if not n.endswith(b".json"))
    assert [n for n in left if n.startswith(b"twin")] == [b"twin-\x1b.", b"twin-\\x1b."], left
    alone = running.post("/v1/files/retry", json={"session_name": "twins", "parked_as": "alone."})
    assert alone.json() == {"requeued": 1}
