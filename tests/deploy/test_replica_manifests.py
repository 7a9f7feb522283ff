"""k8s/ renders one pod by default and k8s/replicas/ renders N on one share: both pass the
strict schema, and the overlay has what running several replicas needs (a rolling update that
never goes below the count, a disruption budget, the pod's name, coordination through
storage)."""

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nfs_watcher_uploader.config import Settings
from tests.support.helpers import ROOT

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl here")


def _render(folder: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / folder)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    return deployment


@pytest.mark.parametrize("folder", ["k8s", "k8s/replicas"])
def test_both_renderings_pass_the_strict_schema(folder: str, tmp_path: Path) -> None:
    for i, doc in enumerate(_render(folder)):
        path = tmp_path / f"{i}-{doc['kind']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        done = subprocess.run(
            [str(BIN / "kubernetes-validate"), "--strict", str(path)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_default_stays_one_pod_replaced_not_rolled() -> None:
    spec = _deployment(_render("k8s"))["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    env = {e["name"] for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert "APP_COORDINATION" not in env  # none: exactly one replica, as always


def test_the_replicas_overlay_rolls_one_pod_at_a_time_within_a_disruption_budget() -> None:
    docs = _render("k8s/replicas")
    deployment = _deployment(docs)
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    (budget,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert budget["spec"]["maxUnavailable"] == 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = spec["template"]["spec"]
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    # Room to finish in-flight files and release the lease before the kill.
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert pod["terminationGracePeriodSeconds"] >= float(config["APP_SHUTDOWN_GRACE_S"]) + 10


def test_the_replicas_coordinate_through_storage_and_name_themselves_by_pod() -> None:
    container = _deployment(_render("k8s/replicas"))["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["APP_COORDINATION"]["value"] == "azure"
    assert env["APP_MEMBER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The device stays the node: blobs name their source with it, whichever pod sent them.
    assert env["APP_SOURCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    settings_env = {f"APP_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= settings_env


def test_the_compose_example_runs_several_replicas_on_one_share_each_with_its_own_staging() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.replicas.yaml").read_text())
    app = compose["services"]["app"]
    assert app["deploy"]["replicas"] >= 2
    env = app["environment"]
    assert env["APP_COORDINATION"] == "azure"
    assert set(env) <= {f"APP_{name.upper()}" for name in Settings.model_fields}
    mounts = {v.split(":")[1] if ":" in v else v: v for v in app["volumes"]}
    # One mount of the share (renames stay within it); staging an anonymous volume per
    # container: a named one would be shared by every replica.
    assert mounts["/mnt/nfs"].startswith("./data:")
    assert mounts[env["APP_LOCAL_STAGING_ROOT"]] == env["APP_LOCAL_STAGING_ROOT"]
    # Every replica publishes its own port (one fixed host port cannot serve three).
    (ports,) = app["ports"]
    first, last = ports.split(":")[0].split("-")
    assert int(last) - int(first) + 1 >= app["deploy"]["replicas"]
