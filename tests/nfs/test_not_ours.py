"""What is not a regular file of ours (a symbolic link, a FIFO, a hard link, a folder swapped for a
link) is never followed, read, moved or deleted."""

import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.helpers import (
    Azurite,
    HeldCopy,
    RunningService,
    blob_bytes,
    session_view,
    until,
    wait_for,
    write_file,
)

SECRET = b"root:x:0:0:the secret a link points at\n"


def _queue_behind_a_held_copy(
    service_factory: Any, settings_factory: Any, session: str
) -> tuple[RunningService, HeldCopy, Path, str]:
    """A running service whose only worker is busy with `hold.bin` while `a.bin` is queued."""
    held = HeldCopy("hold.bin")
    settings = settings_factory(worker_concurrency=1)
    running = service_factory(settings, copy=held)
    date = running.post("/v1/watch/start", json={"session_name": session}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / session
    write_file(incoming / "hold.bin", b"hold")
    assert held.started.wait(20)
    write_file(incoming / "a.bin", b"the recording")
    wait_for(lambda: session_view(running, session)["queued"] == 1, what="a.bin queued")
    return running, held, incoming, date


@pytest.mark.adversarial
@pytest.mark.parametrize("swap", ["symlink", "fifo"])
def test_a_queued_file_swapped_for_a_link_or_fifo_is_left_alone(
    service_factory: Any, settings_factory: Any, azurite: Azurite, tmp_path: Path, swap: str
) -> None:
    """Finding adversary-1 (first adversarial review, issue 10)."""
    running, held, incoming, date = _queue_behind_a_held_copy(
        service_factory, settings_factory, "swap"
    )
    secret = write_file(tmp_path / "secret.txt", SECRET)
    (incoming / "a.bin").unlink()
    if swap == "symlink":
        (incoming / "a.bin").symlink_to(secret)
    else:
        os.mkfifo(incoming / "a.bin")
    held.release.set()
    view = wait_for(
        lambda: (v := session_view(running, "swap"))["ignored"] == 1 and v, what="ignored"
    )
    assert any("a.bin" in n and "not a regular file" in n for n in view["notices"])
    container = azurite.container(running.settings.azure_container)
    assert wait_for(lambda: blob_bytes(container, f"{date}/swap/hold.bin")) == b"hold"
    assert blob_bytes(container, f"{date}/swap/a.bin") is None
    assert os.path.lexists(incoming / "a.bin")  # left where it was, not moved, not deleted
    assert (incoming / "a.bin").is_symlink() == (swap == "symlink")
    assert secret.read_bytes() == SECRET
    assert running.get("/v1/files/failed").json()["files"] == []  # not parked
    # The worker is not blocked: the next file goes up.
    write_file(incoming / "next.bin", b"next")
    assert wait_for(lambda: blob_bytes(container, f"{date}/swap/next.bin")) == b"next"


@pytest.mark.adversarial
def test_a_claimed_file_swapped_for_a_link_is_never_read(
    service_factory: Any, settings_factory: Any, azurite: Azurite, tmp_path: Path
) -> None:
    """The swap after the claim, in .processing: the copy opens with O_NOFOLLOW.

    Finding adversary-1 (first adversarial review, issue 10).
    """
    from nfs_watcher_uploader.nfs import moves

    secret = write_file(tmp_path / "secret.txt", SECRET)

    def claim_then_swap(folder: Path, rel: str, dst: Path, *args: Any) -> moves.Moved:
        moved = moves.claim(folder, rel, dst, *args)
        if rel == "a.bin" and moved is moves.Moved.DONE:
            dst.unlink()
            dst.symlink_to(secret)
        return moved

    settings = settings_factory()
    running = service_factory(settings, claim=claim_then_swap)
    date = running.post("/v1/watch/start", json={"session_name": "late"}).json()["date_prefix"]
    write_file(settings.nfs_incoming_dir / "late" / "a.bin", b"real")
    wait_for(lambda: session_view(running, "late")["ignored"] == 1, what="ignored")
    container = azurite.container(settings.azure_container)
    assert blob_bytes(container, f"{date}/late/a.bin") is None
    back = settings.nfs_incoming_dir / "late" / "a.bin"
    assert back.is_symlink() and secret.read_bytes() == SECRET  # put back, never deleted
    assert running.get("/v1/files/failed").json()["files"] == []


@pytest.mark.adversarial
def test_a_symlinked_session_folder_is_never_followed(
    service_factory: Any, settings_factory: Any, azurite: Azurite, tmp_path: Path
) -> None:
    """Finding adversary-2 (first adversarial review, issue 10)."""
    settings = settings_factory()
    running = service_factory(settings)
    elsewhere = tmp_path / "elsewhere"
    write_file(elsewhere / "precious.bin", b"not for upload")
    settings.nfs_incoming_dir.mkdir(parents=True, exist_ok=True)
    (settings.nfs_incoming_dir / "evil").symlink_to(elsewhere)
    r = running.post("/v1/watch/start", json={"session_name": "evil"})
    assert r.status_code == 409, r.text
    assert "not a real folder" in r.json()["detail"]
    assert running.get("/v1/status").json()["active_session"] is None
    # A folder swapped for a link after the start is not followed either.
    date = running.post("/v1/watch/start", json={"session_name": "later"}).json()["date_prefix"]
    later = settings.nfs_incoming_dir / "later"
    later.rmdir()
    later.symlink_to(elsewhere)
    wait_for(
        lambda: any("not a real folder" in n for n in session_view(running, "later")["notices"])
    )
    scans = running.service.watcher.last_scan_ok or 0
    wait_for(lambda: (running.service.watcher.last_scan_ok or 0) > scans + 0.3, what="scans")
    assert (elsewhere / "precious.bin").read_bytes() == b"not for upload"
    container = azurite.container(settings.azure_container)
    assert blob_bytes(container, f"{date}/later/precious.bin") is None
    assert not list((settings.nfs_processing_root / date / "later").iterdir())


@pytest.mark.adversarial
def test_a_hard_link_in_a_session_folder_is_left_alone_never_uploaded(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """Symbolic links are refused; a hard link is just as much "not the recorder's file": a
    name in the session folder for an inode that lives elsewhere on the share (here the
    service's own `sessions.json`; it could be a parked file of another session, or anything
    the service's user can read). On NFS, link(2) needs only write access to the folder: the
    server does not check that the linker may read the file, and `fs.protected_hardlinks` is
    the recorder host's own setting. The file is claimed, read and uploaded.

    Should: a regular file with st_nlink > 1 (checked on the open descriptor) is left in
    incoming and reported like a symbolic link, never uploaded.

    Finding adversary-review-N (second adversarial review, issue 10).
    """
    settings = settings_factory()
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "hl"}).json()["date_prefix"]
    state = settings.nfs_processing_root / "sessions.json"
    os.link(state, settings.nfs_incoming_dir / "hl" / "state.bin")
    container = azurite.container(settings.azure_container)
    until(
        lambda: (
            any("state.bin" in n for n in session_view(running, "hl")["notices"])
            or blob_bytes(container, f"{date}/hl/state.bin") is not None
        ),
        10,
        lambda: "neither reported nor uploaded",
    )
    leaked = blob_bytes(container, f"{date}/hl/state.bin")
    assert leaked is None, f"uploaded a file from outside the session folder: {leaked[:60]!r}"
