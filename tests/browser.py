"""A real browser for the tests: Playwright driving the system's Chromium (``make
system-deps`` installs Debian's ``chromium``), never a downloaded one. Where no Chromium
can be found the browser tests are skipped with a message saying so.

Screenshots go under ``var/screenshots/`` of the project, for people to look at."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from lessonstream.infra import ROOT

SCREENSHOTS = ROOT / "var" / "screenshots"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    """``CHROMIUM`` if set, else the first Chromium on the PATH."""
    given = os.environ.get("CHROMIUM", "")
    if given:
        return given
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


# One Playwright (and one Chromium) per test, not per session: Playwright's sync API runs
# an event loop on the test's thread while it is open, which would stop every later test
# of the same process from running its own (asyncio.run, pytest-asyncio).
@pytest.fixture
def browser() -> Iterator[Browser]:
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium found (run `make system-deps`, or set CHROMIUM to its path): browser tests skipped")
    with sync_playwright() as playwright:
        # No sandbox: the tests run as root in CI containers, where Chromium's sandbox cannot start.
        # Media plays when a test starts it, as it would after a click on the player.
        launched = playwright.chromium.launch(
            executable_path=path, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page: Page, name: str) -> Path:
    """Write a full-page screenshot as ``var/screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^a-z0-9-]+', '-', name.lower())}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def until(page: Page, script: str, *, what: str, timeout: float = 30.0) -> Any:
    """Poll ``script`` (an expression evaluated in the page) until it is truthy; its value.

    Playwright's own ``wait_for_function`` evaluates a string with ``eval``, which the web
    app's content security policy rightly refuses."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        page.wait_for_timeout(100)
