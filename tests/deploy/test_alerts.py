"""The alert rules pass promtool and their unit tests, and tell on-call what to do."""

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.tools import require

ROOT = Path(__file__).resolve().parents[2]  # the repository


RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"


RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yaml"


PROMETHEUS_RULE = ROOT / "k8s" / "monitoring" / "prometheusrule.yaml"


SERVICE_MONITOR = ROOT / "k8s" / "monitoring" / "servicemonitor.yaml"


JOB = "nfs-watcher-uploader"


@pytest.fixture(scope="module")
def promtool() -> str:
    return require("promtool", "run `make install` as root (Debian's prometheus package)")


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _promtool(promtool: str, *args: str | Path) -> None:
    result = subprocess.run([promtool, *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_pass_promtool_check(promtool: str) -> None:
    _promtool(promtool, "check", "rules", RULES)


def test_the_rule_unit_tests_pass(promtool: str, tmp_path: Path) -> None:
    """promtool compares annotations verbatim: the cases check the summaries (templates
    rendered) against a copy of the rules without the long, template-free descriptions."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            del rule["annotations"]["description"]
    (tmp_path / RULES.name).write_text(yaml.safe_dump(doc))
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    _promtool(promtool, "test", "rules", tmp_path / RULE_TESTS.name)


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    fires: dict[str, set[str]] = {}
    evaluated: dict[str, set[str]] = {}
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        instances = {
            m.group(1)
            for series in case["input_series"]
            if (m := re.search(r'instance="([^"]+)"', series["series"]))
        }
        for check in case["alert_rule_test"]:
            name = check["alertname"]
            evaluated.setdefault(name, set()).update(instances)
            for alert in check["exp_alerts"]:
                fires.setdefault(name, set()).add(alert["exp_labels"].get("instance", "(none)"))
    for rule in _alerts():
        name = rule["alert"]
        assert fires.get(name), f"{name}: no case where it fires"
        quiet = evaluated.get(name, set()) - fires[name]
        assert quiet, f"{name}: no series on which it must stay quiet"


def test_every_alert_tells_on_call_what_it_means_and_what_to_do() -> None:
    names = [rule["alert"] for rule in _alerts()]
    assert len(names) == len(set(names))
    readme = (ROOT / "README.md").read_text()
    for rule in _alerts():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        summary, description = rule["annotations"]["summary"], rule["annotations"]["description"]
        assert summary and len(description) > 200, rule["alert"]
        assert "{{" not in description, f"{rule['alert']}: templates belong in the summary"
        assert f"`{rule['alert']}`" in readme, f"{rule['alert']} is not in the README"


def test_the_prometheus_rule_holds_the_same_groups(promtool: str, tmp_path: Path) -> None:
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert set(resource) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(resource["spec"]) == {"groups"}
    assert resource["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"], (
        "k8s/monitoring/prometheusrule.yaml differs from alerts.yaml: run `make prometheusrule`"
    )
    # Not a built-in kind, so kubernetes-validate cannot check it: promtool checks its groups.
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(resource["spec"]))
    _promtool(promtool, "check", "rules", spec)


def test_the_service_monitor_scrapes_the_service_as_the_job_the_alerts_select() -> None:
    monitor = yaml.safe_load(SERVICE_MONITOR.read_text())
    service = yaml.safe_load((ROOT / "k8s" / "base" / "service.yaml").read_text())
    assert monitor["kind"] == "ServiceMonitor"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == service["metadata"]["annotations"]["prometheus.io/path"]
    # The operator names the job after the Service unless told otherwise.
    assert "jobLabel" not in monitor["spec"] and service["metadata"]["name"] == JOB
    assert all(f'job="{JOB}"' in r["expr"] for r in _alerts() if "up{" in r["expr"])


def test_monitoring_is_optional_in_the_kustomization() -> None:
    base = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())["resources"]
    assert not any("monitoring" in r for r in base)
    optional = yaml.safe_load((ROOT / "k8s" / "monitoring" / "kustomization.yaml").read_text())
    assert set(optional["resources"]) == {PROMETHEUS_RULE.name, SERVICE_MONITOR.name}
