"""Files go up in the order asked for (APP_UPLOAD_ORDER)."""

import os
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.nfs.copying import Staged
from tests.support.helpers import session_view, wait_for, write_file


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("oldest", ["b.bin", "c.bin", "a.bin"]),
        ("newest", ["a.bin", "c.bin", "b.bin"]),
        ("name", ["a.bin", "b.bin", "c.bin"]),
    ],
)
def test_files_go_up_in_the_upload_order_asked_for(
    service_factory: Any, settings_factory: Any, tmp_path: Path, order: str, expected: list[str]
) -> None:
    """One worker, three files with distinct mtimes, all found by the same scan."""
    staged: list[str] = []

    def record(path: Path, copied: Staged) -> None:
        staged.append(path.name)

    settings = settings_factory(worker_concurrency=1, upload_order=order)
    incoming = settings.nfs_incoming_dir / "order"
    for name, age in (("a.bin", 10), ("b.bin", 300), ("c.bin", 200)):
        path = write_file(incoming / name, name.encode())
        old = path.stat().st_mtime - age
        os.utime(path, (old, old))
    running = service_factory(settings, on_staged=record)
    running.post("/v1/watch/start", json={"session_name": "order"})
    wait_for(lambda: session_view(running, "order")["uploaded"] == 3)
    assert staged == expected
