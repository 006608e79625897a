"""The dashboard's routing view (SPEC §2a): each provider's area, open or closed now (with its
next opening) and caps used; waiting leads per city."""

from datetime import UTC, datetime

from django.utils import timezone

from allocation.services import LeadInput, submit_lead
from providers.models import Provider
from providers.services import clean_routing, set_routing

MONDAY_10 = datetime(2026, 12, 7, 10, tzinfo=UTC)  # 11:00 in Oslo


def route(pk, **rules):
    provider = Provider.objects.get(pk=pk)
    set_routing(provider, clean_routing(provider, **rules))


def row_of(html, pk):
    start = html.index(f'id="provider-{pk}"')
    return html[start : html.index("</tr>", start)]


def test_provider_rows_show_area_open_or_closed_and_caps(seeded, staff_client, monkeypatch):
    monkeypatch.setattr(timezone, "now", lambda: MONDAY_10)
    route(2, cities=["Oslo", "Bergen"], tz="Europe/Oslo", hours="mon-fri 12:00-18:00")
    route(3, daily_cap=4, weekly_cap=10)
    submit_lead(LeadInput(service_id=1, name="Ada", phone="+4790000001", city="Oslo"))

    html = staff_client.get("/dashboard").content.decode()

    assert "oslo, bergen" in row_of(html, 2)
    assert "off_hours" in row_of(html, 2)
    assert "opens Mon 07 Dec 12:00 CET" in row_of(html, 2)
    assert "everywhere" in row_of(html, 3)
    assert "badge-open" in row_of(html, 3)
    assert "today 1/4 · week 1/10" in row_of(html, 3)


def test_the_summary_counts_waiting_leads_per_city(seeded, staff_client, monkeypatch):
    monkeypatch.setattr(timezone, "now", lambda: MONDAY_10)
    for pk in (2, 3, 4):
        route(pk, cities=["Oslo"])
    for n, city in enumerate(["Pune", " pune", "Tromsø"]):
        submit_lead(LeadInput(service_id=1, name="Ada", phone=f"+479000001{n}", city=city))

    html = staff_client.get("/dashboard/fragments?summary=1").content.decode()

    assert "2 · pune" in html
    assert "1 · tromsø" in html
