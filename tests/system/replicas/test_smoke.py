"""Smoke: two replicas on one share share a session's files and drain it."""

from pathlib import Path

from tests.support.helpers import Azurite
from tests.support.replicas import cluster, until, write


def test_two_replicas_upload_a_session_once_and_drain_it(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    with cluster(tmp_path, azurite, container_name, size=2, fuse=False) as c:
        c.start()
        r = c.replicas[0].post("/v1/watch/start", json={"session_name": "s1"})
        assert r.status_code == 200, r.text
        date = r.json()["date_prefix"]
        until(lambda: c.replicas[1].get("/v1/sessions/s1").status_code == 200, 20, "seen")
        expected = {}
        for i in range(30):
            data = f"file {i}".encode() * 100
            write(c.incoming / "s1" / f"f{i:02d}.bin", data)
            expected[f"{date}/s1/f{i:02d}.bin"] = data
        until(lambda: len(c.blob_names()) >= 30, 60, "30 blobs")
        assert c.blobs() == expected
        assert c.replicas[1].post("/v1/watch/stop").status_code == 200
        until(
            lambda: c.replicas[0].get("/v1/sessions/s1").json()["state"] == "drained", 90, "drained"
        )
        commits = c.commit_counts()
        assert {k: n for k, n in commits.items() if k in expected and n != 1} == {}
        assert c.uploaded_lines() == dict.fromkeys(expected, 1)  # each counted once
