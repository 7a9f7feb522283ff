"""k8s/ points at nothing it does not deploy: telemetry export is off unless a collector is
named (a commented example shows how), and the README says how a locally built image reaches
k3s's own containerd."""

import yaml

from tests.support.helpers import ROOT


def test_the_configmap_names_no_collector_that_k8s_does_not_deploy() -> None:
    text = (ROOT / "k8s" / "base" / "configmap.yaml").read_text()
    data = yaml.safe_load(text)["data"]
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in data
    kinds = {
        (doc["kind"], doc["metadata"]["name"])
        for path in (ROOT / "k8s" / "base").glob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if doc and "metadata" in doc
    }
    assert ("Service", "nfs-watcher-uploader") in kinds
    assert not any("collector" in name for _, name in kinds)
    assert "# OTEL_EXPORTER_OTLP_ENDPOINT:" in text  # how to name one


def test_the_readme_says_how_a_local_image_reaches_k3s() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "k3s ctr images import" in readme
    assert "imagePullPolicy: IfNotPresent" in readme
