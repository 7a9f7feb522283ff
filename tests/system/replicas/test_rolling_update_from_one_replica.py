"""A rolling update from one replica (`k8s/`, APP_COORDINATION=none) to replicas
(`k8s/replicas/`, maxSurge 1): the new replicas start while the old process still runs and
uploads. The file it claimed stays its own until it has stopped (nfs/single_mark)."""

import signal
from pathlib import Path

from nfs_watcher_uploader.nfs import single_mark
from tests.support.helpers import Azurite, ServiceProcess, make_settings
from tests.support.replicas import cluster, md5, until, write


def test_replicas_started_beside_a_running_single_replica_leave_it_the_file_it_claimed(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    with cluster(tmp_path, azurite, container_name, size=1, fuse=False) as c:
        single = ServiceProcess(
            make_settings(
                tmp_path / "single",
                azurite,
                container_name,
                nfs_incoming_dir=c.incoming,
                nfs_processing_root=c.processing,
                min_file_age_s=0.5,
                poll_interval_s=0.2,
                bandwidth_limit=512 * 1024,  # an upload of several seconds to stop it in
            ),
            tmp_path / "single.log",
        )
        single.start()
        mark = c.processing / single_mark.SINGLE_FILE
        assert single_mark.signature(c.processing) is not None, "no mark while it runs"
        with single.client as api:
            r = api.post("/v1/watch/start", json={"session_name": "s1"})
        assert r.status_code == 200, r.text
        date = r.json()["date_prefix"]
        data = b"recorded while the update rolls" * 100_000
        write(c.incoming / "s1" / "big.bin", data)
        claimed = c.processing / date / "s1" / "big.bin"
        until(claimed.exists, 30, "claimed by the single one")
        assert single.proc is not None
        single.proc.send_signal(signal.SIGSTOP)  # mid-upload, for as long as the test needs
        try:
            assert claimed.exists(), "uploaded before it could be stopped mid-upload"
            c.start()
            until(
                lambda: _saw_the_mark(c.replicas[0].log) or not claimed.exists(),
                60,
                "the leader's look at the single replica's tree",
            )
            assert claimed.exists(), "taken from under the single replica"
        finally:
            single.proc.send_signal(signal.SIGCONT)
        blob = f"{date}/s1/big.bin"
        until(lambda: blob in c.blob_names(), 60, "the single replica's upload")
        assert single.signal(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert not mark.exists(), "the mark outlived its clean stop"

        assert md5(c.blobs()[blob]) == md5(data)
        assert c.commit_counts()[blob] == 0, "the replica committed the blob too"
        assert [n for n in c.blob_names() if "~" in n] == []
        assert _saw_the_mark(c.replicas[0].log)


def _saw_the_mark(log: Path) -> bool:
    return "seems to run on this share" in log.read_text()
