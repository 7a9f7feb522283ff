"""The Azurite that `make run` starts (scripts/azurite-dev) is the one it reports: one that
could not take its port is never taken for started, and nothing of it is left running."""

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import ROOT, free_port

AZURITE_TOOLS = ROOT / ".tools" / "azurite"


@pytest.fixture
def checkout(tmp_path: Path) -> Iterator[Path]:
    """The script in a folder of its own, with the Azurite `make install` installed."""
    if not (AZURITE_TOOLS / "node_modules" / ".bin" / "azurite-blob").exists():
        pytest.skip("no Azurite in .tools: run `make install`")
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "azurite-dev", tmp_path / "scripts" / "azurite-dev")
    (tmp_path / ".tools").mkdir()
    (tmp_path / ".tools" / "azurite").symlink_to(AZURITE_TOOLS)
    yield tmp_path
    pidfile = tmp_path / ".tools" / "azurite.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _azurite_dev(checkout: Path, port: int, command: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"AZURITE_PORT": str(port)}
    return subprocess.run(
        [str(checkout / "scripts" / "azurite-dev"), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.adversarial
def test_an_azurite_that_cannot_take_its_port_is_never_reported_started(checkout: Path) -> None:
    """Another program (another clone's `make run`, say) holds the port: the Azurite started
    here dies at once, and the port answers all the same. It was reported as "Azurite on
    127.0.0.1:<port>" (exit 0), and `make run` went on to upload into whatever held the port;
    now start-up says the port is taken and fails.

    Review of issues 19/20, finding 5.
    """
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen(8)
        started = _azurite_dev(checkout, port, "start")
        assert started.returncode != 0, started.stdout + started.stderr
        assert str(port) in started.stderr and "taken" in started.stderr, started.stderr
        assert _azurite_dev(checkout, port, "running").returncode != 0  # nothing of ours runs


def test_the_azurite_it_starts_answers_on_its_port_and_stops(checkout: Path) -> None:
    port = free_port()
    started = _azurite_dev(checkout, port, "start")
    assert started.returncode == 0, started.stderr
    assert f"Azurite on 127.0.0.1:{port}" in started.stdout
    assert _azurite_dev(checkout, port, "running").returncode == 0
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    assert _azurite_dev(checkout, port, "stop").returncode == 0
    assert _azurite_dev(checkout, port, "running").returncode != 0
    assert not (checkout / ".tools" / "azurite.pid").exists()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free again


@pytest.mark.adversarial
def test_a_stale_pid_file_never_makes_it_stop_another_program(checkout: Path) -> None:
    """The pid file outlives its Azurite (a `kill -9` of make run, a reboot), and the pid is
    given to another program: `stop` (make run's exit, make azurite-stop, make clean) signalled
    that program, and `make run` took it for a running Azurite and started none. Only an
    Azurite is ever taken for ours.

    Review of issues 19/20, finding 6.
    """
    other = subprocess.Popen(["sleep", "60"])
    try:
        (checkout / ".tools" / "azurite.pid").write_text(f"{other.pid}\n")
        port = free_port()
        assert _azurite_dev(checkout, port, "running").returncode != 0
        _azurite_dev(checkout, port, "stop")
        assert other.poll() is None, "stop signalled a program that is not its Azurite"
    finally:
        other.kill()
        other.wait()
