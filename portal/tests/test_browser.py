"""The portal in a real browser (SPEC §9): a provider signs in, sees a new lead arrive live,
returns it; staff approve the return in the admin; the portal shows the quota back, without a
reload. Headless Chromium (Debian's package) through Playwright, against daphne on the
committed test database, as the dashboard's browser test does; it skips without a browser
unless REQUIRE_BROWSER=1. Screenshots go to test-artifacts/ (docs/img/portal-*.png are copies).
"""

from __future__ import annotations

import re

import httpx
import pytest
from django.contrib.auth import get_user_model

from credentials.services import create_api_key
from dashboard.tests.support import STAFF_PASSWORD
from dashboard.tests.test_browser import _console_errors, _in_thread, launch_chromium  # noqa: F401
from delivery.tests.support import plain_endpoint
from leaddist.tests.asgi_server import ARTIFACTS
from portal.services import create_provider_user
from portal.tests.conftest import PROVIDER_PASSWORD
from providers.models import Provider
from returns.models import Return
from returns.tests.support import allocated_lead

LIVE_MS = 2000


def _sign_in(page, username: str, password: str, then: str) -> None:
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.locator("form [type=submit]").first.click()
    page.wait_for_url(then)


@pytest.mark.django_db(transaction=True)
def test_a_provider_sees_a_lead_live_returns_it_and_gets_its_quota_back(
    seeded_tx,
    asgi_server_factory,
    launch_chromium,  # noqa: F811
):
    create_provider_user(
        Provider.objects.get(pk=2), username="p2-owner", password=PROVIDER_PASSWORD
    )
    # An operator with the admin's rights (a superuser: returns need their model permissions).
    get_user_model().objects.create_superuser(username="operator", password=STAFF_PASSWORD)
    _, api_key = create_api_key(name="browser-test")
    server = asgi_server_factory()
    browser = launch_chromium()

    # The provider signs in at the portal and waits for leads.
    provider_context = browser.new_context(viewport={"width": 1400, "height": 1000})
    portal = provider_context.new_page()
    errors = _console_errors(portal)
    portal.goto(server.url + "/portal/")
    assert "/portal/login/?next=/portal/" in portal.url
    portal.screenshot(path=ARTIFACTS / "portal-sign-in.png")
    _sign_in(portal, "p2-owner", PROVIDER_PASSWORD, server.url + "/portal/")
    portal.wait_for_selector('[data-live][data-state="live"]', timeout=5000)
    portal.evaluate("() => { window.loadedOnce = true; }")
    assert "10 / 10" in portal.inner_text("[data-stat=remaining]")

    # A lead arrives through the API (service 1: providers 1, 2 and 3): it appears at once.
    answer = httpx.post(
        server.url + "/api/leads",
        json={"name": "Ada Lovelace", "phone": "+15550100100", "city": "London", "service": 1},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    lead_id = answer.json()["id"]
    portal.wait_for_selector(f"#lead-{lead_id}", timeout=LIVE_MS)
    portal.wait_for_function(
        "() => document.querySelector('[data-stat=remaining]').textContent.includes('9')",
        timeout=LIVE_MS,
    )
    assert "Ada Lovelace" in portal.inner_text(f"#lead-{lead_id}")
    assert portal.inner_text("[data-lead-count]") == "1 lead"
    assert portal.evaluate("() => window.loadedOnce") is True, "the page was reloaded"
    portal.screenshot(path=ARTIFACTS / "portal-new-lead.png", full_page=True)

    # The provider returns it: out of area waits for staff.
    row = portal.locator(f"#lead-{lead_id}")
    row.locator("summary").click()
    row.locator("select[name=reason]").select_option("out_of_area")
    row.locator("input[name=note]").fill("The customer lives in Bergen")
    row.locator("button[type=submit]").click()
    portal.wait_for_selector("text=waiting for the marketplace", timeout=5000)
    assert "pending" in portal.inner_text(f"#lead-{lead_id} [data-return]")
    portal.wait_for_selector('[data-live][data-state="live"]', timeout=5000)
    portal.evaluate("() => { window.loadedOnce = true; }")
    portal.screenshot(path=ARTIFACTS / "portal-returned.png", full_page=True)

    # Staff approve it in the admin.
    staff_context = browser.new_context(viewport={"width": 1400, "height": 900})
    admin = staff_context.new_page()
    admin.goto(server.url + "/admin/returns/return/?status__exact=pending")
    _sign_in(
        admin,
        "operator",
        STAFF_PASSWORD,
        server.url + "/admin/returns/return/?status__exact=pending",
    )
    return_id = _in_thread(lambda: Return.objects.get(lead_id=lead_id).pk)
    admin.check(f"input.action-select[value='{return_id}']")
    admin.select_option("select[name=action]", "approve_selected")
    admin.screenshot(path=ARTIFACTS / "portal-admin-approve.png", full_page=True)
    admin.locator("button[name=index]").click()
    admin.wait_for_selector("text=Approved 1 return(s).", timeout=5000)

    # The portal shows the quota back and the approval, live.
    portal.bring_to_front()
    portal.wait_for_function(
        """(leadId) => document.querySelector('[data-stat=remaining]').textContent.includes('10')
            && document.querySelector('#lead-' + leadId + ' [data-return]')
                .textContent.includes('approved')""",
        arg=lead_id,
        timeout=LIVE_MS,
        polling=100,
    )
    assert portal.evaluate("() => window.loadedOnce") is True, "the page was reloaded"
    portal.screenshot(path=ARTIFACTS / "portal-quota-back.png", full_page=True)
    assert _in_thread(lambda: Provider.objects.get(pk=2).remaining_quota) == 10
    assert errors == []
    provider_context.close()
    staff_context.close()


@pytest.mark.django_db(transaction=True)
def test_the_admin_and_the_api_docs_look_like_one_product(
    seeded_tx,
    jobs,  # the lead's delivery job is cleared afterwards
    asgi_server_factory,
    launch_chromium,  # noqa: F811
):
    get_user_model().objects.create_superuser(username="operator", password=STAFF_PASSWORD)
    plain_endpoint(2, email="ops@p2.example")
    lead = allocated_lead()
    server = asgi_server_factory()
    browser = launch_chromium()
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors = _console_errors(page)

    # The admin carries the product's name, colours and navigation.
    page.goto(server.url + "/admin/")
    _sign_in(page, "operator", STAFF_PASSWORD, server.url + "/admin/")
    assert page.inner_text("#site-name").strip() == "leaddist administration"
    assert "API DOCS" in page.inner_text("#user-tools").upper()
    header = page.eval_on_selector("#header", "(e) => getComputedStyle(e).backgroundColor")
    assert header == "rgb(31, 41, 51)"  # the dashboard's bar
    page.screenshot(path=ARTIFACTS / "one-product-admin.png")

    # Times to the second in the delivery list.
    page.goto(server.url + f"/admin/delivery/delivery/?q={lead.pk}")
    row = page.inner_text("#result_list tbody tr")
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row), row
    page.screenshot(path=ARTIFACTS / "one-product-deliveries.png", full_page=True)
    # Every column fits at 1,400 px: the list does not scroll sideways.
    assert page.eval_on_selector("#changelist .results", "(e) => e.scrollWidth <= e.clientWidth"), (
        "the delivery list hides columns"
    )
    page.screenshot(path=ARTIFACTS / "one-product-deliveries.png", full_page=True)

    # A provider's page: its webhook URL field shows a whole URL.
    page.goto(server.url + "/admin/providers/provider/2/change/")
    url_field = page.locator("#provider_form input[type=url]")
    assert url_field.evaluate("(e) => e.getBoundingClientRect().width") >= 400
    page.screenshot(path=ARTIFACTS / "one-product-provider.png", full_page=True)

    # The API docs under the same header.
    page.goto(server.url + "/api/docs")
    page.wait_for_selector(".swagger-ui .info", timeout=10000)
    assert page.inner_text(".topbar .brand").strip() == "leaddist"
    page.screenshot(path=ARTIFACTS / "one-product-api-docs.png")

    assert errors == []
    context.close()
