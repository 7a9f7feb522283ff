"""Debian's tinyproxy (the binary, no daemon) on a loopback port, started by a test."""

import socket
import subprocess
from pathlib import Path

from .helpers import free_port, wait_for
from .tools import require


def tinyproxy(tmp_path: Path, bind: str) -> tuple[subprocess.Popen[bytes], int]:
    """Debian's tinyproxy on a loopback port; its connections out leave from `bind`."""
    program = require("tinyproxy", "make install installs Debian's tinyproxy-bin (as root)")
    port = free_port()
    conf = tmp_path / "tinyproxy.conf"
    conf.write_text(
        f"Port {port}\nListen 127.0.0.1\nBind {bind}\nTimeout 60\nAllow 127.0.0.1\n"
        f"MaxClients 64\nLogLevel Connect\n"
    )
    with open(tmp_path / "tinyproxy.log", "wb") as log:
        proc = subprocess.Popen([program, "-d", "-c", str(conf)], stdout=log, stderr=log)
    wait_for(lambda: accepting(port), timeout=10, what="tinyproxy to listen")
    return proc, port


def accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
