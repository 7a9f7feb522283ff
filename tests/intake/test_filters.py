"""Only the files users mean go up: excluded files stay in incoming, are counted, and never keep a
session from draining."""

import json
from typing import Any

import pytest

from nfs_watcher_uploader.intake.filters import FileFilter
from tests.support.helpers import Azurite, blob_bytes, session_view, wait_for, write_file


def _wanted(f: FileFilter, rel: str) -> bool:
    return not any(f.folder_excluded(p) for p in rel.split("/")[:-1]) and f.wanted(
        rel, rel.rsplit("/", 1)[-1]
    )


def test_the_extension_filter_leaves_other_files_in_incoming(
    service_factory, settings_factory, azurite: Azurite
) -> None:
    settings = settings_factory(file_extensions=".bin, MP4")
    assert settings.file_extensions == frozenset({".bin", ".mp4"})
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "ext"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "ext"
    write_file(incoming / "a.bin", b"a")
    write_file(incoming / "b.MP4", b"b")
    write_file(incoming / "c.txt", b"c")
    container = azurite.container(settings.azure_container)
    wait_for(
        lambda: (
            blob_bytes(container, f"{date}/ext/a.bin")
            and blob_bytes(container, f"{date}/ext/b.MP4")
        ),
        timeout=30,
    )
    assert (incoming / "c.txt").exists()
    assert blob_bytes(container, f"{date}/ext/c.txt") is None


@pytest.mark.parametrize(
    ("rel", "wanted"),
    [
        ("rec.bin", True),
        ("cam1/rec.bin", True),
        ("rec~2.bin", True),  # a name conflict's new name is not an editor backup
        ("cam~1/rec.bin", True),
        ("rec.bin~", False),
        (".rec.bin.Xy12Ab", False),  # rsync's temporary file
        ("cam1/.hidden", False),
        (".cache/rec.bin", False),  # a dot folder and all below it
        ("cam1/.cache/deep/rec.bin", False),
        ("rec.tmp", False),
        ("rec.part", False),
        ("rec.partial", False),
        ("rec.swp", False),
        ("rec.crdownload", False),
        ("rec.TMP", True),  # patterns are case-sensitive, like the file system
    ],
)
def test_the_default_excludes_leave_out_what_tools_write_while_they_work(
    rel: str, wanted: bool
) -> None:
    assert _wanted(FileFilter(), rel) is wanted


def test_exclude_wins_over_include_and_extensions() -> None:
    f = FileFilter(include=["cam1/*", "*.mp4"], exclude=["*.log", "cam1/skip/*"])
    assert _wanted(f, "cam1/a.bin") and _wanted(f, "cam1/x/y.bin")
    assert _wanted(f, "b.mp4") and _wanted(f, "cam2/b.mp4")
    assert not _wanted(f, "cam2/a.bin")  # not included
    assert not _wanted(f, "cam1/a.log")  # exclude wins over include
    assert not _wanted(f, "cam1/skip/a.bin")
    assert not _wanted(f, "cam1/a.tmp")  # the defaults still apply
    shorthand = FileFilter(extensions=frozenset({".bin"}))
    assert _wanted(shorthand, "a.BIN") and not _wanted(shorthand, "a.txt")
    nothing_left_out = FileFilter(defaults=False)
    assert _wanted(nothing_left_out, ".cache/a.tmp")


def test_excluded_files_stay_in_incoming_are_counted_and_do_not_block_drained(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    settings = settings_factory(exclude=("*.log",))
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "mean"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "mean"
    wanted = ["a.bin", "cam1/b.bin", "a~2.bin"]
    excluded = [
        ".hidden",
        "x.tmp",
        "y.part",
        "z.partial",
        "w~",
        "c.swp",
        "d.crdownload",
        ".cache/e.bin",
        "cam1/f.tmp",
        "notes.log",
    ]
    for rel in wanted + excluded:
        write_file(incoming / rel, rel.encode())
    wait_for(lambda: session_view(running, "mean")["uploaded"] == len(wanted))
    running.post("/v1/watch/stop")
    view = wait_for(lambda: (v := session_view(running, "mean"))["drained"] and v, timeout=20)
    assert view["excluded"] == len(excluded)
    assert any(f"{len(excluded)} excluded files stay in incoming" in n for n in view["notices"])
    container = azurite.container(settings.azure_container)
    assert sorted(b.name for b in container.list_blobs(name_starts_with=f"{date}/mean/")) == sorted(
        f"{date}/mean/{rel}" for rel in wanted
    )
    # The session's manifest names each excluded file, and why it stayed.
    manifest_blob = container.get_blob_client(f"{date}/mean.manifest.json")
    wait_for(manifest_blob.exists, timeout=20, what="the manifest")
    manifest = json.loads(manifest_blob.download_blob().readall())
    reasons = {e["path"]: e["reason"] for e in manifest["excluded"]}
    assert set(excluded) <= reasons.keys()
    assert all("APP_INCLUDE / APP_EXCLUDE" in reasons[rel] for rel in excluded)
    assert manifest["totals"]["excluded"] == len(manifest["excluded"])
    for rel in excluded:  # never claimed, never deleted
        assert (incoming / rel).read_bytes() == rel.encode()


def test_only_included_files_go_up(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    settings = settings_factory(include=("cam1/*", "*.mp4"))
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "inc"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "inc"
    for rel in ("cam1/a.bin", "cam2/b.mp4", "cam2/c.bin", "d.txt"):
        write_file(incoming / rel, rel.encode())
    view = wait_for(
        lambda: (v := session_view(running, "inc"))["uploaded"] == 2 and v["excluded"] == 2 and v
    )
    assert view["waiting"] == 0
    container = azurite.container(settings.azure_container)
    assert sorted(b.name for b in container.list_blobs()) == [
        f"{date}/inc/cam1/a.bin",
        f"{date}/inc/cam2/b.mp4",
    ]
