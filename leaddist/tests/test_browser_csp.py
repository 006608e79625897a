"""The Content-Security-Policy in a real browser: /api/docs and the admin run without violations.

A violation (an inline script or style, an asset from elsewhere) is a console error in
Chromium. The dashboard's pages are covered the same way by dashboard/tests/test_browser.py.
Headless Chromium from Debian's ``chromium`` package, driven by Playwright; without them the
test skips, unless REQUIRE_BROWSER=1 (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from dashboard.tests.test_browser import CHROMIUM_ARGS

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
PASSWORD = "csp-browser-test-pw"
PAGES = [
    "/admin/",
    "/admin/providers/provider/1/change/",
    "/admin/providers/service/3/change/",
    "/admin/allocation/lead/",
    "/request-service",
]


@pytest.fixture
def chromium(transactional_db, monkeypatch):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "Playwright is not installed (pip install -r requirements-dev.txt)"
    else:
        missing = None if Path(CHROMIUM).exists() else f"no Chromium at {CHROMIUM}"
    if missing:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def staff_login(seeded_tx):
    """Database work happens before the browser starts, so no connection is left open."""
    get_user_model().objects.create_superuser("csp", "csp@example.com", PASSWORD)


@pytest.mark.django_db(transaction=True)
def test_api_docs_and_admin_run_under_the_policy(staff_login, live_server, chromium):
    page = chromium.new_page()
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(live_server.url + "/api/docs")
    page.fill("#id_username", "csp")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(live_server.url + "/api/docs")
    page.wait_for_selector(".opblock-summary", timeout=10_000)
    operations = page.locator(".opblock-summary-path").all_inner_texts()
    for path in PAGES:
        page.goto(live_server.url + path)
        page.wait_for_load_state("load")

    assert "/api/leads/{lead_id}" in operations
    assert errors == []
