"""Renames on the share never replace a file, and an ambiguous NFS answer is judged by looking: a
claim takes only the file the scan judged complete."""

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.nfs import moves
from tests.support.helpers import (
    Azurite,
    HeldCopy,
    blob_bytes,
    make_settings,
    session_view,
    wait_for,
    write_file,
)


@pytest.mark.adversarial
def test_a_claim_never_renames_over_a_file_still_retrying(
    service_factory: Any, tmp_path: Path, own_azurite: Azurite
) -> None:
    """Finding adversary-6 (first adversarial review, issue 10)."""
    settings = make_settings(
        tmp_path, own_azurite, "retrying", drain_timeout_s=0.5, retry_max_s=0.5
    )
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "rec"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "rec"
    own_azurite.stop()
    write_file(incoming / "a.bin", b"first take")
    wait_for(lambda: session_view(running, "rec")["retrying"] == 1, what="a.bin retrying")
    running.post("/v1/watch/stop")
    wait_for(lambda: session_view(running, "rec")["state"] == "drain_timed_out", what="timed out")
    assert running.post("/v1/watch/start", json={"session_name": "rec"}).status_code == 200
    write_file(incoming / "a.bin", b"second take")
    wait_for(lambda: session_view(running, "rec")["held"] == 1, what="the new a.bin held back")
    claimed = settings.nfs_processing_root / date / "rec" / "a.bin"
    assert claimed.read_bytes() == b"first take"
    own_azurite.start()
    container = own_azurite.container("retrying")
    assert wait_for(lambda: blob_bytes(container, f"{date}/rec/a.bin"), 60) == b"first take"
    assert wait_for(lambda: blob_bytes(container, f"{date}/rec/a~2.bin"), 60) == b"second take"


@pytest.mark.adversarial
def test_a_file_replaced_after_the_scan_is_not_claimed_until_it_is_complete(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """a.bin waits in the queue (judged complete: unchanged across two scans and 1 s old). The
    recorder reuses the name: it deletes a.bin and starts a new a.bin, writing it in two parts
    with a 0.9 s pause (shorter than APP_MIN_FILE_AGE_S, as the README requires). The claim
    renames the new, 0 s old file without comparing it with the (size, mtime) the scan judged
    stable; it goes up half written, GC finds it unchanged during the pause and deletes it, and
    the second part is written into a deleted file.

    Should: a claimed file must be the one the scan saw (or at least APP_MIN_FILE_AGE_S old);
    the new a.bin is claimed only when complete and goes up whole.

    Finding adversary-review-D (second adversarial review, issue 10).
    """
    hold = HeldCopy("hold.bin")
    settings = settings_factory(worker_concurrency=1, min_file_age_s=1.0, gc_interval_s=0.2)
    running = service_factory(settings, copy=hold)
    date = running.post("/v1/watch/start", json={"session_name": "reuse"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "reuse"
    container = azurite.container(settings.azure_container)
    write_file(incoming / "hold.bin", b"hold")
    assert hold.started.wait(20)
    write_file(incoming / "a.bin", b"an old take, deleted by the recorder")
    wait_for(lambda: session_view(running, "reuse")["queued"] == 1, what="a.bin queued")
    (incoming / "a.bin").unlink()
    part1, part2 = b"new take, part one; ", b"part two"
    with open(incoming / "a.bin", "wb") as f:
        f.write(part1)
        f.flush()
        hold.release.set()
        # The writer's pause: 0.9 s, below APP_MIN_FILE_AGE_S. (It ends early once GC has
        # deleted the claimed file: what comes next is lost either way.)
        pause_end = time.monotonic() + 0.9
        completed = settings.nfs_processing_root / "_completed" / date / "reuse" / "a.bin"
        while time.monotonic() < pause_end:
            if blob_bytes(container, f"{date}/reuse/a.bin") and not completed.exists():
                break
            time.sleep(0.02)
        f.write(part2)
    proc = settings.nfs_processing_root

    def settled() -> bool:
        v = session_view(running, "reuse")
        idle = v["queued"] == v["in_flight"] == v["retrying"] == 0
        return idle and not (incoming / "a.bin").exists() and not list(proc.rglob("a.bin"))

    wait_for(settled, timeout=20, what="a.bin uploaded and collected")
    got = blob_bytes(container, f"{date}/reuse/a.bin")
    assert got == part1 + part2, f"storage has {got!r}; {part2!r} went into a deleted file"


def test_a_move_creates_a_missing_destination_folder(tmp_path: Path) -> None:
    src = tmp_path / "in" / "a"
    src.parent.mkdir()
    src.write_bytes(b"x")
    dst = tmp_path / "proc" / "20260101" / "s" / "a"
    assert moves.move(src, dst) is moves.Moved.DONE
    assert dst.read_bytes() == b"x" and not src.exists()


def test_a_move_whose_source_vanished_is_a_lost_race(tmp_path: Path) -> None:
    assert moves.move(tmp_path / "gone", tmp_path / "dst" / "gone") is moves.Moved.GONE


def test_a_move_whose_rename_already_happened_counts_as_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An NFS retransmission of a rename that succeeded answers ENOENT: the file is at dst.
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"x")
    real = os.rename

    def lost_reply(a: str | Path, b: str | Path, **kw: object) -> None:
        real(a, b)
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(os, "rename", lost_reply)
    assert moves.move(src, dst) is moves.Moved.DONE
    assert dst.read_bytes() == b"x"


def test_a_move_never_replaces_a_file_and_judges_by_inode(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    assert moves.move(src, dst) is moves.Moved.TAKEN
    assert dst.read_bytes() == b"old" and src.read_bytes() == b"new"
    # Someone else's file at dst after src vanished is not "moved".
    src.unlink()
    assert moves.move(src, dst) is moves.Moved.GONE


def test_a_move_rides_out_a_stale_handle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "a"
    src.write_bytes(b"x")
    real = os.rename
    calls: list[int] = []

    def flaky(a: str | Path, b: str | Path, **kw: object) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise OSError(errno.ESTALE, "Stale file handle")
        real(a, b)

    monkeypatch.setattr(os, "rename", flaky)
    assert moves.move(src, tmp_path / "b") is moves.Moved.DONE
    assert len(calls) == 3
