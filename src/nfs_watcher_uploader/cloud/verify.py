"""`nfs-watcher-uploader verify <date>/<session>`: check a session in storage against its
manifest, with the service's settings (APP_AZURE_*), touching nothing.

For every file the manifest lists: the blob exists, with the manifest's size and Content-MD5
(and the `md5` metadata, when it has one); with `--download`, its bytes are read and hashed as
well, which also catches a Content-MD5 set by hand. A blob below the session's folder that the
manifest does not list is a problem too, and so is a manifest that says `complete: false`.

Exit status: 0 only when the manifest is complete and everything matches; 1 otherwise (each
problem is named); 2 for a command line that is not understood. Progress is a bar on a
terminal, one line per file otherwise; `--json` prints one JSON report on stdout.
"""

import argparse
import asyncio
import hashlib
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from typing import TextIO

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.blob.aio import BlobClient
from pydantic import ValidationError
from tqdm import tqdm

from nfs_watcher_uploader.blob.storage import Storage
from nfs_watcher_uploader.cloud.manifest import FileEntry, Manifest
from nfs_watcher_uploader.constants import DATE_DIR_RE, MANIFEST_SUFFIX
from nfs_watcher_uploader.errors import CannotStart, UploadError
from nfs_watcher_uploader.items import blob_name_problem, check_session_name, printable
from nfs_watcher_uploader.nfs.layout import manifest_blob
from nfs_watcher_uploader.settings_checks import load_settings

# Blobs checked at once: each check is one small request. Downloads are fewer: each is a stream.
CHECKS_AT_ONCE = 16
DOWNLOADS_AT_ONCE = 4


@dataclass
class Problem:
    blob: str
    problem: str
    # "file": a file of the manifest; "session": the manifest itself, or the folder.
    scope: str = "session"


@dataclass
class Report:
    target: str
    manifest: str
    complete: bool | None = None
    files: int = 0
    checked: int = 0
    bytes_checked: int = 0
    downloaded: bool = False
    problems: list[Problem] = field(default_factory=list[Problem])

    @property
    def ok(self) -> bool:
        return self.complete is True and not self.problems and self.checked == self.files


def parse_target(text: str) -> tuple[str, str]:
    """`20261129/demo` (or `20261129/demo/`, or its manifest's name) -> (date, session).
    Raises ValueError naming what is wrong."""
    text = text.strip().rstrip("/").removesuffix(MANIFEST_SUFFIX)
    date, sep, session = text.partition("/")
    if not sep or not DATE_DIR_RE.fullmatch(date):
        raise ValueError(f"{text!r} is not <YYYYMMDD>/<session>")
    return date, check_session_name(session)


async def verify(
    storage: Storage,
    date: str,
    session: str,
    download: bool = False,
    progress: "Progress | None" = None,
) -> Report:
    """Check the session's blobs against its manifest, telling `progress` as it goes."""
    progress = progress or Progress()
    name = manifest_blob(date, session)
    report = Report(f"{date}/{session}", name, downloaded=download)
    try:
        raw = await (await storage.container.download_blob(name)).readall()
        manifest = Manifest.model_validate_json(raw)
    except ResourceNotFoundError:
        report.problems.append(Problem(name, await _no_manifest(storage, date, session)))
        return report
    except ValidationError as exc:
        report.problems.append(Problem(name, f"not a manifest: {exc.error_count()} errors"))
        return report
    except AzureError as exc:  # archived by a lifecycle rule, say
        report.problems.append(Problem(name, f"cannot read the manifest: {_why(exc)}"))
        return report
    report.complete, report.files = manifest.complete, len(manifest.files)
    progress.total(report.files)
    if not manifest.complete:
        t = manifest.totals
        report.problems.append(
            Problem(
                name,
                f"the session is not complete ({manifest.state}): {t.parked} parked, "
                f"{t.dismissed} dismissed, {t.not_uploaded} not uploaded",
            )
        )
    prefix = f"{date}/{session}/"
    checks = asyncio.Semaphore(DOWNLOADS_AT_ONCE if download else CHECKS_AT_ONCE)

    async def check(entry: FileEntry) -> None:
        try:
            problem = await _check(storage, entry, prefix, download)
        finally:
            checks.release()
        report.checked += 1
        if problem is None:
            report.bytes_checked += entry.size
        else:
            report.problems.append(Problem(entry.blob, problem, "file"))
        progress.checked(entry, problem)

    async with asyncio.TaskGroup() as tg:
        for entry in manifest.files:
            await checks.acquire()  # a task per check in flight, not per file
            tg.create_task(check(entry))
    listed = {entry.blob for entry in manifest.files}
    try:
        async for blob in storage.container.list_blobs(name_starts_with=prefix):
            if blob.name not in listed:
                report.problems.append(Problem(blob.name, "in the session's folder, not listed"))
    except AzureError as exc:
        report.problems.append(Problem(prefix, f"cannot list the folder: {_why(exc)}"))
    return report


async def _no_manifest(storage: Storage, date: str, session: str) -> str:
    """Why there is no manifest: nothing of the session is in storage at all (a wrong date or
    name), or the session has not ended yet."""
    prefix = f"{date}/{session}/"
    try:
        async for _ in storage.container.list_blobs(name_starts_with=prefix):
            return "no manifest: the session has not ended yet"
    except AzureError as exc:
        return f"no manifest, and cannot list {prefix}: {_why(exc)}"
    return (
        f"no such session in storage: nothing under {prefix} (check the date, the UTC day the "
        "session started, and the name)"
    )


async def _check(storage: Storage, entry: FileEntry, prefix: str, download: bool) -> str | None:
    """What is wrong with the blob of `entry`, or None."""
    # Segments such as `..` would be resolved in the URL, to a blob outside the session; a
    # backslash read as '/', to another blob: one rule set says which names are what they say.
    if not entry.blob.startswith(prefix) or blob_name_problem(entry.blob) is not None:
        return f"the manifest lists it, but it is outside {prefix}"
    blob = storage.container.get_blob_client(entry.blob)
    try:
        props = await blob.get_blob_properties()
        md5 = props.content_settings.content_md5
        if props.size != entry.size:
            return f"size {props.size}, the manifest says {entry.size}"
        if md5 is None or bytes(md5).hex() != entry.md5:
            have = "none" if md5 is None else bytes(md5).hex()
            return f"Content-MD5 {have}, the manifest says {entry.md5}"
        meta = (props.metadata or {}).get("md5")
        if meta is not None and meta != entry.md5:
            return f"md5 metadata {meta}, the manifest says {entry.md5}"
        if not download:
            return None
        if props.blob_tier == "Archive":
            return "archived: rehydrate it to check its bytes"
        return await _hash_matches(blob, entry)
    except ResourceNotFoundError:
        return "missing"
    except AzureError as exc:
        return f"cannot read it: {_why(exc)}"


def _why(exc: AzureError) -> str:
    """The status and the service's reason, or the kind of failure: never a URL or a key."""
    status = getattr(exc, "status_code", None)
    reason = getattr(exc, "reason", None)
    return f"{status} {reason}" if status else type(exc).__name__


async def _hash_matches(blob: BlobClient, entry: FileEntry) -> str | None:
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    stream = await blob.download_blob()
    async for chunk in stream.chunks():
        digest.update(chunk)
        size += len(chunk)
    if size != entry.size or digest.hexdigest() != entry.md5:
        got = f"{digest.hexdigest()} ({size} bytes)"
        return f"its bytes hash to {got}, the manifest says {entry.md5}"
    return None


# --- the command ------------------------------------------------------------------------------


HELP = "check a session in storage against its manifest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="<YYYYMMDD>/<session>, e.g. 20261129/demo")
    parser.add_argument("--download", action="store_true", help="also read and hash every blob")
    parser.add_argument("--json", action="store_true", help="print one JSON report on stdout")


def main(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run `verify` as the command line asked; returns the exit status."""
    try:
        date, session = parse_target(args.target)
    except ValueError as exc:
        print(f"nfs-watcher-uploader verify: {exc}", file=err)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=err)
    logging.getLogger("azure").setLevel(logging.ERROR)
    settings = load_settings()
    return asyncio.run(_run(Storage(settings), date, session, args, out, err))


class Progress:
    """What `verify` tells as it goes: nothing, here."""

    def total(self, files: int) -> None:
        pass

    def checked(self, entry: FileEntry, problem: str | None) -> None:
        pass


class _Bar(Progress):
    """A progress bar on a terminal (stderr); problems are printed above it."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self._out = out
        self._bar = tqdm(desc="verify", unit="file", file=err, dynamic_ncols=True)

    def total(self, files: int) -> None:
        self._bar.reset(total=files)

    def checked(self, entry: FileEntry, problem: str | None) -> None:
        self._bar.update(1)
        if problem is not None:
            self._bar.write(_line(entry.blob, problem), file=self._out)

    def close(self) -> None:
        self._bar.close()


class _Lines(Progress):
    """One line per file, for a log or a pipe."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def checked(self, entry: FileEntry, problem: str | None) -> None:
        print(_line(entry.blob, problem), file=self._out, flush=True)


def _line(blob: str, problem: str | None) -> str:
    # Names come from NFS by way of a manifest: never a control character to the terminal.
    blob = printable(blob)
    return f"OK   {blob}" if problem is None else f"FAIL {blob}: {printable(problem)}"


async def _run(
    storage: Storage, date: str, session: str, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    try:
        await storage.connect(create=False)
    except (UploadError, CannotStart) as exc:
        print(f"nfs-watcher-uploader verify: cannot reach storage: {exc}", file=err)
        return 1
    progress: Progress = Progress()
    if err.isatty():
        progress = _Bar(err if args.json else out, err)
    elif not args.json:
        progress = _Lines(out)
    try:
        report = await verify(storage, date, session, args.download, progress)
    finally:
        if isinstance(progress, _Bar):
            progress.close()
        await storage.close()
    _print(report, args.json, out)
    return 0 if report.ok else 1


def _print(report: Report, as_json: bool, out: TextIO) -> None:
    if as_json:
        body = asdict(report) | {"ok": report.ok}
        print(json.dumps(body, indent=1), file=out)
        return
    for p in report.problems:
        if p.scope == "session":  # a file's problem was told as it was found
            print(_line(p.blob, p.problem), file=out)
    verdict = "all match" if report.ok else f"FAILED: {len(report.problems)} problems"
    how = "downloaded and hashed" if report.downloaded else "size and Content-MD5"
    print(
        f"{report.target}: {report.checked} of {report.files} files checked ({how}), "
        f"{report.bytes_checked} bytes; {verdict}",
        file=out,
    )
