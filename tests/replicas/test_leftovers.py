"""The leader's take-over of the trees nobody owns (replicas/adoption.leftovers), one step at a
time, with stand-ins for the service's parts: what it renames, and what it must leave."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest

from nfs_watcher_uploader.constants import OWNERS_DIR
from nfs_watcher_uploader.coord.names import new_incarnation
from nfs_watcher_uploader.coord.roster import View
from nfs_watcher_uploader.replicas.adoption import Adoption


class _Nfs:
    timeout = 5.0

    async def call(self, fn: Any, timeout: float | None = None) -> Any:
        return fn()


async def _nothing() -> None:
    return None


def _adoption(base_root: Path) -> tuple[Adoption, list[object]]:
    me = new_incarnation()
    queued: list[object] = []
    membership = SimpleNamespace(incarnation=me, coordinator=None, member=None, valid=lambda: True)
    layout = SimpleNamespace(
        processing_root=base_root / OWNERS_DIR / me, as_completed=lambda item: item
    )
    sessions = SimpleNamespace(for_item=lambda item: SimpleNamespace(found_parked=lambda rel: None))
    adoption = Adoption(
        cast(Any, membership),
        base_root,
        cast(Any, layout),
        cast(Any, _Nfs()),
        cast(Any, SimpleNamespace(put=queued.append)),
        cast(Any, sessions),
        cast(Any, SimpleNamespace(take_over=_nothing)),
        cast(Any, SimpleNamespace(take_over=_nothing)),
        lambda urgent: 0,
    )
    return adoption, queued


@pytest.mark.adversarial
@pytest.mark.xfail(
    strict=True,
    reason=(
        "design: the leader takes the processing root's tree (a single replica's) at its first "
        "pass; a single replica still running beside the replicas (a rolling update from "
        "k8s/ to k8s/replicas/, which is RollingUpdate with maxSurge 1, or a version before "
        "issue 24, which knows no share mark) has the files it claimed and is uploading "
        "renamed from under it and uploaded twice. Nothing tells the leader that no single "
        "replica runs: it needs a liveness mark of the single mode (or a wait until the tree "
        "has not changed for a while, as for trees without a member blob, which covers a "
        "crashed one but not a live one mid-upload)"
    ),
)
def test_a_file_a_running_single_replica_has_claimed_is_not_taken_from_it(
    tmp_path: Path,
) -> None:
    """Review of issue 24, finding 4. A rolling update that mixes a replica without
    coordination (APP_COORDINATION=none) with replicas on one share: the leader's first pass
    renames what the single replica has just claimed (its tree at the processing root) into
    its own tree and queues it, while the single replica uploads it too."""
    base_root = tmp_path / ".processing"
    claimed = base_root / "20261204" / "take1" / "a.bin"
    claimed.parent.mkdir(parents=True)
    claimed.write_bytes(b"being uploaded by the single replica")
    adoption, queued = _adoption(base_root)

    anyio.run(adoption.leftovers, View(()))

    assert claimed.exists(), "taken from under the single replica at the first look"
    assert queued == []
