"""The dashboard and the alert expressions return data on a real Prometheus scraping the service."""

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.helpers import (
    Azurite,
    RunningService,
    blob_bytes,
    wait_for,
    write_file,
)
from tests.support.prometheus import Prometheus, metric_names
from tests.support.tools import require

ROOT = Path(__file__).resolve().parents[2]  # the repository


DASHBOARD = ROOT / "deploy" / "grafana" / "nfs-watcher-uploader.json"


RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"


JOB = "nfs-watcher-uploader"


DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


# What the issue asks the dashboard to show, by the metric each panel reads.
REQUIRED = {
    "upload_bytes_total",  # throughput
    "files_processed_total",  # files/s
    "queue_depth",
    "files_in_flight",
    "files_waiting_max_age_seconds",
    "upload_retries_total",
    "files_parked",
    "watcher_last_scan_time_seconds",
    "upload_duration_seconds_bucket",
    "upload_rate_bytes_per_second",
    "upload_bandwidth_limit_bytes_per_second",
}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _queries() -> list[tuple[str, str]]:
    return [(f"{p['title']}/{t['refId']}", t["expr"]) for p in _panels() for t in p["targets"]]


def _alerts() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(r["alert"], r["expr"]) for g in groups for r in g["rules"]]


def _substitute(expr: str, instance: str) -> str:
    """What Grafana sends for one instance of the job."""
    for variable, value in (
        ("$__rate_interval", "1m"),
        ("$__range", "5m"),
        ("$job", JOB),
        ("$instance", instance),
    ):
        expr = expr.replace(variable, value)
    assert "$" not in expr, expr
    return expr


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    binary = require("prometheus", "run `make install` as root (Debian's prometheus package)")
    server = Prometheus(binary, tmp_path / "prometheus")
    yield server
    server.stop()


def _uploading_service(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> RunningService:
    """A service that has uploaded files of a few sizes and has one file waiting, so that every
    series the dashboard reads exists."""
    settings = settings_factory(min_file_age_s=3600, azure_max_single_put_size=256 * 1024)
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "dash"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "dash"
    sizes = [1_000, 50_000, 300_000, 1_500_000]
    for i, size in enumerate(sizes):
        path = write_file(incoming / f"f{i}.bin", os.urandom(size))
        os.utime(path, (1_000_000, 1_000_000))  # long finished
    write_file(incoming / "recording.bin", b"still being written")  # young: it waits
    container = azurite.container(settings.azure_container)
    wait_for(
        lambda: all(blob_bytes(container, f"{date}/dash/f{i}.bin") for i in range(len(sizes))),
        what="the uploads",
    )
    return running


def test_the_dashboard_imports_with_a_datasource_variable() -> None:
    board = _dashboard()
    assert board["id"] is None and board["uid"] and "__inputs" not in board
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["datasource"] == DATASOURCE
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_the_dashboard_shows_each_instance_and_every_required_metric() -> None:
    for title, expr in _queries():
        assert 'instance=~"$instance"' in expr and 'job=~"$job"' in expr, title
    shown = set().union(*(metric_names(expr) for _, expr in _queries()))
    assert shown >= REQUIRED, REQUIRED - shown


def test_metric_names_finds_every_metric_an_expression_selects() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (instance, le) (rate(a_bucket{job=~"x"}[5m]))) '
        '> 1e9 and on (job) b offset 5m or time() - c:total{le="+Inf"} unless bool d'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c:total", "d"}


def test_every_dashboard_query_and_alert_expression_returns_data_on_a_real_prometheus(
    prometheus: Prometheus, service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    running = _uploading_service(service_factory, settings_factory, azurite)
    instance = running.base_url.removeprefix("http://")
    prometheus.start({JOB: [instance]}, rule_files=[RULES])

    queries = [(title, _substitute(expr, instance)) for title, expr in _queries()]

    def without_data() -> list[str]:
        return [title for title, expr in queries if not prometheus.query(expr)]

    try:
        wait_for(lambda: not without_data(), timeout=30, what="data in every panel")
    except AssertionError:
        pytest.fail(f"panels without data: {without_data()}")

    variables = {v["name"]: v["definition"] for v in _dashboard()["templating"]["list"][1:]}
    assert variables["job"] == "label_values(files_processed_total, job)"
    assert JOB in prometheus.api("label/job/values", **{"match[]": "files_processed_total"})
    assert instance in prometheus.api(
        "label/instance/values", **{"match[]": f'files_processed_total{{job=~"{JOB}"}}'}
    )

    scraped = set(prometheus.api("label/__name__/values"))
    for title, expr in queries:
        assert metric_names(expr) <= scraped, (title, metric_names(expr) - scraped)
    for alert, expr in _alerts():
        prometheus.query(expr)  # parses and evaluates
        assert metric_names(expr) <= scraped, (alert, metric_names(expr) - scraped)

    def rules_evaluated() -> list[dict[str, Any]]:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return rules if all(r["health"] != "unknown" for r in rules) else []

    rules = wait_for(rules_evaluated, timeout=30, what="Prometheus to evaluate the rules")
    assert {r["name"] for r in rules} == {name for name, _ in _alerts()}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    # A healthy service that is uploading raises nothing.
    assert prometheus.api("alerts")["alerts"] == []
