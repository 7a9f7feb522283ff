"""Bind mounts for tests that need the layout of a compose file or a read-only share (root
only): `mount --bind`, undone on the way out whatever happens."""

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@contextmanager
def bind_mount(src: Path, dst: Path, read_only: bool = False) -> Iterator[Path]:
    """`src` mounted again at `dst` (read-only if asked); skips where mounting is not allowed."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    done = _mount("--bind", str(src), str(dst))
    if done.returncode != 0:
        pytest.skip(f"mount --bind is not permitted here: {done.stderr.strip()}")
    try:
        if read_only:
            ro = _mount("-o", "remount,bind,ro", str(dst))
            assert ro.returncode == 0, ro.stderr
        yield dst
    finally:
        subprocess.run(["umount", "-l", str(dst)], capture_output=True, timeout=30)
