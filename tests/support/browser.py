"""A real headless Chromium for the dashboard's tests: Debian's /usr/bin/chromium through Playwright.

`dashboard_page` is the page every dashboard test drives (a fresh profile, a screenshot at the end,
an uncaught error in the page a failure) and `sign_in` signs it in with a key, as a user does.
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


@contextmanager
def dashboard_page(browser, base_url: str, test_name: str, **context_options) -> Iterator[object]:
    """A page of a fresh browser profile (empty sessionStorage) on `base_url`, 1400x1000, 30 s timeouts; at
    the end a full-page screenshot named after the test, then any uncaught error in the page fails it."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1400, "height": 1000}, **context_options)
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    try:
        page.screenshot(path=str(screenshot_path(test_name)), full_page=True)
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def sign_in(page, key: str) -> None:
    """The sign-in form filled in and sent; returns once the signed-in navigation shows."""
    page.goto("/ui/")
    page.fill("#api-key", key)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#nav:not([hidden])")
