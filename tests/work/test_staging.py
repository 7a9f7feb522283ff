"""On the staging disk the service removes only what it staged itself."""

from pathlib import Path
from typing import Any

import pytest

from tests.support.helpers import (
    write_file,
)


@pytest.mark.adversarial
def test_start_up_never_deletes_folders_under_the_staging_root_it_did_not_create(
    service_factory: Any, settings_factory: Any, tmp_path: Path
) -> None:
    """`clear_staging` removes every folder named like a date under APP_LOCAL_STAGING_ROOT at
    start, and GC's `_prune_staging` every file below `<date>/<session>/` of a session it does
    not know: neither can tell its own folders from anyone else's. Point the staging root at a
    local disk that also holds recordings laid out by date (a common layout) and they are gone.

    Should: only what this service staged is removed (e.g. a marker file or its own subfolder
    under the root), or start-up refuses a staging root that holds foreign data.

    Finding adversary-review-J (second adversarial review, issue 10).
    """
    settings = settings_factory()
    precious = write_file(settings.local_staging_root / "20250101" / "cam1" / "take.bin", b"x")
    running = service_factory(settings)
    assert running.get("/readyz").status_code == 200
    assert precious.exists(), "a recording under <staging root>/20250101/ was deleted at start"
