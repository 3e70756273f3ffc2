"""A real headless Chromium for the dashboard's tests: Debian's /usr/bin/chromium through Playwright.

`.ci/run` installs the browser (apt's `chromium`) when it is missing; Playwright's own browser
download (`playwright install`) is never used. With CI set, a missing browser or Playwright is a
failure (tests/support/services.py `unavailable`), elsewhere the tests skip.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.services import unavailable

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("DORA_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# gitignored (var/); each test's screenshot is saved here, named after the test
SCREENSHOTS = Path(os.environ.get("DORA_TEST_SCREENSHOTS", ROOT / "var" / "screenshots"))


@contextmanager
def chromium() -> Iterator[object]:
    """A Playwright Browser on Debian's Chromium, closed at the end."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        unavailable("Playwright (the dev extra)", error, problem="is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable("Chromium", CHROMIUM, problem="is not installed (.ci/run installs Debian's chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def screenshot_path(test_name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', test_name)[:120]}.png"
