"""The benchmark runs and reports."""

import json
from pathlib import Path

import pytest
from bench.run import main

pytestmark = pytest.mark.slow


def test_the_benchmark_runs_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    main(["--tiny", "--json", str(out)])
    report = json.loads(out.read_text())
    ways = {(r["set"], r["auth"], r["way"]) for r in report["results"]}
    assert ways == {
        (s, a, w)
        for s in ("small", "large")
        for a in ("key", "sas")
        for w in ("service", "rclone", "raw")
    } | {("small", "key", "service+page")}
    page = report["status_page"]
    assert page["rounds"] > 0 and page["files_in_flight"] > 0 and page["runs"] >= 1
    assert page["cpu_ms_per_round"] >= 0 and len(page["core_percent_each_run"]) == page["runs"]
    assert all(r["seconds"] > 0 and r["files"] > 0 for r in report["results"])
    assert report["service_peak_rss_mib"] > 0
    assert report["idle_watch"]["waiting_seen"] == report["idle_watch"]["files"]
    assert 0.8 < report["uplink"]["capped"]["of_cap"] <= 1.1
    assert 1.0 <= report["uplink"]["resume"]["sent_x_size"]
    row = report["replicas"]
    assert row["one_replica_seconds"] > 0 and row["three_replicas_seconds"] > 0
    assert all(sum(shares) == row["files"] for shares in row["shares"])
    printed = capsys.readouterr().out
    assert "time service/rclone" in printed and "idle watch" in printed
    assert "status page polled every 1 s" in printed
    assert "replicas, small set" in printed
