"""Traces, metrics and logs reach their receivers and match what the service did."""

import json
import os
import shutil
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nfs_watcher_uploader.constants import UPLOAD_RATE_WINDOW_S
from tests.support.helpers import (
    Azurite,
    ServiceProcess,
    blob_bytes,
    make_settings,
    wait_for,
    write_file,
)
from tests.support.otlp_receiver import OtlpReceiver

STEPS = {"claim", "stage", "upload", "complete"}


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch, receiver: OtlpReceiver) -> OtlpReceiver:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "300")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "uploader-under-test")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    return receiver


def test_spans_and_metrics_reach_an_otlp_receiver(
    otel_env: OtlpReceiver, service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    corrupted: set[str] = set()

    def corrupt_once(staged: Path, copied: Any) -> Any:  # one upload step fails, then succeeds
        if staged.name == "flaky.bin" and staged.name not in corrupted:
            corrupted.add(staged.name)
            return replace(copied, data=b"not the bytes that were copied")
        return None

    settings = settings_factory(azure_max_single_put_size=64 * 1024)
    running = service_factory(settings, on_staged=corrupt_once)
    date = running.post("/v1/watch/start", json={"session_name": "otel"}).json()["date_prefix"]
    files = {"a.bin": os.urandom(1000), "big.bin": os.urandom(200_000), "flaky.bin": b"f" * 10}
    for name, data in files.items():
        write_file(settings.nfs_incoming_dir / "otel" / name, data)
    container = azurite.container(settings.azure_container)
    wait_for(lambda: all(blob_bytes(container, f"{date}/otel/{n}") for n in files), timeout=30)

    def file_spans() -> list[Any]:
        done = [s for s in otel_env.spans() if s.name == "file" and s.status_code != 2]
        return done if {s.attributes["file.name"] for s in done} >= set(files) else []

    spans = wait_for(file_spans, timeout=15, what="a file span per file")
    everything = otel_env.spans()
    for span in spans:
        name = span.attributes["file.name"]
        assert span.attributes["session.name"] == "otel"
        assert span.attributes["blob.name"] == f"{date}/otel/{name}"
        assert span.attributes["file.size"] == len(files[name])
        children = {s.name: s for s in everything if s.parent_span_id == span.span_id}
        steps = STEPS if span.attributes["retry.attempt"] == 0 else STEPS - {"claim"}
        assert set(children) >= steps, (name, set(children))
        assert children["upload"].attributes["blob.name"] == f"{date}/otel/{name}"
        assert all(c.trace_id == span.trace_id for c in children.values())
    failed_uploads = [s for s in everything if s.name == "upload" and s.status_code == 2]
    assert failed_uploads and "exception" in failed_uploads[0].events
    assert any(s.name.startswith("POST /v1/watch/start") for s in everything)  # API traced
    assert not any("healthz" in s.name or "readyz" in s.name for s in everything)

    def processed() -> Any:
        point = otel_env.latest("files.processed")
        return point is not None and point.as_int == 3 and point

    wait_for(processed, timeout=15, what="files.processed == 3 exported")
    assert otel_env.latest("upload.bytes").as_int == sum(len(d) for d in files.values())
    assert otel_env.latest("upload.retries").as_int >= 1
    assert otel_env.latest("upload.duration").count == 3
    assert otel_env.latest("watcher.last_scan.time").as_double > 1.7e9
    units = {name: unit for name, unit, _ in otel_env.metric_points()}
    assert units["upload.bytes"] == "By" and units["upload.duration"] == "s"
    for name in ("queue.depth", "files.in_flight", "files.parked", "files.failed"):
        assert name in units, name


def test_prometheus_metrics_match_the_uploads(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    settings = settings_factory(min_file_age_s=3600)  # "old.bin" is seen but never claimed
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "prom"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "prom"
    for i in range(4):
        path = write_file(incoming / f"f{i}.bin", b"x" * (100 + i))
        os.utime(path, (1_000_000, 1_000_000))  # long finished
    write_file(incoming / "young.bin", b"y")
    container = azurite.container(settings.azure_container)
    wait_for(lambda: all(blob_bytes(container, f"{date}/prom/f{i}.bin") for i in range(4)))
    response = running.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    value = {f.name: f.samples[0].value for f in families.values() if f.samples}
    assert families["files_processed"].type == "counter"
    assert value["files_processed"] == 4 == running.get("/v1/status").json()["processed_ok"]
    assert value["upload_bytes"] == sum(100 + i for i in range(4))
    assert value["files_failed"] == 0 and value["upload_retries"] == 0
    assert value["queue_depth"] == 0
    assert value["files_waiting_max_age_seconds"] >= 0  # young.bin waits
    assert value["watcher_last_scan_time_seconds"] > 1.7e9


def test_json_logs_carry_the_file_span_trace_id(
    tmp_path: Path, azurite: Azurite, container_name: str, receiver: OtlpReceiver
) -> None:
    settings = make_settings(tmp_path, azurite, container_name)
    proc = ServiceProcess(
        settings,
        tmp_path / "service.log",
        extra_env={
            "OTEL_SDK_DISABLED": "false",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    proc.start()
    with proc.client as c:
        date = c.post("/v1/watch/start", json={"session_name": "logs"}).json()["date_prefix"]
    for name in ("one.bin", "two.bin"):
        write_file(settings.nfs_incoming_dir / "logs" / name, name.encode())
    container = azurite.container(container_name)
    wait_for(lambda: all(blob_bytes(container, f"{date}/logs/{n}") for n in ("one.bin", "two.bin")))
    proc.signal(signal.SIGTERM)
    lines = [json.loads(line) for line in proc.log.read_text().splitlines() if line.strip()]
    assert all({"timestamp", "level", "logger", "message"} <= set(line) for line in lines)
    uploaded = {line["file_name"]: line for line in lines if line["message"].startswith("Uploaded")}
    assert set(uploaded) == {"one.bin", "two.bin"}
    spans = {s.attributes["file.name"]: s for s in receiver.spans() if s.name == "file"}
    for name, line in uploaded.items():
        assert line["session_name"] == "logs"
        assert line["trace_id"] == spans[name].trace_id
        assert len(line["span_id"]) == 16
    text = proc.log.read_text()
    assert "Eby8vdM02xNOcqFlqUwJPLlmEtl" not in text  # the account key never appears


def test_sdk_disabled_exports_nothing_and_the_service_works(
    monkeypatch: pytest.MonkeyPatch,
    receiver: OtlpReceiver,
    service_factory: Any,
    settings_factory: Any,
    azurite: Azurite,
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    settings = settings_factory()
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "off"}).json()["date_prefix"]
    write_file(settings.nfs_incoming_dir / "off" / "a.bin", b"a")
    container = azurite.container(settings.azure_container)
    wait_for(lambda: blob_bytes(container, f"{date}/off/a.bin"))
    assert running.get("/metrics").status_code == 200
    running.stop()  # shutdown would flush anything there was to export
    assert receiver.traces == [] and receiver.metrics == []


def test_no_endpoint_means_no_export_attempts(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    """With no OTEL_EXPORTER_OTLP_ENDPOINT the SDK is on (for /metrics) but exports nothing,
    so the log has no export errors."""
    settings = make_settings(tmp_path, azurite, container_name)
    proc = ServiceProcess(
        settings, tmp_path / "quiet.log", extra_env={"OTEL_SDK_DISABLED": "false"}
    )
    proc.start()
    with proc.client as c:
        date = c.post("/v1/watch/start", json={"session_name": "quiet"}).json()["date_prefix"]
        write_file(settings.nfs_incoming_dir / "quiet" / "q.bin", b"q")
        container = azurite.container(container_name)
        wait_for(lambda: blob_bytes(container, f"{date}/quiet/q.bin"))
        assert "files_processed_total" in c.get("/metrics").text
    proc.signal(signal.SIGTERM)
    text = proc.log.read_text()
    assert "export" not in text.lower() and "4318" not in text


def test_operations_metrics_report_sessions_staging_disk_and_rate(
    service_factory: Any, settings_factory: Any, azurite: Azurite, tmp_path: Path
) -> None:
    settings = settings_factory()
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "one"}).json()["date_prefix"]
    data = os.urandom(60_000)
    write_file(settings.nfs_incoming_dir / "one" / "a.bin", data)
    container = azurite.container(settings.azure_container)
    wait_for(lambda: blob_bytes(container, f"{date}/one/a.bin") == data)
    running.post("/v1/watch/stop")
    wait_for(lambda: running.get("/v1/sessions/one").json()["state"] == "drained")
    running.post("/v1/watch/start", json={"session_name": "two"})

    def samples() -> dict[str, list[Any]]:
        """The scrape, once the staging disk has been sampled (GC does it off the loop)."""
        text = running.get("/metrics").text
        found = {f.name: f.samples for f in text_string_to_metric_families(text)}
        return found if "staging_disk_free_bytes" in found else {}

    found = wait_for(samples, what="the staging disk's usage")
    by_state = {s.labels["state"]: s.value for s in found["sessions"]}
    assert by_state == {"active": 1, "draining": 0, "drained": 1, "drain_timed_out": 0}
    disk = shutil.disk_usage(tmp_path)  # staging is under tmp_path: the same disk
    assert found["staging_disk_size_bytes"][0].value == disk.total
    assert abs(found["staging_disk_free_bytes"][0].value - disk.free) < disk.total * 0.05
    rate = found["upload_rate_bytes_per_second"][0].value
    assert 0 < rate <= len(data) / UPLOAD_RATE_WINDOW_S
    assert found["upload_bandwidth_limit_bytes_per_second"][0].value == 0


def _http_series(running: Any) -> set[str]:
    """The label sets of the HTTP server metrics in /metrics."""
    text = running.get("/metrics").text
    return {line.split(" ")[0] for line in text.splitlines() if line.startswith("http_server")}


@pytest.mark.adversarial
def test_no_request_header_becomes_a_metric_label(
    monkeypatch: pytest.MonkeyPatch, service_factory: Any, settings_factory: Any
) -> None:
    """The HTTP server metrics were labelled with the request's Host header: every distinct
    Host any unauthenticated client sent (to any path, 404s included) added series kept for
    ever, so memory and the /metrics answer grew without bound.

    Issue 21, finding 13.
    """
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    running = service_factory(settings_factory())
    paths = ("/v1/status", "/no/such/path", "/v1/sessions/x")
    for path in paths:
        running.get(path, headers={"Host": "first.example"})
    before = _http_series(running)
    assert before, "no HTTP server metrics: the check below would prove nothing"
    for i in range(1000):
        running.get(paths[i % 3], headers={"Host": f"h{i}.attacker.example:{1000 + i}"})
    after = _http_series(running)
    assert after == before, sorted(after - before)[:3]
    assert not any("attacker" in s or "first.example" in s for s in after)
