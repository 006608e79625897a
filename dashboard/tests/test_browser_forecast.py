"""Issue 23 in a real browser: the dashboard's forecast is what the next real lead then gets,
it moves on live, each provider row says when it runs out, and a what-if shows its difference.

The same server and Chromium as test_browser.py (its launch helper); screenshots go to
test-artifacts/ (docs/img/dashboard-forecast.png comes from there).
"""

from __future__ import annotations

import httpx
from django.contrib.auth import get_user_model

from credentials.services import create_api_key
from dashboard.tests.support import STAFF_PASSWORD
from dashboard.tests.test_browser import (  # noqa: F401
    _console_errors,
    _open_live_dashboard,
    launch_chromium,
)
from dashboard.views import FORECAST_HORIZON
from leaddist.tests.asgi_server import ARTIFACTS
from providers.services import clean_routing, set_routing
from webhooks.tests.helpers import SECRET

# A refresh waits for the one before it and comes at most once a second (docs/DASHBOARD.md).
REFRESH_MS = 5000
CARD = "#forecast-3"

CHIPS_OF = """([card, n]) => [...document.querySelectorAll(
        card + ' [data-forecast-leads] > li[data-n="' + n + '"] [data-provider-id]')]
    .map((chip) => Number(chip.dataset.providerId))"""


def _chips(page, n: int) -> list[int]:
    return page.evaluate(CHIPS_OF, [CARD, n])


def _forecast(server_url: str, key: str, service: int, **params: object) -> dict:
    answer = httpx.get(
        f"{server_url}/api/services/{service}/forecast",
        params={"leads": FORECAST_HORIZON, **params},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_dashboard_forecast_is_what_the_next_real_lead_gets_and_shows_a_what_if(
    seeded_tx,
    asgi_server_factory,
    launch_chromium,  # noqa: F811
):
    get_user_model().objects.create_user(
        username="operator", password=STAFF_PASSWORD, is_staff=True
    )
    # Provider 3 serves Bergen only: an Oslo lead of Service 3 walks past it.
    set_routing(seeded_tx.provider(3), clean_routing(seeded_tx.provider(3), cities=["Bergen"]))
    _, api_key = create_api_key(name="forecast-browser-test")
    server = asgi_server_factory(WEBHOOK_SECRET=SECRET)
    browser = launch_chromium()
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = _open_live_dashboard(context, server.url)
    errors = _console_errors(page)

    # Service 3's forecast for Oslo, as the page shows it.
    page.fill("#forecast-city-3", "Oslo")
    page.wait_for_function(
        """(card) => document.querySelector(card + " [data-forecast-basis]")
            .textContent.startsWith("in oslo")""",
        arg=CARD,
        timeout=REFRESH_MS,
    )
    first, second = _chips(page, 1), _chips(page, 2)
    chip = page.locator(f'{CARD} [data-forecast-leads] > li[data-n="1"] .chip').nth(2)
    assert chip.inner_text().split() == ["3", "Provider", str(first[2]), "POOL"]  # rank, role
    assert "Rank 1, mandatory: Provider 1" in page.get_attribute(
        f'{CARD} [data-forecast-leads] > li[data-n="1"] .chip', "title"
    )
    assert first[:2] == [1, 4]  # the mandatory providers first
    assert 3 not in first + second  # P3 serves Bergen only
    assert len(set(first)) == len(set(second)) == 3

    # A real lead of that service and city gets exactly those providers, in that order.
    answer = httpx.post(
        server.url + "/api/leads",
        json={"name": "Ada", "phone": "+15550100200", "city": "Oslo", "service": 3},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    assert [p["id"] for p in answer.json()["providers"]] == first

    # The forecast moves on: what was the second lead is now the first.
    page.wait_for_function(
        f"(args) => ({CHIPS_OF})(args).join() === {','.join(map(str, second))!r}",
        arg=[CARD, 1],
        timeout=REFRESH_MS,
    )

    # Each provider row: the soonest run-out over the services' forecasts, as the API says.
    forecasts = {
        "Service 1": _forecast(server.url, api_key, 1),
        "Service 3": _forecast(server.url, api_key, 3, city="Oslo"),
    }
    run_outs = sorted(
        (p["runs_out_at"], name)
        for name, answer in forecasts.items()
        for p in answer["providers"]
        if p["id"] == 1 and p["runs_out_at"] is not None
    )
    soonest, service = run_outs[0]
    page.wait_for_function(
        """([at]) => document.querySelector("#provider-1 [data-runout-at]")
            ?.dataset.runoutAt === String(at)""",
        arg=[soonest],
        timeout=REFRESH_MS,
    )
    cell = page.inner_text("#provider-1 [data-runout]")
    assert cell.startswith(f"out after about {soonest} more leads of {service}"), cell

    # What if the next lead's last pool provider were paused: it is gone, and the chips that
    # differ from the plain forecast are marked.
    paused = second[2]
    page.click(f"{CARD} .what-if summary")
    page.fill("#what-if-pause-3", str(paused))
    page.click(f"{CARD} [data-what-if-form] button[type=submit]")
    page.wait_for_selector(f"{CARD}.forecast-as-if .chip-changed", timeout=REFRESH_MS)
    as_if = {chip for n in range(1, 11) for chip in _chips(page, n)}
    assert paused not in as_if
    assert "differ from the plain forecast" in page.inner_text(f"{CARD} [data-forecast-status]")
    changed = page.locator(f"{CARD} .chip-changed").first
    assert changed.locator(".visually-hidden").text_content() == "changed"  # for screen readers
    assert "the plain forecast has" in changed.get_attribute("title")
    page.locator("#forecast").screenshot(path=ARTIFACTS / "dashboard-forecast.png")
    assert errors == []
    # A bad what-if is the API's clear message, not a broken panel.
    page.fill("#what-if-pause-3", "")
    page.fill("#what-if-quota-3", "4:lots")
    page.click(f"{CARD} [data-what-if-form] button[type=submit]")
    page.wait_for_selector(f"{CARD} [data-what-if-errors] li", timeout=REFRESH_MS)
    assert page.inner_text(f"{CARD} [data-what-if-errors]").startswith("quota: ")
    assert _chips(page, 1) == second  # back to the plain forecast
    assert errors  # the refused what-if's 422, as the browser logs it, and nothing else
    assert all("status of 422" in error for error in errors)
    context.close()
