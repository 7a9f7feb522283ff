"""A real browser for the status page: Debian's chromium driven by Playwright's Python package
(its own browser download is not possible here). `make install` installs chromium through apt
when it is missing and we are root; elsewhere the browser tests say why they skip, and fail
under CI=true."""

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _unavailable() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (make install installs the dev extras)"
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        return "Debian's chromium is not installed (make install installs it when run as root)"
    return None


def require_browser() -> None:
    """Skip (fail under CI=true) where no browser can run, saying why."""
    if (why := _unavailable()) is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs the browser tests: {why}")
        pytest.skip(why)


@dataclass
class Watched:
    """A page with everything it said: dialogs (an alert from injected script would be one),
    console errors (a CSP violation is one), uncaught errors, and every request it made."""

    page: Any
    dialogs: list[str] = field(default_factory=list[str])
    errors: list[str] = field(default_factory=list[str])
    requests: list[tuple[str, dict[str, str]]] = field(
        default_factory=list[tuple[str, dict[str, str]]]
    )

    def __post_init__(self) -> None:
        def dialog(d: Any) -> None:
            self.dialogs.append(d.message)
            d.dismiss()

        self.page.on("dialog", dialog)
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append((r.url, dict(r.headers))))


def launch() -> Iterator[Any]:
    """A headless chromium (for the `browser` fixture), closed afterwards."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
            headless=True,
            args=ARGS,
        )
        try:
            yield launched
        finally:
            launched.close()


def new_page(browser: Any, width: int = 1280, height: int = 900) -> Watched:
    context = browser.new_context(viewport={"width": width, "height": height})
    return Watched(context.new_page())
