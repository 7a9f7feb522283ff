"""Programs from outside the venv that some tests need (Debian's prometheus, podman).

`make install` installs them where it can. Where one is missing a test skips and says why; under
CI (CI=true) it fails instead, so that a missing install step cannot pass as a green run.
"""

import os
import shutil

import pytest


def missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a skip here would hide a broken set-up)")
    pytest.skip(reason)


def require(program: str, hint: str) -> str:
    """The path of `program`, or skip (fail under CI) saying how to get it."""
    path = shutil.which(program)
    if path is None:
        missing(f"{program} not found: {hint}")
        raise AssertionError("unreachable")
    return path
