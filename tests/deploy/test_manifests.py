"""The Kubernetes manifests, compose files and Dockerfile are valid and as locked down as the
README says."""

import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.main import create_app

ROOT = Path(__file__).resolve().parents[2]  # the repository


BIN = Path(sys.executable).parent


# The single-replica manifests (`kubectl apply -k k8s/` renders them); k8s/replicas/ patches
# them for N replicas.
K8S = ROOT / "k8s" / "base"
REPLICAS = ROOT / "k8s" / "replicas"


MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


YAML_FILES = [
    *sorted(K8S.glob("*.yaml")),
    *sorted(K8S.parent.glob("*.yaml")),
    *sorted(REPLICAS.glob("*.yaml")),
    ROOT / "docker-compose.yaml",
    ROOT / "docker-compose.dev.yaml",
    ROOT / "docker-compose.replicas.yaml",
    ROOT / "otel-collector-config.yaml",
    ROOT / ".yamllint",
    *sorted((K8S.parent / "monitoring").glob("*.yaml")),
    *sorted((ROOT / "deploy" / "prometheus").glob("*.yaml")),
]


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=ROOT)


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((K8S / name).read_text())


def _container() -> dict[str, Any]:
    spec = _load("deployment.yaml")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return container


def _ports(rule: dict[str, Any]) -> set[tuple[Any, str]]:
    return {(p["port"], p.get("protocol", "TCP")) for p in rule["ports"]}


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_passes_the_strict_schema(manifest: Path) -> None:
    result = _run(BIN / "kubernetes-validate", "--strict", manifest)
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validation_catches_a_typo(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((K8S / "service.yaml").read_text().replace("selector:", "selecter:"))
    assert _run(BIN / "kubernetes-validate", "--strict", bad).returncode != 0


def test_the_kustomization_lists_every_manifest_but_the_example_secrets() -> None:
    listed = set(_load("kustomization.yaml")["resources"])
    examples = {p.name for p in MANIFESTS if p.name.endswith(".example.yaml")}
    assert examples == {"secret.example.yaml", "api-token-secret.example.yaml"}
    assert listed == {p.name for p in MANIFESTS} - examples


def test_the_deployment_runs_one_locked_down_pod_with_enough_grace() -> None:
    deployment = _load("deployment.yaml")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = _container()["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    config = _load("configmap.yaml")["data"]
    grace = float(config["APP_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] > grace + 5


def test_only_staging_and_tmp_are_writable_besides_nfs() -> None:
    writable = [m for m in _container()["volumeMounts"] if not m.get("readOnly")]
    mounts = {m["name"]: m["mountPath"] for m in writable}
    assert mounts == {"nfs-data": "/mnt/nfs", "staging": "/mnt/staging", "tmp": "/tmp"}
    volumes = {
        v["name"]: v for v in _load("deployment.yaml")["spec"]["template"]["spec"]["volumes"]
    }
    assert "emptyDir" in volumes["staging"] and "emptyDir" in volumes["tmp"]
    defaults = Settings.model_fields
    assert str(defaults["local_staging_root"].default) == mounts["staging"]
    for field in ("nfs_incoming_dir", "nfs_processing_root"):
        assert str(defaults[field].default).startswith(mounts["nfs-data"] + "/")
    config = _load("configmap.yaml")["data"]
    assert config["APP_LOCAL_STAGING_ROOT"] == mounts["staging"]
    assert config["APP_NFS_INCOMING_DIR"].startswith(mounts["nfs-data"] + "/")


def test_the_probes_point_at_real_endpoints() -> None:
    app = create_app(
        Settings(azure_account_url="https://a.blob.core.windows.net", azure_container="c")
    )
    paths = set(app.openapi()["paths"])
    container = _container()
    port_names = {p["name"] for p in container["ports"]}
    for probe, path in (
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ):
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in paths
        assert get["port"] in port_names | {8000}


def test_every_env_name_is_a_setting() -> None:
    settings_env = {f"APP_{name.upper()}" for name in Settings.model_fields}
    config = set(_load("configmap.yaml")["data"])
    secret = set(_load("secret.example.yaml")["stringData"])
    env = {e["name"] for e in _container()["env"]}
    for name in config | secret | env:
        assert name in settings_env or name.startswith("OTEL_"), name
    assert {"APP_AZURE_ACCOUNT_URL", "APP_AZURE_CONTAINER"} <= config


def test_the_min_file_age_exceeds_the_nfs_actimeo() -> None:
    options = _load("pv-nfs.yaml")["spec"]["mountOptions"]
    actimeo = next(float(o.split("=")[1]) for o in options if o.startswith("actimeo="))
    assert float(_load("configmap.yaml")["data"]["APP_MIN_FILE_AGE_S"]) > actimeo


def test_the_service_exposes_http_with_scrape_annotations() -> None:
    service = _load("service.yaml")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http"}]
    assert service["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("example", ["secret.example.yaml", "api-token-secret.example.yaml"])
def test_an_example_secret_holds_placeholders_only(example: str) -> None:
    values = _load(example)["stringData"].values()
    assert all(v.startswith("<") and v.endswith(">") for v in values)


def test_the_pod_holds_no_kubernetes_api_token() -> None:
    pod = _load("deployment.yaml")["spec"]["template"]["spec"]
    account = _load("serviceaccount.yaml")
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False


def test_the_api_token_comes_from_a_mounted_secret_that_can_rotate() -> None:
    pod = _load("deployment.yaml")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in _container()["env"]}
    path = Path(env["APP_API_TOKEN_FILE"]["value"])
    (mount,) = [m for m in _container()["volumeMounts"] if m["name"] == "api-token"]
    # The folder is mounted, not a subPath: the kubelet never updates a subPath mount.
    assert mount["readOnly"] is True and "subPath" not in mount
    assert path.parent == Path(mount["mountPath"])
    (volume,) = [v for v in pod["volumes"] if v["name"] == "api-token"]
    example = _load("api-token-secret.example.yaml")
    assert volume["secret"]["secretName"] == example["metadata"]["name"]
    assert volume["secret"].get("optional", False) is False  # no token: no pod, not an open API
    (item,) = volume["secret"]["items"]
    assert item["path"] == path.name and item["key"] in example["stringData"]


def test_the_network_policy_admits_the_api_port_only_from_its_clients() -> None:
    policy = _load("networkpolicy.yaml")["spec"]
    pod_labels = _load("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    (http,) = [p for p in _container()["ports"] if p["name"] == "http"]
    sources: list[dict[str, Any]] = []
    for rule in policy["ingress"]:
        assert _ports(rule) == {("http", "TCP")}, rule  # the API port and nothing else
        sources += rule["from"]
    assert {"podSelector": {"matchLabels": {"nfs-watcher-uploader/api-client": "true"}}} in sources
    assert any("prometheus" in str(s) for s in sources)
    assert all(s.get("podSelector") for s in sources), "every source is a labelled pod"
    assert http["containerPort"] == 8000


def test_the_network_policy_lets_out_only_dns_storage_and_otlp() -> None:
    rules = _load("networkpolicy.yaml")["spec"]["egress"]
    allowed = set().union(*(_ports(rule) for rule in rules))
    # The collector is the commented example in configmap.yaml (k8s/ deploys none).
    example = re.search(
        r"# OTEL_EXPORTER_OTLP_ENDPOINT: \"(.*)\"", (K8S / "configmap.yaml").read_text()
    )
    assert example is not None
    otlp = urlsplit(example.group(1))
    assert allowed == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (otlp.port, "TCP"), (80, "TCP")}
    (metadata,) = [r for r in rules if (80, "TCP") in _ports(r)]
    assert metadata["to"] == [{"ipBlock": {"cidr": "169.254.169.254/32"}}]
    assert all(rule.get("to") for rule in rules), "no rule may leave its destination open"


def test_compose_reads_the_token_from_an_ignored_env_file() -> None:
    app = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]["app"]
    assert app["env_file"] == ["api-token.env"]
    assert not any("TOKEN" in name for name in app["environment"])
    ignored = _run("git", "check-ignore", "-q", "api-token.env")
    assert ignored.returncode == 0, "api-token.env must be git-ignored"
    example = (ROOT / "api-token.env.example").read_text()
    assert "APP_API_TOKEN=\n" in example  # no value: it cannot be started as is
    assert "api-token.env" in (ROOT / "Makefile").read_text()


def test_the_dockerfile_passes_hadolint() -> None:
    result = _run(BIN / "hadolint", "--failure-threshold", "error", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_installs_pinned_hashes_and_runs_unprivileged() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "-r requirements.lock" in text and "--require-hashes" in text
    assert 'CMD ["nfs-watcher-uploader"]' in text
    assert "USER ${APP_UID}:${APP_GID}" in text and "ARG APP_UID=10001" in text
    assert text.count("FROM ") == 2 and "slim" in text


@pytest.mark.parametrize(
    "compose", ["docker-compose.yaml", "docker-compose.dev.yaml", "docker-compose.replicas.yaml"]
)
def test_the_compose_files_match_the_compose_spec(compose: str) -> None:
    schema = ROOT / "deploy" / "compose-spec.schema.json"
    result = _run(BIN / "check-jsonschema", "--schemafile", schema, compose)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_schema_catches_a_typo(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text((ROOT / "docker-compose.dev.yaml").read_text().replace("ports:", "portz:", 1))
    schema = ROOT / "deploy" / "compose-spec.schema.json"
    assert _run(BIN / "check-jsonschema", "--schemafile", schema, bad).returncode != 0


def test_every_yaml_file_passes_yamllint() -> None:
    result = _run(BIN / "yamllint", "--strict", *YAML_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
