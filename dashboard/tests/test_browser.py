"""SPEC §6 in a real browser: the dashboard moves within a second, without a reload, and its
status says only what is true: live, signed out, or reconnecting.

Headless Chromium from Debian's ``chromium`` package, driven by Playwright for Python, against
daphne serving the committed test database (pytest-django's live_server is WSGI and cannot
stream SSE). Without Chromium or Playwright the test skips, unless REQUIRE_BROWSER=1 (CI),
which turns the skip into a failure. Screenshots go to test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from allocation.services import submit_lead
from credentials.services import create_api_key
from dashboard.tests.support import STAFF_PASSWORD, lead_input
from delivery.models import Delivery
from delivery.tests.support import attempt_now, endpoint
from leaddist.tests.asgi_server import ARTIFACTS, free_port
from webhooks.tests.helpers import SECRET

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # The dashboard and the test tools are two tabs, as an operator would have them side by
    # side; a hidden tab's timers must not be throttled while the test watches it.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]
LIVE_MS = 1000  # SPEC §6: the dashboard changes within 1 second of a commit


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -r requirements-dev.txt)"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture
def launch_chromium(transactional_db):
    """Start headless Chromium when called: after the test's database work, because the
    database connection of a thread running Playwright's event loop would be a separate one
    that nothing closes. Scripts given to the page are functions: its CSP forbids eval."""
    missing = _missing_browser()
    if missing:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    stack = ExitStack()

    def launch():
        playwright = stack.enter_context(sync_playwright())
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        stack.callback(chromium.close)
        return chromium

    with stack:
        yield launch


def _console_errors(page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def _in_thread(work: Callable[[], object]) -> object:
    """Database work while the browser runs: Playwright's event loop owns this thread, where
    Django refuses to query. The thread closes its own connection."""

    def run() -> object:
        try:
            return work()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def _page_errors(page) -> list[str]:
    """Script errors only: a refused or unreachable server logs failed loads, as it should."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def _remaining(page, provider_id: int) -> str:
    return page.get_attribute(f"#provider-{provider_id}", "data-remaining")


def _sign_in(page, url: str) -> None:
    page.fill("#id_username", "operator")
    page.fill("#id_password", STAFF_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(url)


def _open_live_dashboard(context, server_url: str):
    page = context.new_page()
    page.goto(server_url + "/dashboard")
    _sign_in(page, server_url + "/dashboard")
    page.wait_for_selector('[data-live-status][data-state="live"]', timeout=5000)
    page.evaluate("() => { window.loadedOnce = true; }")
    return page


def _status(page) -> str:
    """What the status says, with its sign-in link when shown; not the last event's time."""
    text = page.inner_text("[data-live-text]").strip()
    link = page.locator("[data-live-signin]")
    return f"{text} {link.inner_text().strip()}" if link.is_visible() else text


def _header_shot(page, name: str) -> None:
    """The top of the dashboard: its status, the summary and the first rows."""
    page.screenshot(path=ARTIFACTS / name, clip={"x": 0, "y": 0, "width": 1280, "height": 480})


@pytest.mark.django_db(transaction=True)
def test_dashboard_and_test_tools_in_a_real_browser(
    seeded_tx, asgi_server_factory, launch_chromium
):
    get_user_model().objects.create_user(
        username="operator", password=STAFF_PASSWORD, is_staff=True
    )
    _, api_key = create_api_key(name="browser-test")
    server = asgi_server_factory(WEBHOOK_SECRET=SECRET)
    browser = launch_chromium()
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    dashboard = context.new_page()
    errors = _console_errors(dashboard)

    # Staff only: the dashboard sends an anonymous visitor to the admin login first.
    dashboard.goto(server.url + "/dashboard")
    assert "/admin/login/?next=/dashboard" in dashboard.url
    _sign_in(dashboard, server.url + "/dashboard")
    dashboard.wait_for_selector('[data-live-status][data-state="live"]', timeout=5000)
    dashboard.evaluate("() => { window.loadedOnce = true; }")
    assert [_remaining(dashboard, pk) for pk in (1, 2, 3)] == ["10", "10", "10"]
    dashboard.screenshot(path=ARTIFACTS / "dashboard-start.png", full_page=True)

    # A lead through the API: P1, P2, P3's bars and the live feed change within a second.
    answer = httpx.post(
        server.url + "/api/leads",
        json={"name": "Ada", "phone": "+15550100100", "city": "Paris", "service": 1},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    lead_id = answer.json()["id"]
    dashboard.wait_for_function(
        """(leadId) => [1, 2, 3].every((id) => {
                const row = document.getElementById("provider-" + id);
                return row.dataset.remaining === "9"
                    && row.querySelector(".bar-fill").getAttribute("width") === "90";
            })
            && document.querySelector("[data-feed]").textContent.includes("Lead #" + leadId)""",
        arg=lead_id,
        timeout=LIVE_MS,
        # Poll on a timer: animation frames do not run in a background tab.
        polling=100,
    )
    assert _remaining(dashboard, 4) == "10"
    # The header tells the time of the last event, not a stream id.
    assert dashboard.inner_text("#last-event").startswith("last event ")
    assert "dashboard:" not in dashboard.inner_text("[data-live-status]")
    assert dashboard.evaluate("() => window.loadedOnce") is True, "the page was reloaded"
    dashboard.screenshot(path=ARTIFACTS / "dashboard-after-lead.png", full_page=True)

    # Test tools, in a second tab of the same session.
    tools = context.new_page()
    errors += _console_errors(tools)
    tools.goto(server.url + "/test-tools")
    tools.click("button[data-action=leads]")
    tools.wait_for_function(
        "() => document.querySelectorAll('#result-leads [data-outcome]').length === 10",
        timeout=20000,
    )
    lead_outcomes = tools.eval_on_selector_all(
        "#result-leads [data-outcome]", "rows => rows.map(row => row.dataset.outcome)"
    )
    assert len(lead_outcomes) == 10
    assert set(lead_outcomes) <= {"allocated", "waiting"}, lead_outcomes
    dashboard.bring_to_front()
    dashboard.wait_for_function(
        "() => document.querySelectorAll('[data-feed] .feed-item').length === 11",
        timeout=LIVE_MS,
        # Poll on a timer: animation frames do not run in a background tab.
        polling=100,
    )

    # The same event fired 3 times at once: one applied, the others duplicate.
    tools.bring_to_front()
    tools.fill("#copies", "3")
    tools.click("button[data-action=webhook]")
    tools.wait_for_function(
        "() => document.querySelectorAll('#result-webhook [data-outcome]').length === 3",
        timeout=20000,
    )
    webhook_outcomes = tools.eval_on_selector_all(
        "#result-webhook [data-outcome]", "rows => rows.map(row => row.dataset.outcome)"
    )
    assert sorted(webhook_outcomes) == ["applied", "duplicate", "duplicate"]
    tools.screenshot(path=ARTIFACTS / "test-tools.png", full_page=True)
    dashboard.bring_to_front()
    dashboard.wait_for_function(
        """() => document.querySelector("[data-feed] .feed-quota-reset") !== null
            && [...document.querySelectorAll("[data-provider-id]")].every(
                (row) => row.dataset.remaining === row.dataset.quota)""",
        timeout=LIVE_MS,
        # Poll on a timer: animation frames do not run in a background tab.
        polling=100,
    )
    assert dashboard.evaluate("() => window.loadedOnce") is True, "the page was reloaded"
    # The reset's count of drained leads stays one piece on one line, however the note wraps.
    count = dashboard.locator("[data-feed] .feed-quota-reset .feed-reset-count").first
    assert count.inner_text().endswith("allocated")
    assert count.evaluate("(element) => element.getClientRects().length") == 1
    dashboard.screenshot(path=ARTIFACTS / "dashboard-after-reset.png", full_page=True)

    assert errors == []
    context.close()


def _sign_out_elsewhere(context, server_url: str) -> None:
    """Log out in another tab of the same browser, as an operator would."""
    other = context.new_page()
    other.goto(server_url + "/admin/")
    other.click("#logout-form button")
    other.wait_for_load_state()
    other.close()


@pytest.mark.django_db(transaction=True)
def test_dashboard_says_signed_out_when_a_fragment_is_refused_and_recovers_after_sign_in(
    seeded_tx, asgi_server_factory, launch_chromium
):
    get_user_model().objects.create_user(
        username="operator", password=STAFF_PASSWORD, is_staff=True
    )
    _, api_key = create_api_key(name="browser-test")
    # The stream re-reads its session only every minute: the refused fragment tells first.
    server = asgi_server_factory(EVENT_SESSION_RECHECK_SECONDS="60")
    browser = launch_chromium()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    dashboard = _open_live_dashboard(context, server.url)
    errors = _page_errors(dashboard)

    _sign_out_elsewhere(context, server.url)
    answer = httpx.post(
        server.url + "/api/leads",
        json={"name": "Ada", "phone": "+15550100200", "city": "Paris", "service": 1},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    lead_id = answer.json()["id"]

    dashboard.wait_for_selector('[data-live-status][data-state="signed-out"]', timeout=3000)
    assert _status(dashboard) == "Signed out \N{EM DASH} sign in again"
    link = dashboard.locator("[data-live-signin]")
    assert link.is_visible()
    assert link.get_attribute("href") == "/admin/login/?next=/dashboard"
    assert f"Lead #{lead_id}" not in dashboard.inner_text("[data-feed]")
    _header_shot(dashboard, "dashboard-signed-out.png")

    # Signing in again (here in another tab) brings the page back, caught up, without a reload.
    other = context.new_page()
    other.goto(server.url + "/admin/login/?next=/admin/")
    _sign_in(other, server.url + "/admin/")
    dashboard.bring_to_front()
    dashboard.wait_for_function(
        """(leadId) => document.querySelector("[data-live-status]").dataset.state === "live"
            && document.querySelector("[data-feed]").textContent.includes("Lead #" + leadId)
            && document.getElementById("provider-1").dataset.remaining === "9"
            && document.querySelector("[data-live-signin]").hidden""",
        arg=lead_id,
        timeout=10000,
        polling=100,
    )
    assert dashboard.evaluate("() => window.loadedOnce") is True, "the page was reloaded"
    assert errors == []
    context.close()


@pytest.mark.django_db(transaction=True)
def test_dashboard_says_signed_out_when_its_stream_is_refused_after_a_password_change(
    seeded_tx, asgi_server_factory, launch_chromium
):
    operator = get_user_model().objects.create_user(
        username="operator", password=STAFF_PASSWORD, is_staff=True
    )
    server = asgi_server_factory(EVENT_SESSION_RECHECK_SECONDS="1")
    browser = launch_chromium()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    dashboard = _open_live_dashboard(context, server.url)
    errors = _page_errors(dashboard)

    # A password change ends every other session of the user; no event needs to happen.
    operator.set_password("a-new-password-456")
    _in_thread(operator.save)

    dashboard.wait_for_selector('[data-live-status][data-state="signed-out"]', timeout=5000)
    assert _status(dashboard) == "Signed out \N{EM DASH} sign in again"
    assert "Live" not in _status(dashboard)
    assert dashboard.evaluate("() => window.loadedOnce") is True, "the page was reloaded"
    assert errors == []
    context.close()


@pytest.mark.django_db(transaction=True)
def test_dashboard_says_reconnecting_while_the_server_is_down_and_catches_up_after(
    seeded_tx, asgi_server_factory, launch_chromium
):
    get_user_model().objects.create_user(
        username="operator", password=STAFF_PASSWORD, is_staff=True
    )
    port = free_port()
    server = asgi_server_factory(port=port)
    browser = launch_chromium()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    dashboard = _open_live_dashboard(context, server.url)
    errors = _page_errors(dashboard)

    server.kill()
    dashboard.wait_for_selector('[data-live-status][data-state="reconnecting"]', timeout=5000)
    assert _status(dashboard) == "Reconnecting\N{HORIZONTAL ELLIPSIS}"
    # Committed while no server runs: the page must catch up on it, from the event log.
    lead = _in_thread(lambda: submit_lead(lead_input(1, phone="+15550100300")))
    _header_shot(dashboard, "dashboard-reconnecting.png")
    dashboard.wait_for_timeout(1000)
    assert dashboard.get_attribute("[data-live-status]", "data-state") == "reconnecting"

    asgi_server_factory(port=port)
    dashboard.wait_for_function(
        """(leadId) => document.querySelector("[data-live-status]").dataset.state === "live"
            && document.querySelector("[data-feed]").textContent.includes("Lead #" + leadId)
            && [1, 2, 3].every(
                (id) => document.getElementById("provider-" + id).dataset.remaining === "9")""",
        arg=lead.pk,
        timeout=15000,
        polling=100,
    )
    assert _status(dashboard) == "Live"
    _header_shot(dashboard, "dashboard-live.png")
    assert dashboard.evaluate("() => window.loadedOnce") is True, "the page was reloaded"
    assert errors == []
    context.close()


@pytest.mark.django_db(transaction=True)
def test_the_blank_membership_row_of_the_service_admin_shows_no_eligible_tick(
    seeded_tx, asgi_server_factory, launch_chromium
):
    get_user_model().objects.create_user(
        username="operator", password=STAFF_PASSWORD, is_staff=True, is_superuser=True
    )
    server = asgi_server_factory()
    browser = launch_chromium()
    page = browser.new_page()

    page.goto(server.url + "/admin/providers/service/1/change/")
    _sign_in(page, server.url + "/admin/providers/service/1/change/")

    saved = page.locator("tr.form-row.has_original td.field-eligible img")
    blank = page.locator("tr.form-row:not(.has_original):not(.empty-form)")
    assert saved.count() == 4
    assert blank.count() == 1
    assert blank.first.is_visible()
    assert blank.first.locator("td.field-eligible img").count() == 0
    page.close()


@pytest.mark.django_db(transaction=True)
def test_a_delivery_chip_turns_delivered_live_when_its_attempt_succeeds(
    seeded_tx, asgi_server_factory, launch_chromium, receiver, settings
):
    """Issue 11: the chips of a lead's deliveries follow delivery.updated without a reload.
    The attempt runs through the real code path (claim, attempt and record, as the worker)
    against a local receiver; no event is faked."""
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = True  # the receiver is on 127.0.0.1
    settings.DELIVERY_TIMEOUT_SECONDS = 5
    get_user_model().objects.create_user(
        username="operator", password=STAFF_PASSWORD, is_staff=True
    )
    endpoint(1, url=receiver.url("/p1"))
    endpoint(2, url=receiver.url("/p2"))
    server = asgi_server_factory()
    browser = launch_chromium()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    dashboard = _open_live_dashboard(context, server.url)
    errors = _console_errors(dashboard)

    # No inline script may run: the page's policy forbids it, and the page has none.
    policy = dashboard.evaluate(
        """async () => (await fetch("/dashboard")).headers.get("content-security-policy")"""
    )
    assert "script-src" in policy
    assert "'unsafe-inline'" not in policy.split("script-src", 1)[1].split(";", 1)[0]
    inline = dashboard.eval_on_selector_all(
        "script", "scripts => scripts.filter(s => !s.src && s.textContent.trim()).length"
    )
    assert inline == 0

    lead = _in_thread(lambda: submit_lead(lead_input(1, phone="+15550100400")))
    deliveries = {
        d.provider_id: d.pk for d in _in_thread(lambda: list(Delivery.objects.filter(lead=lead)))
    }
    assert {1, 2} <= set(deliveries), deliveries
    chip = f'[data-delivery-id="{deliveries[1]}"]'
    dashboard.wait_for_selector(chip, timeout=5000)
    assert dashboard.get_attribute(chip, "class") == "delivery-chip delivery-pending"
    assert dashboard.inner_text(f"{chip} [data-delivery-status]") == "pending"

    # The delivery worker's steps, run here: it posts to the receiver and records the attempt
    # and its delivery.updated event in one statement.
    def deliver() -> str:
        return attempt_now(deliveries[1])

    assert _in_thread(deliver) == "delivered"
    assert len(receiver.of("/p1")) == 1
    dashboard.wait_for_function(
        """(selector) => {
            const chip = document.querySelector(selector);
            return chip.classList.contains("delivery-delivered")
                && chip.querySelector("[data-delivery-status]").textContent === "delivered";
        }""",
        arg=chip,
        timeout=3000,
        polling=100,
    )
    # The other provider's chip has not moved.
    other = f'[data-delivery-id="{deliveries[2]}"]'
    assert dashboard.get_attribute(other, "class") == "delivery-chip delivery-pending"
    assert dashboard.evaluate("() => window.loadedOnce") is True, "the page was reloaded"
    _header_shot(dashboard, "dashboard-delivery-chip.png")
    assert errors == []
    context.close()
