"""One file's steps: a lost claim race is skipped, a completion is counted once, and a write after
the claim goes up too."""

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.nfs import moves
from tests.support.helpers import (
    Azurite,
    blob_bytes,
    leftover_files,
    on_service_loop,
    session_view,
    until,
    wait_for,
    write_file,
)


@pytest.mark.adversarial
def test_a_write_after_the_claim_is_uploaded_too(
    service_factory: Any,
    settings_factory: Any,
    azurite: Azurite,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A writer that pauses longer than APP_MIN_FILE_AGE_S, its file still open: the first
    part goes up; the later writes are found before GC deletes the file, and the whole file
    goes up again over the same blob.

    Finding adversary-13 (first adversarial review, issue 10).
    """
    settings = settings_factory(min_file_age_s=0.3, gc_interval_s=1.5)
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "pause"}).json()["date_prefix"]
    container = azurite.container(settings.azure_container)
    blob = f"{date}/pause/rec.bin"
    first, second = os.urandom(100_000), os.urandom(50_000)
    with open(settings.nfs_incoming_dir / "pause" / "rec.bin", "wb") as f:
        f.write(first)
        f.flush()
        assert wait_for(lambda: blob_bytes(container, blob)) == first  # the pause
        f.write(second)
    assert wait_for(lambda: blob_bytes(container, blob) == first + second, timeout=20)
    view = session_view(running, "pause")
    assert view["late_writes"] == 1
    assert any("LATE WRITE" in r.getMessage() for r in caplog.records)
    metrics = running.get("/metrics").text.splitlines()
    assert any(m.startswith("files_late_writes_total") and m.endswith(" 1.0") for m in metrics)


@pytest.mark.adversarial
def test_a_late_write_while_a_reused_name_waits_for_completion_is_uploaded(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """A recorder keeps a.bin open and pauses; a.bin goes up and into `_completed/`. It then
    writes a new a.bin (a reused name: up as a~2.bin, its completion waits for GC), and writes
    to the first one again. GC finds the first changed and wants to move it back into
    `.processing`, where the second sits waiting for `_completed/` to be free: TAKEN both ways,
    for ever. The late write never reaches storage.

    Should: the whole first file (part one + part two) ends up in a.bin, the second in a~2.bin.
    (GC is run by hand here, so that the order is fixed.)

    Finding adversary-review-B (second adversarial review, issue 10).
    """
    settings = settings_factory(gc_interval_s=100_000.0, retry_max_s=0.3)
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "ring"}).json()["date_prefix"]
    container = azurite.container(settings.azure_container)
    incoming = settings.nfs_incoming_dir / "ring"
    part1, part2, other = b"first take, part one; ", b"part two", b"second take"
    with open(incoming / "a.bin", "wb") as first:
        first.write(part1)
        first.flush()
        assert wait_for(lambda: blob_bytes(container, f"{date}/ring/a.bin")) == part1
        completed = settings.nfs_processing_root / "_completed" / date / "ring" / "a.bin"
        wait_for(completed.exists, what="a.bin completed")
        write_file(incoming / "a.bin", other)
        assert wait_for(lambda: blob_bytes(container, f"{date}/ring/a~2.bin")) == other
        first.write(part2)  # the writer's pause is over
    proc = settings.nfs_processing_root
    until(
        lambda: blob_bytes(container, f"{date}/ring/a.bin") == part1 + part2,
        15,
        lambda: (
            "the late write of a.bin never reached storage; still there: "
            f"{sorted(str(p.relative_to(proc)) for p in proc.rglob('*.bin'))}, "
            f"retrying={session_view(running, 'ring')['retrying']}"
        ),
        step=lambda: on_service_loop(running, running.service.gc.sweep_once()),
    )


def test_claim_races_are_skipped_not_counted(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """A file that vanishes before its claim, and a claim that meets ESTALE, are not errors;
    the ESTALE one is offered again and uploaded."""
    stale_once = {"flaky.bin"}
    vanish = {"vanish.bin"}

    def claim(folder: Path, rel: str, dst: Path, *args: Any) -> moves.Moved:
        if rel in vanish:
            (folder / rel).unlink(missing_ok=True)  # another claimant got there first
        if rel in stale_once:
            stale_once.discard(rel)
            raise OSError(errno.ESTALE, "Stale file handle", str(folder / rel))
        return moves.claim(folder, rel, dst, *args)

    settings = settings_factory()
    running = service_factory(settings, claim=claim)
    date = running.post("/v1/watch/start", json={"session_name": "race"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "race"
    for name in ("vanish.bin", "flaky.bin", "ok.bin"):
        write_file(incoming / name, name.encode())
    container = azurite.container(settings.azure_container)
    wait_for(
        lambda: (
            blob_bytes(container, f"{date}/race/flaky.bin")
            and blob_bytes(container, f"{date}/race/ok.bin")
        ),
        timeout=20,
    )
    # Counted once marked done, a moment after the commit (its ledger line comes between).
    status = wait_for(lambda: (s := running.get("/v1/status").json())["processed_ok"] == 2 and s)
    assert status["processed_err"] == 0
    assert blob_bytes(container, f"{date}/race/vanish.bin") is None
    session = running.get("/v1/sessions/race").json()
    assert session["uploaded"] == 2 and session["failed"] == 0


def test_a_completion_that_reports_failure_after_succeeding_counts_once(
    service_factory: Any, settings_factory: Any, azurite: Azurite, tmp_path: Path
) -> None:
    """NFS can answer a rename with an error although it happened (a lost reply): the blob is
    committed, so the file must end up counted once as uploaded, never as failed or twice."""
    lied: list[str] = []

    def move(src: Path, dst: Path, expect: Any, **where: Any) -> moves.Moved:
        moved = moves.move(src, dst, expect=expect, **where)
        if "_completed" in dst.parts and src.name not in lied:
            lied.append(src.name)
            raise OSError(errno.ESTALE, "Stale file handle (after the rename happened)")
        return moved

    settings = settings_factory()
    running = service_factory(settings, move=move)
    date = running.post("/v1/watch/start", json={"session_name": "lie"}).json()["date_prefix"]
    for name in ("a.bin", "b.bin"):
        write_file(settings.nfs_incoming_dir / "lie" / name, name.encode())
    container = azurite.container(settings.azure_container)
    wait_for(lambda: running.get("/v1/sessions/lie").json()["uploaded"] == 2, timeout=20)
    assert sorted(lied) == ["a.bin", "b.bin"]
    status = running.get("/v1/status").json()
    assert status["processed_ok"] == 2 and status["processed_err"] == 0
    assert status["retries"] >= 2
    assert blob_bytes(container, f"{date}/lie/a.bin") == b"a.bin"
    wait_for(lambda: not leftover_files(tmp_path), timeout=20, what="nothing left behind")
