"""The dashboard's forecast panel (issue 23): what the page renders for static/js/forecast.js,
and who may read the forecast it points to. The panel itself is tested in a real browser
(test_browser_forecast.py)."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from dashboard.selectors import forecast_cities
from dashboard.views import FORECAST_HORIZON, FORECAST_LEADS
from portal.tests.conftest import provider_account, provider_client  # noqa: F401
from providers.models import Service
from providers.services import clean_routing, set_routing


def _forecast_urls(page: str) -> dict[int, str]:
    return {
        int(service): url
        for service, url in re.findall(
            r'data-forecast-card\s+data-service-id="(\d+)"[^>]*?data-url="([^"]+)"', page
        )
    }


@pytest.mark.django_db
def test_each_active_service_gets_a_forecast_card_pointing_at_its_api_forecast(
    seeded, staff_client
):
    Service.objects.filter(pk=2).update(active=False)

    page = staff_client.get("/dashboard").content.decode()

    assert _forecast_urls(page) == {1: "/api/services/1/forecast", 3: "/api/services/3/forecast"}
    assert f'data-forecast-leads="{FORECAST_LEADS}"' in page
    assert f'data-forecast-horizon="{FORECAST_HORIZON}"' in page
    assert '<script src="/static/js/forecast.js" defer></script>' in page
    # Every provider row has the cell its run-out goes in.
    assert page.count("data-runout") == page.count('class="provider-row')


@pytest.mark.django_db
def test_the_city_field_offers_the_cities_named_in_provider_areas(seeded, staff_client):
    for pk, cities in ((2, ["Oslo", "Bergen"]), (3, ["bergen "]), (5, [])):
        provider = seeded.provider(pk)
        set_routing(provider, clean_routing(provider, cities=cities))

    page = staff_client.get("/dashboard").content.decode()

    assert forecast_cities() == ["bergen", "oslo"]
    assert (
        '<datalist id="forecast-cities"><option value="bergen"></option>'
        '<option value="oslo"></option></datalist>'
    ) in page


@pytest.mark.django_db
def test_the_forecast_the_panel_reads_answers_a_staff_session(seeded, staff_client):
    url = _forecast_urls(staff_client.get("/dashboard").content.decode())[1]

    response = staff_client.get(url, {"leads": FORECAST_HORIZON, "city": "Oslo"})

    assert response.status_code == 200
    answer = response.json()
    assert len(answer["leads"]) == FORECAST_HORIZON
    assert [p["id"] for p in answer["leads"][0]["providers"]] == [1, 2, 3]
    # P1 is in every lead of Service 1 with a quota of 10: out after the 10th.
    assert {p["id"]: p["runs_out_at"] for p in answer["providers"]}[1] == 10


@pytest.mark.django_db
def test_the_panel_and_its_forecast_are_refused_to_anyone_but_staff(
    seeded,
    plain_client,
    provider_client,  # noqa: F811
):
    url = "/api/services/1/forecast?leads=10"

    assert Client().get("/dashboard").status_code == 302
    assert Client().get(url).status_code == 401
    for client in (plain_client, provider_client):
        assert client.get("/dashboard").status_code == 403
        assert client.get(url).status_code == 403
        assert client.get(url + "&pause=2").status_code == 403
