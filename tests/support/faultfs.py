"""A FUSE passthrough filesystem that misbehaves like NFS on a bad day, under a test's control.

It mounts a backing folder and, as the test says:
- fails a fraction of getattr/open/rename/readdir calls with ESTALE, and of reads with EIO;
- adds latency to every call, or to reads only (a slow disk behind the server);
- caches attributes and entries for N seconds (FUSE attr_timeout/entry_timeout, like `actimeo`);
- stalls every call until released, like a hard mount whose server went away;
- fails every getattr of chosen names with an errno, as NFS does for one damaged file.
Files are written by "another client" straight into the backing folder, as a recorder on the
NFS server would. Every injected fault is counted.
"""

import errno
import os
import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mfusepy import FUSE, FuseOSError, Operations

STAT_KEYS = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime",
             "st_ctime", "st_ino")  # fmt: skip


class Faults:
    """What to inject; thread-safe, changeable while mounted."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.estale = 0.0  # fraction of getattr/open/rename/readdir calls
        self.eio = 0.0  # fraction of reads
        self.latency = 0.0  # seconds added to every call
        self.read_latency = 0.0  # seconds added to every read
        # name -> errno: every getattr of a path ending in that name fails with it.
        self.broken: dict[str, int] = {}
        self._running = threading.Event()
        self._running.set()
        self.injected: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def stall(self) -> None:
        """From now on every call blocks until `release`."""
        self._running.clear()

    def release(self) -> None:
        self._running.set()

    def gate(self, op: str, estale: bool = False, eio: bool = False) -> None:
        self._running.wait()
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            self.calls[op] += 1
            roll = self._rng.random()
            if estale and roll < self.estale:
                self.injected[f"{op}:ESTALE"] += 1
                raise FuseOSError(errno.ESTALE)
            if eio and roll < self.eio:
                self.injected[f"{op}:EIO"] += 1
                raise FuseOSError(errno.EIO)


def _mode(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_mode
    except FileNotFoundError:
        return 0


def _oserror(fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            if isinstance(exc, FuseOSError):
                raise
            raise FuseOSError(exc.errno or errno.EIO) from exc

    return wrapper


class FaultFS(Operations):
    """Passthrough to `root`, with faults. Times in nanoseconds, like the backing stat."""

    use_ns = True

    def __init__(self, root: Path, faults: Faults) -> None:
        self.root = str(root)
        self.f = faults

    def _p(self, path: str) -> str:
        return self.root + path

    @_oserror
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        self.f.gate("getattr", estale=True)
        if (code := self.f.broken.get(path.rpartition("/")[2])) is not None:
            self.f.injected[f"getattr:{errno.errorcode[code]}"] += 1
            raise FuseOSError(code)
        st = os.lstat(self._p(path))
        attrs = {k: getattr(st, k) for k in STAT_KEYS}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    @_oserror
    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        self.f.gate("readdir", estale=True)
        # With use_ino each entry needs its inode: glibc's readdir skips entries with d_ino 0.
        with os.scandir(self._p(path)) as it:
            entries = [(e.name, {"st_ino": e.inode(), "st_mode": _mode(e)}, 0) for e in it]
        return [(".", {"st_ino": 1}, 0), ("..", {"st_ino": 1}, 0), *entries]

    @_oserror
    def open(self, path: str, flags: int) -> int:
        self.f.gate("open", estale=True)
        return os.open(self._p(path), flags)

    @_oserror
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        self.f.gate("create", estale=True)
        return os.open(self._p(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    @_oserror
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        self.f.gate("read", eio=True)
        if self.f.read_latency:
            time.sleep(self.f.read_latency)
        return os.pread(fh, size, offset)

    @_oserror
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self.f.gate("write")
        return os.pwrite(fh, data, offset)

    @_oserror
    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self.f.gate("truncate")
        os.truncate(self._p(path), length)
        return 0

    @_oserror
    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    @_oserror
    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self.f.gate("fsync")
        os.fsync(fh)
        return 0

    @_oserror
    def rename(self, old: str, new: str) -> int:
        self.f.gate("rename", estale=True)
        os.rename(self._p(old), self._p(new))
        return 0

    @_oserror
    def unlink(self, path: str) -> int:
        self.f.gate("unlink")
        os.unlink(self._p(path))
        return 0

    @_oserror
    def mkdir(self, path: str, mode: int) -> int:
        self.f.gate("mkdir")
        os.mkdir(self._p(path), mode)
        return 0

    @_oserror
    def rmdir(self, path: str) -> int:
        self.f.gate("rmdir")
        os.rmdir(self._p(path))
        return 0

    @_oserror
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        self.f.gate("utimens")
        if times is None:
            os.utime(self._p(path))
        else:
            os.utime(self._p(path), ns=times)
        return 0

    @_oserror
    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._p(path), mode)
        return 0

    @_oserror
    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._p(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
                "f_flag", "f_frsize", "f_namemax")  # fmt: skip
        return {k: getattr(st, k) for k in keys}


@contextmanager
def mounted(
    backing: Path, mountpoint: Path, faults: Faults, cache_s: float = 0.0
) -> Iterator[Path]:
    """Mount `backing` at `mountpoint` through FaultFS for the duration of the block."""
    backing.mkdir(parents=True, exist_ok=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    ops = FaultFS(backing, faults)
    options = {
        "use_ino": True,  # the backing inode numbers, stable like NFS file ids
        # Enough threads that slow reads do not queue every other call behind them, as an
        # NFS client's many RPC slots would not (libfuse's default is 10).
        "max_threads": 64,
        "attr_timeout": cache_s,
        "entry_timeout": cache_s,
        "negative_timeout": 0,
    }

    def serve() -> None:
        FUSE(ops, str(mountpoint), foreground=True, nothreads=False, **options)

    cwd = os.getcwd()
    thread = threading.Thread(target=serve, daemon=True, name="faultfs")
    thread.start()
    deadline = time.monotonic() + 10
    while not os.path.ismount(mountpoint):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("FUSE mount did not come up")
        time.sleep(0.02)
    # libfuse's start-up changes the whole process's folder to / just after mounting.
    moved = time.monotonic() + 2
    while os.getcwd() == cwd and time.monotonic() < moved:
        time.sleep(0.01)
    os.chdir(cwd)
    try:
        yield mountpoint
    finally:
        faults.release()
        faults.estale = faults.eio = faults.latency = faults.read_latency = 0.0
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        thread.join(10)


def fuse_available() -> str | None:
    """None when this machine can mount FUSE here, else why not."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if subprocess.run(["which", "fusermount3"], capture_output=True).returncode != 0:
        return "fusermount3 not installed (Debian package fuse3)"
    return None
