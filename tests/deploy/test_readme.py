"""README.md is a contract: it renders as written (every table whole), and its walkthrough runs
as it stands on a fresh clone, `make run` included; the Azurite `make run` starts stops with it.

The walkthrough's own commands are run, nothing substituted: the fenced block under
"## Walkthrough" is written to a file and run with `bash -e` in a clone of this checkout. Its
ports (8000, 10000) may be taken on a shared machine, so it runs in a network namespace of its
own (only a loopback there: no traffic leaves it). `make run` then installs from the wheels and
the npm cache that `make install` left (no network in the namespace)."""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from markdown_it import MarkdownIt

from tests.support.helpers import ROOT, free_port, wait_for
from tests.support.tools import missing

README = ROOT / "README.md"
WALKTHROUGH_S = 300


def _tables_and_paragraphs() -> list[tuple[str, int, int]]:
    tokens = MarkdownIt("commonmark").enable("table").parse(README.read_text())
    return [
        (t.type, t.map[0], t.map[1])
        for t in tokens
        if t.type in ("table_open", "paragraph_open") and t.map is not None
    ]


def test_no_table_row_of_the_readme_renders_as_a_paragraph() -> None:
    """A line that starts with `|` outside a rendered table is a row some text cut off from its
    table (a paragraph inside a table ends it there)."""
    lines = README.read_text().splitlines()
    broken = [
        f"line {i + 1}: {lines[i][:60]}"
        for kind, start, end in _tables_and_paragraphs()
        if kind == "paragraph_open"
        for i in range(start, end)
        if lines[i].lstrip().startswith("|")
    ]
    assert not broken, "table rows rendered as text:\n" + "\n".join(broken)
    assert sum(kind == "table_open" for kind, _, _ in _tables_and_paragraphs()) >= 5


def _walkthrough() -> str:
    text = README.read_text()
    section = text[text.index("## Walkthrough") :]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match is not None, "no bash block in the walkthrough"
    return match.group(1)


def test_the_walkthrough_dates_blob_names_with_todays_utc_date() -> None:
    block = _walkthrough()
    assert "$(date -u +%Y%m%d)" in block
    fixed = re.search(r"\b20[0-9]{2}(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])\b", block)
    assert fixed is None, f"a fixed date in the walkthrough: {fixed}"


@dataclass
class Walked:
    checkout: Path
    status: int
    output: str


def _environment(checkout: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "OTEL_", "PIP_"))}
    env |= {
        # Installed from what `make install` left: the namespace has no network.
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(ROOT / ".tools" / "wheels"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "npm_config_offline": "true",
        "OTEL_SDK_DISABLED": "true",
    }
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))
    )
    return env


def _namespace() -> list[str] | None:
    """A command prefix that runs in a network namespace of its own with its loopback up, or
    None where one cannot be made."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        return None
    probe = subprocess.run(
        [unshare, "--net", "--", ip, "link", "set", "lo", "up"], capture_output=True, timeout=30
    )
    if probe.returncode != 0:
        return None
    return [unshare, "--net", "--", "bash", "-c", f'{ip} link set lo up && exec "$@"', "ns"]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _processes_in(folder: Path) -> list[int]:
    """Processes whose working directory is `folder` or below (what `make run` started)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd == folder or folder in cwd.parents:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def walked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walked]:
    """A fresh clone of this checkout, the walkthrough run in it."""
    for program in ("git", "make", "curl", "npm"):
        if shutil.which(program) is None:
            missing(f"{program} not found: the walkthrough needs it")
    if not (ROOT / ".tools" / "wheels.ok").exists():
        missing("no .tools/wheels: run `make install` (it keeps the wheels `make run` installs)")
    checkout = tmp_path_factory.mktemp("fresh") / "checkout"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(checkout)], check=True, timeout=120)
    script = checkout.parent / "walkthrough.sh"
    script.write_text(_walkthrough())
    prefix = _namespace()
    if prefix is None and not (_port_free(8000) and _port_free(10000)):
        missing("no network namespace can be made here, and port 8000 or 10000 is taken")
    log = checkout.parent / "walkthrough.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*(prefix or []), "bash", "-e", str(script)],
            cwd=checkout,
            env=_environment(checkout),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # `make run &` failing leaves the walkthrough waiting for /readyz for ever: give up then.
    deadline = time.monotonic() + WALKTHROUGH_S
    while proc.poll() is None and time.monotonic() < deadline:
        if "make: ***" in log.read_text(errors="replace"):
            break
        time.sleep(0.5)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    output = log.read_text(errors="replace")
    try:
        yield Walked(checkout, proc.returncode, output)
    finally:
        for pid in _processes_in(checkout):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.timeout(WALKTHROUGH_S + 120)
def test_the_readme_walkthrough_runs_as_written_on_a_fresh_checkout(walked: Walked) -> None:
    tail = walked.output[-6000:]
    assert walked.status == 0, tail
    today = time.strftime("%Y%m%d", time.gmtime())
    assert f"{today}/demo/recording.bin" in walked.output, tail
    assert f"{today}/demo.manifest.json" in walked.output, tail
    assert f"{today}/demo: 1 of 1 files checked" in walked.output and "all match" in tail, tail
    # `kill %1` ended `make run`, and with it the service and the Azurite it started.
    wait_for(lambda: not _processes_in(walked.checkout), timeout=60, what="make run to end")


def test_make_run_installs_only_what_running_needs(walked: Walked) -> None:
    assert walked.status == 0, walked.output[-3000:]
    venv = walked.checkout / ".venv" / "bin"
    assert (venv / "nfs-watcher-uploader").exists()
    for tool in ("pytest", "ruff", "pyright", "hadolint", "rclone", "py-spy"):
        assert not (venv / tool).exists(), f"make run installed {tool}"
    tools = walked.checkout / ".tools"
    for debian in ("fuse3.ok", "prometheus.ok", "tinyproxy.ok"):
        assert not (tools / debian).exists(), f"make run set up {debian}"


def _make_run(checkout: Path, **settings: str) -> tuple[subprocess.Popen[bytes], int, int]:
    """`make run` in `checkout` on free ports (a .env overrides .env.example), in its own
    process group as a terminal would start it; returns it, the API port and Azurite's."""
    api, blob = free_port(), free_port()
    url = f"http://127.0.0.1:{blob}/devstoreaccount1"
    example = (checkout / ".env.example").read_text()
    conn = re.search(r'APP_AZURE_CONNECTION_STRING="(.*)"', example)
    assert conn is not None
    values = {
        "APP_PORT": str(api),
        "APP_HOST": "127.0.0.1",
        "AZURITE_PORT": str(blob),
        "APP_AZURE_ACCOUNT_URL": url,
        "APP_AZURE_CONNECTION_STRING": conn.group(1).replace(
            "http://127.0.0.1:10000/devstoreaccount1", url
        ),
        **settings,
    }
    (checkout / ".env").write_text("".join(f'{k}="{v}"\n' for k, v in values.items()))
    proc = subprocess.Popen(
        ["make", "run"],
        cwd=checkout,
        env=_environment(checkout),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return proc, api, blob


def _ready(proc: subprocess.Popen[bytes], port: int) -> bool:
    assert proc.poll() is None, "make run ended"
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _assert_all_stopped(proc: subprocess.Popen[bytes], checkout: Path, blob: int) -> int:
    status = proc.wait(60)
    wait_for(lambda: not _processes_in(checkout), timeout=30, what="every process to end")
    assert _port_free(blob), "Azurite still listens"
    assert not (checkout / ".tools" / "azurite.pid").exists()
    return status


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_the_azurite_make_run_started_stops_with_it(walked: Walked, how: str) -> None:
    assert walked.status == 0, walked.output[-3000:]
    wait_for(lambda: not _processes_in(walked.checkout), timeout=60, what="the walkthrough")
    proc, api, blob = _make_run(walked.checkout)
    try:
        wait_for(lambda: _ready(proc, api), timeout=60, what="make run ready")
        if how == "ctrl-c":  # the terminal signals the whole foreground group
            os.killpg(proc.pid, signal.SIGINT)
        else:  # a supervisor signals make alone; make passes it on
            proc.send_signal(signal.SIGTERM)
        _assert_all_stopped(proc, walked.checkout, blob)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_the_azurite_make_run_started_stops_when_the_service_exits(walked: Walked) -> None:
    assert walked.status == 0, walked.output[-3000:]
    wait_for(lambda: not _processes_in(walked.checkout), timeout=60, what="the walkthrough")
    proc, _, blob = _make_run(walked.checkout, APP_AZURE_CONTAINER="Not_A_Container")
    try:
        status = _assert_all_stopped(proc, walked.checkout, blob)
        assert status != 0  # make reports the service's exit status 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
