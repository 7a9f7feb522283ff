"""A single replica's mark (nfs/single_mark) as another user may leave it on the share."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nfs_watcher_uploader.nfs import single_mark

_NOBODY = 65534


@contextmanager
def _as_user(uid: int) -> Iterator[None]:
    """This process's file system calls as `uid` (its effective ids; root's come back)."""
    os.setegid(uid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder any user may write (tmp_path's parents are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="single-mark-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.adversarial
@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root, to touch the mark as a user who cannot write it",
)
def test_a_mark_another_user_left_unwritable_is_set_aside_and_made_anew(
    open_folder: Path,
) -> None:
    """The service runs as its own user (k8s: uid 10001); anyone who may write the share may
    leave `single-replica` as a file that user cannot write (mode 0444, their own). Every touch
    of a running single replica then failed (EACCES), its mark stopped changing, and 90 s later
    the replicas' leader took over the files it was uploading. What stands in the mark's place
    and is not ours to write is set aside, as a link or a folder is, and the mark made anew."""
    planted = open_folder / single_mark.SINGLE_FILE
    planted.write_bytes(b"not yours")
    planted.chmod(0o444)
    with _as_user(_NOBODY):
        single_mark.touch(open_folder)

    mark = os.lstat(planted)
    assert mark.st_uid == _NOBODY, "the mark is not the service's own"
    aside = list((open_folder / "_set_aside").iterdir())
    assert [p.read_bytes() for p in aside] == [b"not yours"]
