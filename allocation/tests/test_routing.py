"""The engine with SPEC §2a's routing rules, on real PostgreSQL, with a clock we control."""

from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from allocation.models import Lead
from allocation.services import (
    LeadInput,
    add_city_alias,
    allocate_waiting_leads,
    change_city_alias,
    intake_lead,
    remove_city_alias,
)
from providers.models import CityAlias, Membership, PoolCity, Provider
from providers.routing import parse_date_range
from providers.services import clean_routing, pause_provider, refresh_routing, set_routing

# Monday 7 December 2026, 10:00 UTC (11:00 in Oslo).
MONDAY_10 = datetime(2026, 12, 7, 10, tzinfo=UTC)


class Clock:
    def __init__(self, monkeypatch, at):
        self.at = at
        monkeypatch.setattr(timezone, "now", lambda: self.at)

    def advance(self, **delta):
        self.at += timedelta(**delta)


@pytest.fixture
def clock(monkeypatch):
    return Clock(monkeypatch, MONDAY_10)


def route(provider_id, **rules):
    provider = Provider.objects.get(pk=provider_id)
    return set_routing(provider, clean_routing(provider, **rules), now=timezone.now())


phones = iter(range(10**6))


def lead(service_id=1, city="Oslo"):
    return intake_lead(
        LeadInput(service_id=service_id, name="Ada", phone=f"+4790{next(phones):06d}", city=city)
    )


def picked(intake):
    return [p.id for p in intake.providers]


def skipped(intake):
    return {e["provider_id"]: e["reason"] for e in intake.lead.trace if e["outcome"] == "skipped"}


# --- Areas ---


def test_providers_without_rules_behave_as_the_seed_always_did(seeded, clock):
    assert picked(lead(city="Pune")) == [1, 2, 3]
    assert picked(lead(city="Bergen")) == [1, 4, 2]


def test_a_provider_serving_other_cities_is_skipped_out_of_area(seeded, clock):
    route(2, cities=["Bergen"])

    oslo = lead(city="  OSLO ")
    bergen = lead(city="bergen")

    assert picked(oslo) == [1, 3, 4]
    assert skipped(oslo) == {2: "out_of_area"}
    assert oslo.lead.city_key == "oslo"
    # The cursor stands at P4: the walk goes on at P2, which serves Bergen.
    assert picked(bergen) == [1, 2, 3]


def test_a_mandatory_provider_out_of_area_is_backfilled_from_the_pool(seeded, clock):
    route(1, cities=["Bergen"])

    intake = lead(city="Oslo")

    assert picked(intake) == [2, 3, 4]
    assert skipped(intake) == {1: "out_of_area"}


def test_aliases_name_the_same_city_for_leads_and_providers(seeded, clock):
    CityAlias.objects.create(alias="bangalore", city="bengaluru")
    route(2, cities=["Bangalore"])

    intake = lead(city="Bengaluru")

    assert Provider.objects.get(pk=2).cities == ["bengaluru"]
    assert picked(intake) == [1, 2, 3]
    assert lead(city=" BANGALORE").lead.city_key == "bengaluru"


def test_pool_city_rows_follow_cities_memberships_and_eligibility(seeded, clock):
    def rows(provider_id):
        return sorted(
            PoolCity.objects.filter(provider_id=provider_id).values_list(
                "service_id", "city", "provider_eligible"
            )
        )

    def everywhere(provider_id):
        return set(
            Membership.objects.filter(provider_id=provider_id).values_list(
                "provider_everywhere", flat=True
            )
        )

    assert rows(2) == [(1, "", True), (3, "", True)]
    assert everywhere(2) == {True}
    route(2, cities=["Oslo", "Bergen"])
    assert everywhere(2) == {False}
    assert rows(2) == [
        (1, "bergen", True),
        (1, "oslo", True),
        (3, "bergen", True),
        (3, "oslo", True),
    ]
    pause_provider(Provider.objects.get(pk=2))
    assert rows(2) == [
        (1, "bergen", False),
        (1, "oslo", False),
        (3, "bergen", False),
        (3, "oslo", False),
    ]
    route(2, cities=[])
    assert rows(2) == [(1, "", False), (3, "", False)]
    assert everywhere(2) == {True}
    assert rows(1) == []  # mandatory memberships walk no pool


# --- Hours, time off ---


def test_a_provider_outside_its_hours_is_skipped_off_hours(seeded, clock):
    route(2, tz="Europe/Oslo", hours="mon-fri 12:00-18:00")

    before_noon = lead()
    clock.advance(hours=1)  # 12:00 in Oslo
    refresh_routing()
    at_noon = lead()

    assert picked(before_noon) == [1, 3, 4]
    assert skipped(before_noon) == {2: "off_hours"}
    assert picked(at_noon) == [1, 2, 3]


def test_a_provider_on_time_off_is_skipped_until_the_day_after(seeded, clock):
    route(3, tz="Europe/Oslo", add_time_off=[parse_date_range("2026-12-07..2026-12-08")])

    first = lead()
    clock.advance(days=1, hours=13)  # 00:00 on Wednesday the 9th in Oslo
    refresh_routing()
    after = lead()

    assert skipped(first) == {3: "time_off"}
    assert 3 in picked(after)


def test_a_stale_open_state_is_refreshed_by_the_engine_itself(
    seeded, clock, django_capture_on_commit_callbacks
):
    # P2..P4 close at 12:00 Oslo; nobody runs the refresh. The engine finds them closed under
    # its lock, refreshes them itself and lets the lead wait; it never picks a closed one.
    for pid in (2, 3, 4):
        route(pid, tz="Europe/Oslo", hours="mon-fri 08:00-12:00")
    clock.advance(hours=2)

    with django_capture_on_commit_callbacks(execute=True):
        intake = lead()

    assert intake.lead.status == Lead.Status.WAITING
    assert skipped(intake) == {2: "off_hours", 3: "off_hours", 4: "off_hours"}
    assert set(Provider.objects.filter(routing_open=False).values_list("pk", flat=True)) == {
        2,
        3,
        4,
    }


# --- Caps ---


def test_a_daily_cap_is_never_exceeded_and_rolls_over_at_local_midnight(seeded, clock):
    route(2, tz="Europe/Oslo", daily_cap=1)

    first, second = lead(), lead()
    clock.at = datetime(2026, 12, 7, 23, tzinfo=UTC)  # 00:00 on Tuesday in Oslo
    refresh_routing()
    third = lead()

    p2 = Provider.objects.get(pk=2)
    assert picked(first) == [1, 2, 3]
    assert picked(second) == [1, 4, 3]
    assert skipped(second) == {2: "daily_cap"}
    assert 2 in picked(third)
    assert (p2.cap_day.isoformat(), p2.cap_day_count, p2.cap_week_count) == ("2026-12-08", 1, 2)


def test_a_weekly_cap_counts_the_iso_week_across_services(seeded, clock):
    route(1, weekly_cap=2)

    a, b = lead(service_id=1), lead(service_id=3)
    c = lead(service_id=1)

    assert 1 in picked(a)
    assert 1 in picked(b)
    assert 1 not in picked(c)
    assert skipped(c)[1] == "weekly_cap"
    assert Provider.objects.get(pk=1).routing_changes_at == datetime(2026, 12, 14, tzinfo=UTC)


# --- The waiting queue per service and city ---


def test_a_waiting_lead_blocks_only_its_own_city(seeded, clock):
    for pid in (2, 3, 4):
        route(pid, cities=["Oslo"])

    bergen = lead(city="Bergen")
    oslo = lead(city="Oslo")
    bergen_again = lead(city="Bergen")

    assert bergen.lead.status == Lead.Status.WAITING
    assert bergen.lead.wait_reason == "not_enough_providers"
    assert oslo.lead.status == Lead.Status.ALLOCATED
    assert bergen_again.lead.status == Lead.Status.WAITING
    assert bergen_again.lead.wait_reason == "queued"


def test_an_area_added_drains_the_citys_waiting_leads_in_order(seeded, clock):
    for pid in (2, 3, 4):
        route(pid, cities=["Oslo"])
    first, second = lead(city="Bergen"), lead(city="Bergen")

    route(2, cities=["Oslo", "Bergen"])
    route(3, cities=["Oslo", "Bergen"])
    allocate_waiting_leads()

    first.lead.refresh_from_db()
    second.lead.refresh_from_db()
    assert first.lead.status == Lead.Status.ALLOCATED
    assert second.lead.status == Lead.Status.ALLOCATED
    assert first.lead.allocated_at == MONDAY_10


def test_an_alias_added_joins_the_providers_and_the_waiting_leads_of_both_names(
    seeded, clock, django_capture_on_commit_callbacks
):
    route(2, cities=["Bangalore"])
    route(3, cities=["Bengaluru", "Mysuru"])
    route(4, cities=["Bengaluru"])
    waiting = lead(city="Bangalore")
    assert waiting.lead.status == Lead.Status.WAITING

    with django_capture_on_commit_callbacks(execute=True):
        add_city_alias(" BANGALORE ", "Bengaluru")

    waiting.lead.refresh_from_db()
    assert Provider.objects.get(pk=2).cities == ["bengaluru"]
    assert waiting.lead.city_key == "bengaluru"
    assert waiting.lead.status == Lead.Status.ALLOCATED
    assert CityAlias.objects.get().city == "bengaluru"


def test_removing_an_alias_splits_the_cities_again(
    seeded, clock, django_capture_on_commit_callbacks
):
    route(2, cities=["Bangalore"])
    route(3, cities=["Bengaluru", "Pune"])
    route(4, cities=["Pune"])
    with django_capture_on_commit_callbacks(execute=True):
        add_city_alias("Bangalore", "Bengaluru")
    # P1 (mandatory, everywhere) and P2, P3 for both names: 3 providers.
    merged = lead(city="BANGALORE ")
    assert merged.lead.status == Lead.Status.ALLOCATED
    route(3, cities=["Pune"])  # now only P1 and P2 serve bengaluru: the next leads wait
    by_alias, by_city = lead(city="Bangalore"), lead(city="Bengaluru")
    assert by_alias.lead.status == by_city.lead.status == Lead.Status.WAITING
    assert by_alias.lead.city_key == by_city.lead.city_key == "bengaluru"

    with django_capture_on_commit_callbacks(execute=True):
        assert remove_city_alias(" bangalore") is True

    # Each provider serves again what it listed; each waiting lead is keyed again by the city
    # it was submitted with. The allocated lead keeps its city.
    assert Provider.objects.get(pk=2).cities == ["bangalore"]
    assert Provider.objects.get(pk=2).listed_cities == ["bangalore"]
    assert Provider.objects.get(pk=3).cities == ["pune"]
    assert set(PoolCity.objects.filter(provider_id=2).values_list("city", flat=True)) == {
        "bangalore"
    }
    keys = dict(Lead.objects.values_list("pk", "city_key"))
    assert keys[by_alias.lead.pk] == "bangalore"
    assert keys[by_city.lead.pk] == "bengaluru"
    assert keys[merged.lead.pk] == "bengaluru"
    assert not CityAlias.objects.exists()
    assert remove_city_alias("Bangalore") is False

    # The bangalore queue is its own again: P3 listing it lets its lead through, not the other.
    route(3, cities=["Bangalore"])
    allocate_waiting_leads()
    statuses = dict(Lead.objects.values_list("pk", "status"))
    assert statuses[by_alias.lead.pk] == Lead.Status.ALLOCATED
    assert statuses[by_city.lead.pk] == Lead.Status.WAITING
    assert set(by_alias.lead.allocations.values_list("provider_id", flat=True)) == {1, 2, 3}


def test_a_provider_listing_both_names_keeps_both_and_a_new_alias_merges_them_again(seeded):
    route(2, cities=["Bangalore", "Bengaluru", "Mysuru"])
    add_city_alias("Bangalore", "Bengaluru")
    assert Provider.objects.get(pk=2).cities == ["bengaluru", "mysuru"]

    remove_city_alias("Bangalore")

    provider = Provider.objects.get(pk=2)
    assert provider.cities == ["bangalore", "bengaluru", "mysuru"]
    assert provider.listed_cities == ["bangalore", "bengaluru", "mysuru"]


def test_changing_an_alias_moves_what_it_merged(seeded, clock):
    route(2, cities=["Bombay"])
    route(3, cities=["Oslo"])
    route(4, cities=["Oslo"])
    add_city_alias("Bombay", "Mumbai")
    waiting = lead(city="Bombay")  # P1 and P2 only: waits under mumbai
    assert (waiting.lead.status, waiting.lead.city_key) == (Lead.Status.WAITING, "mumbai")

    changed = change_city_alias("bombay", "Bombay", "Pune")

    assert (changed.alias, changed.city) == ("bombay", "pune")
    assert Provider.objects.get(pk=2).cities == ["pune"]
    waiting.lead.refresh_from_db()
    assert waiting.lead.city_key == "pune"
    with pytest.raises(ValidationError, match="itself"):
        change_city_alias("bombay", "Pune", "pune")
    assert list(CityAlias.objects.values_list("alias", "city")) == [("bombay", "pune")]
    assert Provider.objects.get(pk=2).cities == ["pune"]  # the refused change undid nothing


def test_aliases_refuse_chains_and_themselves(seeded):
    add_city_alias("Bombay", "Mumbai")

    with pytest.raises(ValidationError, match="itself"):
        add_city_alias("Mumbai", "mumbai ")
    with pytest.raises(ValidationError, match="canonical name"):
        add_city_alias("Mumbai", "Bom")
    assert add_city_alias("Bambai", "Bombay").city == "mumbai"  # through the alias


def test_staff_manage_city_aliases_in_the_admin(admin_client, seeded):
    from django.urls import reverse

    add_url = reverse("admin:providers_cityalias_add")

    saved = admin_client.post(add_url, {"alias": "Bangalore", "city": " Bengaluru"})
    refused = admin_client.post(add_url, {"alias": "bengaluru", "city": "Pune"})

    assert saved.status_code == 302
    assert list(CityAlias.objects.values_list("alias", "city")) == [("bangalore", "bengaluru")]
    assert refused.status_code == 200
    assert "canonical name of other aliases" in refused.content.decode()
    assert admin_client.get(reverse("admin:providers_cityalias_changelist")).status_code == 200


def test_staff_change_and_delete_city_aliases_in_the_admin(admin_client, seeded):
    from django.urls import reverse

    route(2, cities=["Bangalore"])
    add_city_alias("Bangalore", "Bengaluru")
    alias = CityAlias.objects.get()

    changed = admin_client.post(
        reverse("admin:providers_cityalias_change", args=[alias.pk]),
        {"alias": "Bangalore", "city": "Bengaluru City"},
    )
    assert changed.status_code == 302
    assert list(CityAlias.objects.values_list("alias", "city")) == [("bangalore", "bengaluru city")]
    assert Provider.objects.get(pk=2).cities == ["bengaluru city"]

    alias = CityAlias.objects.get()
    deleted = admin_client.post(
        reverse("admin:providers_cityalias_delete", args=[alias.pk]), {"post": "yes"}
    )
    assert deleted.status_code == 302
    assert not CityAlias.objects.exists()
    assert Provider.objects.get(pk=2).cities == ["bangalore"]


def test_the_candidates_statement_is_short_enough_for_psycopgs_statement_cache():
    from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

    from allocation.sql import CANDIDATES_SQL, NEW_ALLOCATED_LEAD_SQL

    # Longer statements are parsed again for every lead (a third more CPU per lead, measured).
    assert len(CANDIDATES_SQL) <= MAX_CACHED_STATEMENT_LENGTH
    assert len(NEW_ALLOCATED_LEAD_SQL) <= MAX_CACHED_STATEMENT_LENGTH
    assert "--" not in CANDIDATES_SQL


def test_a_lead_whose_city_is_blank_goes_only_to_providers_serving_everywhere(seeded, clock):
    route(1, cities=["Oslo"])

    intake = lead(city="   ")

    assert intake.lead.city_key == ""
    assert picked(intake) == [2, 3, 4]
    assert skipped(intake) == {1: "out_of_area"}
