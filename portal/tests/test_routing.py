"""Routing rules in the portal (SPEC §9, §2a): the admin's service, checks and messages, within
the limits staff set, with the provider user named in the audit line and the admin history."""

from __future__ import annotations

import json
import logging
import re

import pytest
from django.contrib.admin.models import LogEntry
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils.html import escape

from allocation.models import Lead
from providers.models import Provider
from providers.services import clean_routing, set_routing
from returns.tests.support import allocated_lead

pytestmark = pytest.mark.django_db


def put(client: Client, body: dict) -> object:
    return client.put("/portal/api/routing", body, content_type="application/json")


def staff_sets(provider_id: int, **changes: object) -> None:
    provider = Provider.objects.get(pk=provider_id)
    set_routing(provider, clean_routing(provider, **changes))


def test_the_form_sets_the_rules_and_names_the_provider_user(
    provider_client, provider_account, caplog, django_capture_on_commit_callbacks
):
    caplog.set_level(logging.INFO, logger="leaddist.audit")

    with django_capture_on_commit_callbacks(execute=True):
        response = provider_client.post(
            "/portal/routing",
            {
                "cities_text": "Oslo,  BERGEN ",
                "timezone_name": "Europe/Oslo",
                "hours_text": "mon-fri 08:00-18:00",
                "time_off_text": "2030-12-24..2030-12-26",
                "daily_cap_value": "4",
                "weekly_cap_value": "",
                "seen_version": Provider.objects.get(pk=2).version,
            },
            follow=True,
        )

    p = Provider.objects.get(pk=2)
    assert "Routing rules saved." in response.content.decode()
    assert (p.cities, p.timezone, p.hours, p.daily_cap, p.weekly_cap) == (
        ["oslo", "bergen"],
        "Europe/Oslo",
        "mon-fri 08:00-18:00",
        4,
        None,
    )
    assert p.time_off == [["2030-12-24", "2030-12-26"]]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "leaddist.audit"]
    assert [(line["event"], line["who"]) for line in lines] == [
        ("provider_routing", "provider:p2-owner")
    ]
    entry = LogEntry.objects.get(object_id="2")
    assert entry.user_id == provider_account.user_id
    assert entry.change_message.startswith("Changed the routing rules from the portal")


def test_the_form_refuses_bad_input_with_the_admins_messages(provider_client):
    before = Provider.objects.get(pk=2).version

    response = provider_client.post(
        "/portal/routing", {"timezone_name": "Mars/Olympus", "hours_text": "someday"}
    )
    negative = provider_client.post("/portal/routing", {"daily_cap_value": "-1"})

    page = response.content.decode()
    assert response.status_code == negative.status_code == 422
    with pytest.raises(ValidationError) as admin_says:
        clean_routing(Provider.objects.get(pk=2), tz="Mars/Olympus", hours="someday")
    for field in ("timezone", "hours"):
        assert escape(admin_says.value.message_dict[field][0]) in page
    assert "Ensure this value is greater than or equal to 0." in negative.content.decode()
    assert Provider.objects.get(pk=2).version == before


def test_json_reads_and_sets_the_rules_and_the_counts_against_the_caps(provider_client):
    allocated_lead()  # P1 + (P2, P3): one lead for provider 2 today

    body = put(provider_client, {"daily_cap": 5, "weekly_cap": 9, "cities": []}).json()
    read = provider_client.get("/portal/api/routing").json()
    numbers = provider_client.get("/portal/api/provider").json()

    assert body == read
    assert read["routing"]["daily_cap"] == 5
    assert read["routing"]["weekly_cap"] == 9
    assert read["routing"]["leads_today"] == 1
    assert read["routing"]["leads_this_week"] == 1
    assert read["limits"] == {
        "areas_locked": False,
        "max_daily_cap": None,
        "max_weekly_cap": None,
        "quota": 10,
    }
    assert (numbers["leads_today"], numbers["daily_cap"]) == (1, 5)
    assert (numbers["leads_this_week"], numbers["weekly_cap"]) == (1, 9)
    page = provider_client.get("/portal/").content.decode()
    assert 'data-stat="today">1<small> / 5</small>' in page


def test_the_counts_are_the_engines_in_the_providers_timezone(provider_client):
    # Kiritimati is UTC+14, Niue UTC-11: at most one of them shares the site's day; the counts
    # follow the engine's counters (the dashboard's selector), never the site's calendar.
    staff_sets(2, tz="Pacific/Kiritimati")
    allocated_lead()
    p = Provider.objects.get(pk=2)

    numbers = provider_client.get("/portal/api/provider").json()

    assert p.cap_day_count == 1
    assert numbers["leads_today"] == p.cap_day_count
    assert numbers["leads_this_week"] == p.cap_week_count


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"hours": "someday"}, "hours"),
        ({"time_off": [["2030-01-05", "2030-01-01"]]}, "time_off"),
        ({"time_off": "2030-01-01"}, "time_off"),
        ({"daily_cap": -1}, "daily_cap"),
        ({"daily_cap": "3"}, "daily_cap"),
        ({"weekly_cap": True}, "weekly_cap"),
        ({"cities": "Oslo"}, "cities"),
        ({"provider_id": 3}, "provider_id"),
        ({"areas_locked": False}, "areas_locked"),
        ({"version": "1"}, "version"),
    ],
)
def test_bad_json_is_422_by_field_and_changes_nothing(provider_client, body, field):
    before = Provider.objects.get(pk=2).version

    response = put(provider_client, body)

    assert response.status_code == 422
    assert field in response.json()["error"]["fields"]
    assert Provider.objects.get(pk=2).version == before
    assert Provider.objects.get(pk=3).version == 1


def test_a_cap_above_the_quota_is_refused(provider_client):
    response = put(provider_client, {"daily_cap": 11})

    assert response.status_code == 422
    assert response.json()["error"]["fields"]["daily_cap"] == [
        "At most 10: a higher daily cap than your quota (10 leads a cycle) would never apply."
    ]
    assert Provider.objects.get(pk=2).daily_cap is None


def test_staffs_most_cap_binds_the_provider_but_not_what_staff_set(provider_client):
    staff_sets(2, max_daily_cap=3, daily_cap=3, weekly_cap=50)

    above = put(provider_client, {"daily_cap": 4})
    none = put(provider_client, {"daily_cap": None})
    within = put(provider_client, {"daily_cap": 2, "hours": "mon-sun 06:00-22:00"})

    assert above.status_code == none.status_code == 422
    assert above.json()["error"]["fields"]["daily_cap"] == [
        "At most 3: the marketplace's staff allow a daily cap of at most 3."
    ]
    assert none.json()["error"]["fields"]["daily_cap"] == [
        "Choose a number from 0 to 3: the marketplace's staff allow a daily cap of at most 3."
    ]
    assert within.status_code == 200, within.json()
    p = Provider.objects.get(pk=2)
    # The weekly cap staff set above the quota stays: only what the provider changes is judged.
    assert (p.daily_cap, p.weekly_cap, p.max_daily_cap) == (2, 50, 3)


def test_locked_areas_cannot_be_changed_by_the_provider(provider_client):
    staff_sets(2, cities=["Oslo"], areas_locked=True)

    refused = put(provider_client, {"cities": []})
    page = provider_client.get("/portal/").content.decode()
    form = provider_client.post("/portal/routing", {"cities_text": "", "hours_text": "always"})

    assert refused.status_code == 422
    assert refused.json()["error"]["fields"]["cities"] == [
        "Your areas are set by the marketplace's staff: ask them to change them."
    ]
    assert re.search(r'<input[^>]*name="cities_text"[^>]*disabled', page)
    assert form.status_code == 302  # a disabled field keeps its value; the rest is saved
    assert Provider.objects.get(pk=2).cities == ["oslo"]


def test_a_stale_version_is_refused(provider_client, seeded):
    version = seeded.provider(2).version
    staff_sets(2, hours="mon 09:00-10:00")

    json_answer = put(provider_client, {"daily_cap": 2, "version": version})
    page = provider_client.post(
        "/portal/routing", {"daily_cap_value": "2", "seen_version": version}, follow=True
    )

    assert json_answer.status_code == 409
    assert json_answer.json()["error"]["code"] == "edit_conflict"
    assert "changed by someone else" in page.content.decode()
    assert Provider.objects.get(pk=2).daily_cap is None


def test_widening_the_area_drains_the_leads_waiting_for_it(
    provider_client, seeded, django_capture_on_commit_callbacks
):
    for provider_id in (2, 3):
        staff_sets(provider_id, cities=["Bergen"])
    lead = allocated_lead(city="Oslo")  # P1 and P4 only: it waits
    assert lead.status == Lead.Status.WAITING

    with django_capture_on_commit_callbacks(execute=True):
        response = put(provider_client, {"cities": []})

    assert response.status_code == 200
    lead.refresh_from_db()
    assert lead.status == Lead.Status.ALLOCATED
    assert set(lead.allocations.values_list("provider_id", flat=True)) == {1, 2, 4}


@pytest.mark.concurrency
def test_a_save_stuck_behind_a_long_lock_answers_busy_and_stores_nothing(seeded_tx):
    """set_routing waits for the service's cursor lock (the lock order); when a long transaction
    holds it past the lock timeout, the page and the JSON answer 503 busy, never 500."""
    from intake.tests.support import cursor_locked
    from portal.services import create_provider_user
    from portal.tests.conftest import PROVIDER_PASSWORD

    account = create_provider_user(
        seeded_tx.provider(2), username="p2-busy", password=PROVIDER_PASSWORD
    ).account
    client = Client()
    client.force_login(account.user)
    before = Provider.objects.get(pk=2)

    with cursor_locked(1, lock_timeout_ms=50):
        json_answer = put(client, {"daily_cap": 2, "version": before.version})
        page = client.post(
            "/portal/routing", {"daily_cap_value": "2", "seen_version": before.version}
        )

    assert json_answer.status_code == 503
    assert json_answer.json()["error"]["code"] == "busy"
    assert json_answer["Retry-After"]
    assert page.status_code == 503
    assert "nothing was saved" in page.content.decode()
    after = Provider.objects.get(pk=2)
    assert (after.version, after.daily_cap) == (before.version, before.daily_cap)
