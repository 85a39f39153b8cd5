"""A live server, a real worker and headless Debian Chromium driven by Playwright.

The server and worker fixtures are the end-to-end ones (tests/e2e/conftest.py) on a
SQLite database of this package's own, with a small upload limit so the page's own
limit check can be exercised with a small file. The browser is the system's Chromium
(found or installed by ``.ci/chromium.sh``, which ``make test`` runs); Playwright never
downloads one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import migrate
from tests.conftest import ROOT, make_settings
from tests.e2e.conftest import (  # noqa: F401  (fixtures, reused)
    e2e_redis_url,
    e2e_worker,
    live_server,
)

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAX_UPLOAD = 256 * 1024
SCREENSHOTS = ROOT / "test-output" / "browser"


@pytest.fixture(scope="package")
def e2e_settings(tmp_path_factory, e2e_redis_url):  # noqa: F811
    redis_url = e2e_redis_url
    tmp = tmp_path_factory.mktemp("browser")
    settings = make_settings(
        tmp, f"sqlite:///{tmp}/atelier.db", redis_url, max_upload_bytes=MAX_UPLOAD
    )
    migrate.upgrade(settings.database_url)
    return settings


def find_chromium() -> str | None:
    """The browser .ci/chromium.sh found (``ATELIER_TEST_CHROMIUM``), else one on PATH."""
    given = os.environ.get("ATELIER_TEST_CHROMIUM", "")
    if given and os.access(given, os.X_OK):
        return given
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


@pytest.fixture(scope="package")
def browser() -> Iterator:
    chromium = find_chromium()
    if chromium is None:
        pytest.fail(
            "Chromium is missing: `make test` finds or installs it (.ci/chromium.sh); "
            "or set ATELIER_TEST_CHROMIUM"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


def _open_page(browser, base: str, **options) -> Iterator:
    """A fresh browser context; every request it made must have stayed on the server."""
    context = browser.new_context(viewport={"width": 1100, "height": 900}, **options)
    context.set_default_timeout(20_000)
    requests: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    outside = [u for u in requests if not u.startswith((base, "data:", "blob:"))]
    assert not outside, f"pages fetched from outside the server: {outside}"
    assert not errors, f"JavaScript errors: {errors}"


@pytest.fixture
def page(browser, live_server, e2e_worker) -> Iterator:  # noqa: F811
    yield from _open_page(browser, live_server)


@pytest.fixture
def nojs_page(browser, live_server, e2e_worker) -> Iterator:  # noqa: F811
    yield from _open_page(browser, live_server, java_script_enabled=False)
