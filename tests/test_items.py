"""The domain's rules: which names can be blobs, which paths stay inside their session."""

import pytest

from nfs_watcher_uploader.items import blob_name_problem, path_problem


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("d/s/cam\\x.bin", "'\\'"),
        ("d/s/x\\", "end with"),
        ("d/s/x.", "end with"),
        ("d/s/x/", "end with"),
        ("d/s/a//b", "segments"),
        ("d/s/./b", "segments"),
        ("d/s/../b", "segments"),
        ("d/s/" + "a" * 1021, "characters"),
        ("d/s/" + "a/" * 253 + "b", "segments"),
        ("d/s/\udcff.bin", "UTF-8"),
    ],
)
def test_one_rule_set_refuses_every_name_storage_would_keep_as_another(name: str, why: str) -> None:
    problem = blob_name_problem(name)
    assert problem is not None and why in problem


def test_a_name_within_the_rules_is_a_blob_name() -> None:
    assert blob_name_problem("20261204/s/cam 1/ré.c.bin") is None
    assert blob_name_problem("d/s/" + "a/" * 251 + "b") is None  # 254 segments


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "", "a\0b"])
def test_a_path_read_back_that_would_leave_its_session_folder_is_refused(rel: str) -> None:
    assert path_problem(rel) is not None


def test_a_path_below_its_session_folder_is_one() -> None:
    assert path_problem("cam2/rec1.bin") is None
    assert path_problem("cam\\x.bin") is None  # a file name on Linux; not a blob name
