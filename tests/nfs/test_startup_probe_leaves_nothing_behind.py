"""The start-up probe (a file renamed from incoming into processing and back) leaves nothing
behind: its file is gone after a start, probe files a crashed run left are removed at the next
start, one that may be another process's (younger than PROBE_STALE_S) is left alone, and a
processing root it had to create is removed again."""

import os
import time
from pathlib import Path
from typing import Any

from nfs_watcher_uploader.constants import PROBE_PREFIX, PROBE_STALE_S
from nfs_watcher_uploader.nfs.probe import probe_name, run_probe
from tests.support.helpers import write_file


def _probes(*folders: Path) -> list[Path]:
    return [
        p for f in folders if f.exists() for p in f.iterdir() if p.name.startswith(PROBE_PREFIX)
    ]


def test_a_start_removes_a_crashed_runs_probes_and_leaves_a_live_one(
    service_factory: Any, settings_factory: Any
) -> None:
    settings = settings_factory()
    incoming, processing = settings.nfs_incoming_dir, settings.nfs_processing_root
    old = time.time() - PROBE_STALE_S - 60
    crashed = [write_file(incoming / probe_name(), b""), write_file(processing / probe_name(), b"")]
    for path in crashed:
        os.utime(path, (old, old))
    live = write_file(processing / f"{PROBE_PREFIX}other-host-1-abc", b"")
    running = service_factory(settings)
    assert running.get("/readyz").status_code == 200
    assert _probes(incoming, processing) == [live]


def test_the_probe_leaves_the_share_as_it_found_it(tmp_path: Path) -> None:
    incoming = tmp_path / "share" / "incoming"
    incoming.mkdir(parents=True)
    processing = tmp_path / "share" / ".state" / ".processing"
    run_probe(incoming, processing)
    assert sorted(p.name for p in (tmp_path / "share").iterdir()) == ["incoming"]
    assert not any(incoming.iterdir())


def test_probe_names_are_unique_dot_names() -> None:
    names = {probe_name() for _ in range(100)}
    assert len(names) == 100 and all(n.startswith(".") and "/" not in n for n in names)
