"""Pruning removes empty folders only, and never those of a live session."""

from pathlib import Path

from nfs_watcher_uploader.nfs import trees


def test_pruning_keeps_the_folders_of_live_sessions(tmp_path: Path) -> None:
    for s in ("live", "idle", "busy"):
        (tmp_path / "20260101" / s).mkdir(parents=True)
    (tmp_path / "20260101" / "busy" / "file").write_bytes(b"x")
    trees.prune_empty_dirs(tmp_path, lambda d, s: s == "live")
    assert sorted(p.name for p in (tmp_path / "20260101").iterdir()) == ["busy", "live"]
