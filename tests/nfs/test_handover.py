"""Handing a dead replica's tree over to its adopter: every work file to the same place, never
over a file, never through a link; jobs once; ledgers stay."""

import json
import os
from pathlib import Path

from nfs_watcher_uploader.nfs.handover import hand_over, work_left

DEAD = "0f0e0d0c-0b0a-4908-8706-050403020100"
ME = "11111111-2222-4333-8444-555555555555"


def _file(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _trees(root: Path) -> tuple[Path, Path]:
    return root / "owners" / DEAD, root / "owners" / ME


def test_every_work_file_goes_to_the_same_place_in_the_adopters_tree(tmp_path: Path) -> None:
    dead, me = _trees(tmp_path)
    _file(dead / "20261204" / "s" / "cam1" / "a.bin", b"claimed")
    _file(dead / "_completed" / "20261204" / "s" / "b.bin", b"committed")
    _file(dead / "_failed" / "20261204" / "s" / "c.bin", b"parked")
    reason = json.dumps({"reason": "why", "rel": "c.bin"}).encode()
    _file(dead / "_failed_reasons" / "20261204" / "s" / "c.bin", reason)
    _file(dead / "_reports" / "abc-1.json", b"{}")
    _file(dead / "_outbox" / "def-2.json", b"{}")
    ledger = _file(dead / "_ledgers" / "20261204" / "s.jsonl", b"{}\n")

    handed = hand_over(tmp_path, ["owners", DEAD], me, lambda: True)

    assert [(i.session_name, i.date_prefix, i.rel) for i in handed.claimed] == [
        ("s", "20261204", "cam1/a.bin")
    ]
    assert [i.rel for i in handed.completed] == ["b.bin"]
    assert [i.rel for i in handed.parked] == ["c.bin"]
    assert handed.jobs == 2 and handed.left == 0
    assert (me / "20261204" / "s" / "cam1" / "a.bin").read_bytes() == b"claimed"
    assert (me / "_completed" / "20261204" / "s" / "b.bin").read_bytes() == b"committed"
    assert (me / "_failed" / "20261204" / "s" / "c.bin").read_bytes() == b"parked"
    assert (me / "_failed_reasons" / "20261204" / "s" / "c.bin").read_bytes() == reason
    assert (me / "_reports" / "abc-1.json").exists() and (me / "_outbox" / "def-2.json").exists()
    assert ledger.exists()  # read where it lies, for the manifest
    assert work_left(tmp_path, ["owners", DEAD]) == 0


def test_a_place_the_adopter_holds_is_never_replaced_and_the_file_waits(tmp_path: Path) -> None:
    dead, me = _trees(tmp_path)
    theirs = _file(dead / "20261204" / "s" / "a.bin", b"theirs")
    mine = _file(me / "20261204" / "s" / "a.bin", b"mine")
    handed = hand_over(tmp_path, ["owners", DEAD], me, lambda: True)
    assert handed.claimed == [] and handed.left == 1
    assert theirs.read_bytes() == b"theirs" and mine.read_bytes() == b"mine"
    assert work_left(tmp_path, ["owners", DEAD]) == 1
    mine.unlink()  # the adopter's own file of that name is done
    assert [i.rel for i in hand_over(tmp_path, ["owners", DEAD], me, lambda: True).claimed] == [
        "a.bin"
    ]


def test_a_parked_name_the_adopter_has_takes_the_next_free_name_with_its_reason(
    tmp_path: Path,
) -> None:
    dead, me = _trees(tmp_path)
    _file(me / "_failed" / "20261204" / "s" / "c.bin", b"mine")
    _file(dead / "_failed" / "20261204" / "s" / "c.bin", b"theirs")
    _file(dead / "_failed_reasons" / "20261204" / "s" / "c.bin", b'{"rel": "c.bin"}')
    handed = hand_over(tmp_path, ["owners", DEAD], me, lambda: True)
    assert [i.rel for i in handed.parked] == ["c~2.bin"]
    assert (me / "_failed" / "20261204" / "s" / "c~2.bin").read_bytes() == b"theirs"
    assert (me / "_failed_reasons" / "20261204" / "s" / "c~2.bin").read_bytes() == (
        b'{"rel": "c.bin"}'
    )
    assert (me / "_failed" / "20261204" / "s" / "c.bin").read_bytes() == b"mine"
    assert not (dead / "_failed_reasons" / "20261204" / "s" / "c.bin").exists()


def test_links_planted_in_a_dead_members_tree_are_never_followed_or_moved(
    tmp_path: Path,
) -> None:
    dead, me = _trees(tmp_path)
    secret = _file(tmp_path / "elsewhere" / "secret.bin", b"not ours")
    _file(dead / "20261204" / "s" / "ok.bin")
    os.symlink(secret, dead / "20261204" / "s" / "link.bin")
    os.symlink(tmp_path / "elsewhere", dead / "20261204" / "linked-session")
    other = tmp_path / "owners" / "22222222-2222-4222-8222-222222222222"
    os.symlink(tmp_path / "elsewhere", other)
    handed = hand_over(tmp_path, ["owners", DEAD], me, lambda: True)
    assert [i.rel for i in handed.claimed] == ["ok.bin"]
    assert hand_over(tmp_path, ["owners", other.name], me, lambda: True).moved == 0
    assert secret.read_bytes() == b"not ours"
    assert (dead / "20261204" / "s" / "link.bin").is_symlink()
    assert not (me / "20261204" / "s" / "link.bin").exists()


def test_a_job_the_adopter_already_has_is_kept_once(tmp_path: Path) -> None:
    dead, me = _trees(tmp_path)
    _file(dead / "_reports" / "same-1.json", b'{"theirs": 1}')
    _file(me / "_reports" / "same-1.json", b'{"mine": 1}')
    handed = hand_over(tmp_path, ["owners", DEAD], me, lambda: True)
    assert handed.jobs == 0 and handed.left == 0
    assert not (dead / "_reports" / "same-1.json").exists()
    assert (me / "_reports" / "same-1.json").read_bytes() == b'{"mine": 1}'


def test_an_adopter_that_is_no_longer_valid_stops_before_the_next_rename(
    tmp_path: Path,
) -> None:
    dead, me = _trees(tmp_path)
    for name in ("a", "b", "c"):
        _file(dead / "20261204" / "s" / f"{name}.bin")
    answers = iter([True, False])
    handed = hand_over(tmp_path, ["owners", DEAD], me, lambda: next(answers, False))
    assert handed.stopped and len(handed.claimed) == 1
    assert work_left(tmp_path, ["owners", DEAD]) == 2


def test_a_single_replicas_trees_at_the_root_are_handed_over_but_not_the_owners(
    tmp_path: Path,
) -> None:
    _, me = _trees(tmp_path)
    _file(tmp_path / "20261204" / "s" / "legacy.bin")
    _file(tmp_path / "_completed" / "20261204" / "s" / "done.bin")
    _file(tmp_path / "sessions.json", b"{}")
    handed = hand_over(tmp_path, [], me, lambda: True)
    assert [i.rel for i in handed.claimed] == ["legacy.bin"]
    assert [i.rel for i in handed.completed] == ["done.bin"]
    assert (tmp_path / "sessions.json").exists()
    assert work_left(tmp_path, []) == 0
