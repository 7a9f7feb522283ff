"""Nothing grows for ever on the share: a session's ledger is removed once its manifest is in
storage, nothing of it is parked or claimed, and APP_LEDGER_RETENTION_DAYS have passed since
its last line; never before (tested with an injected clock), and nothing else is touched."""

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.cloud.retention import DAY_S, LedgerRetention
from nfs_watcher_uploader.coord.names import new_incarnation
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.nfs.runner import Nfs
from tests.support.helpers import Azurite, on_service_loop, wait_for, write_file

DATE = "20261101"


def _ledger(layout: Layout, name: str) -> Path:
    return write_file(layout.ledger(DATE, name), b'{"blob": "x"}\n')


def test_a_ledger_is_removed_only_once_its_session_is_done_and_its_time_has_passed(
    tmp_path: Path,
) -> None:
    layout = Layout(tmp_path / "incoming", tmp_path / ".processing", tmp_path / "staging")
    now = time.time()
    clock = [now]
    busy = {(DATE, "draining")}
    retention = LedgerRetention(
        layout, Nfs(10), 30, lambda d, s: (d, s) in busy, clock=lambda: clock[0]
    )
    ended = _ledger(layout, "ended")
    parked = _ledger(layout, "parked")
    write_file(layout.parked_root / DATE / "parked" / "cam" / "x.", b"parked")
    claimed = _ledger(layout, "claimed")
    write_file(layout.processing_root / DATE / "claimed" / "y.bin", b"in progress")
    draining = _ledger(layout, "draining")
    other = write_file(layout.ledger(DATE, "ended").parent / "notes.txt", b"not a ledger")
    link = layout.ledger(DATE, "link")
    link.symlink_to(other)

    clock[0] = now + 29 * DAY_S
    assert asyncio.run(retention.sweep()) == 0
    clock[0] = now + 31 * DAY_S
    assert asyncio.run(retention.sweep()) == 1
    assert not ended.exists()
    assert parked.exists() and claimed.exists() and draining.exists()
    assert other.exists() and link.is_symlink()

    # Its parked file dismissed, its claimed file done, its drain over: each goes in turn.
    (layout.parked_root / DATE / "parked" / "cam" / "x.").unlink()
    (layout.processing_root / DATE / "claimed" / "y.bin").unlink()
    busy.clear()
    assert asyncio.run(retention.sweep()) == 3
    assert not any(p.exists() for p in (parked, claimed, draining))
    assert other.exists() and link.is_symlink()  # the date folder stays: not empty
    assert repr(retention) == "LedgerRetention(keep_days=30 removed=4)"


def test_a_fresh_line_keeps_a_ledger(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "incoming", tmp_path / ".processing", tmp_path / "staging")
    ledger = _ledger(layout, "s")
    retention = LedgerRetention(layout, Nfs(10), 1, lambda d, s: False)
    assert asyncio.run(retention.sweep()) == 0  # written just now
    assert ledger.exists()


def test_the_running_service_removes_a_done_sessions_ledger_and_keeps_a_parked_ones(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    settings = settings_factory(ledger_retention_days=0, gc_interval_s=0.3, drain_timeout_s=0.5)
    now = [time.time()]
    running = service_factory(settings, clock=lambda: now[0])
    dates: dict[str, str] = {}
    for name, files in (("done", {"a.bin": b"a"}), ("stuck", {"b.bin": b"b", "bad.": b"x"})):
        answer = running.post("/v1/watch/start", json={"session_name": name}).json()
        dates[name] = answer["date_prefix"]
        for rel, data in files.items():
            write_file(settings.nfs_incoming_dir / name / rel, data)
        count = len(files)
        wait_for(
            lambda name=name, n=count: (
                (v := running.get(f"/v1/sessions/{name}").json())["uploaded"] + v["failed"] == n
            ),
            what=f"{name}'s files",
        )
        running.post("/v1/watch/stop")
    container = azurite.container(settings.azure_container)

    def manifest(name: str) -> dict[str, Any] | None:
        blob = container.get_blob_client(f"{dates[name]}/{name}.manifest.json")
        return json.loads(blob.download_blob().readall()) if blob.exists() else None

    wait_for(lambda: manifest("done") and manifest("stuck"), what="both manifests")
    ledgers = settings.nfs_processing_root / "_ledgers"
    done = ledgers / dates["done"] / "done.jsonl"
    assert on_service_loop(running, running.service.retention.sweep()) == 0  # its day runs on
    now[0] += DAY_S  # the next day: no session can be started under that date again
    wait_for(lambda: not done.exists(), what="the done session's ledger to go")
    stuck = ledgers / dates["stuck"] / "stuck.jsonl"
    assert stuck.exists()  # its parked file may still be retried: the manifest needs it whole
    assert running.service.retention is not None and running.service.retention.removed >= 1


@pytest.mark.adversarial
def test_a_session_started_again_the_same_day_keeps_every_file_in_its_manifest(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """A session name started again on its date writes on in the same ledger, and its next
    manifest is written from that ledger whole: retention must not remove a ledger while a
    session can still be started under its date, however short APP_LEDGER_RETENTION_DAYS (or
    however far behind the share's clock sets its mtime). Removed once the manifest was in
    storage, the ledger came back with the second run's files only, and the manifest written
    over the first listed only those.

    Review of issues 19/20, finding 4.
    """
    settings = settings_factory(ledger_retention_days=0, drain_timeout_s=0.5)
    running = service_factory(settings)
    retention = running.service.retention
    assert retention is not None
    container = azurite.container(settings.azure_container)

    def run(rel: str) -> dict[str, Any]:
        date = running.post("/v1/watch/start", json={"session_name": "again"}).json()
        write_file(settings.nfs_incoming_dir / "again" / rel, rel.encode())
        running.post("/v1/watch/stop")
        blob = container.get_blob_client(f"{date['date_prefix']}/again.manifest.json")

        def listed() -> dict[str, Any] | None:
            if not blob.exists():
                return None
            manifest = json.loads(blob.download_blob().readall())
            return manifest if rel in {f["path"] for f in manifest["files"]} else None

        found = wait_for(listed, what=f"a manifest listing {rel}")
        assert found is not None
        wait_for(
            lambda: running.get("/v1/sessions/again").json()["state"] == "drained",
            what="the session to end",
        )
        return found

    run("first.bin")
    on_service_loop(running, retention.sweep())  # the ledger's time has passed (0 days)
    second = run("second.bin")
    assert sorted(f["path"] for f in second["files"]) == ["first.bin", "second.bin"]
    assert second["totals"]["files"] == 2


@pytest.mark.adversarial
def test_a_ledger_is_kept_while_a_reason_of_its_session_waits_to_be_settled(
    tmp_path: Path,
) -> None:
    """A reason file without its parked file is a dismissal not recorded yet (the file was
    removed by hand from a session this process no longer lists, or a dismissal was cut
    short): the next start records it in the ledger and writes the manifest anew from it. A
    ledger removed before that came back with the dismissal line alone, and the manifest
    written from it listed none of the session's files.

    Review of issues 19/20, finding 14.
    """
    layout = Layout(tmp_path / "incoming", tmp_path / ".processing", tmp_path / "staging")
    clock = [time.time() + 31 * DAY_S]
    retention = LedgerRetention(layout, Nfs(10), 30, lambda d, s: False, clock=lambda: clock[0])
    ledger = _ledger(layout, "s")
    reason = write_file(layout.reasons_root / DATE / "s" / "cam" / "x.", b'{"reason": "r"}')
    assert asyncio.run(retention.sweep()) == 0
    assert ledger.exists()
    reason.unlink()  # settled: the dismissal is in the ledger, the manifest written anew
    done = write_file(layout.completed_root / DATE / "s" / "late.bin", b"checked again")
    assert asyncio.run(retention.sweep()) == 0  # GC may still find it written to: sent again
    done.unlink()
    assert asyncio.run(retention.sweep()) == 1


def _member_layout(share: Path, member: str) -> Layout:
    root = share / ".processing"
    return Layout(share / "incoming", root / "owners" / member, share / "staging")


def test_a_replicas_ledger_is_kept_while_another_replica_holds_a_parked_file_of_its_session(
    tmp_path: Path,
) -> None:
    """With replicas a manifest is merged from every member's ledger: a member must not drop
    its part of a session while another member's tree still holds a parked file of it (its
    retry would write a manifest without this member's files)."""
    me, other = new_incarnation(), new_incarnation()
    mine, theirs = _member_layout(tmp_path, me), _member_layout(tmp_path, other)
    now = time.time()
    clock = [now]
    retention = LedgerRetention(
        mine,
        Nfs(10),
        30,
        lambda d, s: False,
        clock=lambda: clock[0],
        share_root=tmp_path / ".processing",
    )
    ledger = _ledger(mine, "take1")
    parked = write_file(theirs.parked_root / DATE / "take1" / "x.bin", b"parked elsewhere")

    clock[0] = now + 31 * DAY_S
    assert asyncio.run(retention.sweep()) == 0
    assert ledger.exists()
    parked.unlink()
    assert asyncio.run(retention.sweep()) == 1
    assert not ledger.exists()


@pytest.mark.parametrize("sweeper", ["leader", "not the leader"])
def test_the_tree_a_gone_replica_left_is_swept_by_the_leader_alone_and_removed_once_empty(
    tmp_path: Path, sweeper: str
) -> None:
    """Every incarnation has a tree of its own (`owners/<member>/`); what adoption leaves of a
    gone one (its ledgers) must not stay for ever. The leader sweeps the trees it was allowed
    (gone for a while) and removes each once empty; a live member's tree, and any tree when it
    is not the leader, are left alone."""
    me, gone, live, cluttered = (new_incarnation() for _ in range(4))
    mine = _member_layout(tmp_path, me)
    now = time.time()
    clock = [now]
    allowed: set[str] = {gone, cluttered} if sweeper == "leader" else set()
    retention = LedgerRetention(
        mine,
        Nfs(10),
        30,
        lambda d, s: False,
        clock=lambda: clock[0],
        share_root=tmp_path / ".processing",
        others=lambda: (lambda name: name in allowed) if allowed else None,
    )
    gone_ledger = _ledger(_member_layout(tmp_path, gone), "take1")
    live_ledger = _ledger(_member_layout(tmp_path, live), "take1")
    stray = write_file(_member_layout(tmp_path, cluttered).processing_root / "stray", b"?")
    owners = tmp_path / ".processing" / "owners"

    clock[0] = now + 29 * DAY_S
    asyncio.run(retention.sweep())
    assert gone_ledger.exists(), "a ledger swept before its time"
    clock[0] = now + 31 * DAY_S
    asyncio.run(retention.sweep())

    assert live_ledger.exists()
    assert stray.exists()
    if sweeper == "leader":
        assert not (owners / gone).exists()
        assert retention.trees_removed == 1
    else:
        assert gone_ledger.exists()
        assert retention.trees_removed == 0


@pytest.mark.adversarial
@pytest.mark.parametrize("where", ["another replica's tree", "its own tree"])
def test_a_ledger_is_kept_while_a_report_of_its_session_waits_in_any_tree(
    tmp_path: Path, where: str
) -> None:
    """With replicas the leader ends a session and holds its report job (`_reports/<id>.json`
    in the leader's tree, or in an adopter's once the leader died); the manifest is written
    from every member's ledger when that job runs. A member whose session is no longer watched
    knows nothing of a job held elsewhere: its ledger removed while the job waits (storage
    down, the gate waiting for the end to be on record) made the manifest miss its files."""
    me, leader = new_incarnation(), new_incarnation()
    mine = _member_layout(tmp_path, me)
    holder = mine if where == "its own tree" else _member_layout(tmp_path, leader)
    clock = [time.time() + 31 * DAY_S]
    retention = LedgerRetention(
        mine,
        Nfs(10),
        30,
        lambda d, s: False,  # no job of this process's own is due
        clock=lambda: clock[0],
        share_root=tmp_path / ".processing",
    )
    ledger = _ledger(mine, "take1")
    job = {"id": "ab12", "created": 1.0, "session": "take1", "date_prefix": DATE}
    waiting = write_file(holder.reports_root / "ab12.json", json.dumps(job).encode())
    other = {**job, "id": "cd34", "session": "take2"}
    write_file(holder.reports_root / "cd34.json", json.dumps(other).encode())

    assert asyncio.run(retention.sweep()) == 0
    assert ledger.exists(), "a ledger removed while a report of its session waits"
    waiting.unlink()  # the manifest is written, the job done
    assert asyncio.run(retention.sweep()) == 1
    assert not ledger.exists()


def _old_ledger(layout: Layout, name: str) -> Path:
    ledger = _ledger(layout, name)
    old = time.time() - 40 * DAY_S
    os.utime(ledger, (old, old))
    return ledger


@pytest.mark.adversarial
def test_a_single_replica_never_sweeps_the_tree_of_a_replica_started_beside_it(
    service_factory: Any, settings_factory: Any
) -> None:
    """A rolling update from one replica to replicas (README) starts them while the single
    replica still runs. Alone, it sweeps the trees replicas left on the share before it started
    (they all stopped: README); a tree that appeared since is a live replica's, whose sessions,
    report jobs and ledgers it knows nothing of. It removed that replica's ledger of a session
    still running (or whose report was still due), and its manifest then missed those files."""
    settings = settings_factory(ledger_retention_days=0, gc_interval_s=3600)
    share = settings.nfs_incoming_dir.parent
    before, beside = new_incarnation(), new_incarnation()
    left = _old_ledger(_member_layout(share, before), "take1")
    running = service_factory(settings)
    retention = running.service.retention
    assert retention is not None
    live = _old_ledger(_member_layout(share, beside), "take2")

    on_service_loop(running, retention.sweep())

    assert live.exists(), "a live replica's ledger removed by a single replica beside it"
    assert not left.exists()  # what replicas that stopped before it left is its to sweep
