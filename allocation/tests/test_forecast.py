"""The forecast (allocation/forecast.py): what it answers, that real leads then get exactly that,
and that it writes nothing."""

import pytest
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext

from allocation.forecast import (
    ForecastRefused,
    UnknownService,
    WhatIf,
    _in_snapshot,
    forecast,
)
from allocation.models import Allocation, Lead
from allocation.services import LeadInput, intake_lead
from allocation.sql import READ_ONLY_SNAPSHOT
from events.models import Event
from providers.models import PoolCursor, Provider, Service
from providers.services import clean_routing, set_routing


def route(provider_id, **rules):
    provider = Provider.objects.get(pk=provider_id)
    set_routing(provider, clean_routing(provider, **rules))


def submit(service_id, n, city="Springfield"):
    intake = intake_lead(
        LeadInput(service_id=service_id, name="Ada", phone=f"+1555{n:07d}", city=city)
    )
    return intake


def as_forecast(intake, n):
    """A real lead's answer in the forecast's shape."""
    if intake.lead.status == Lead.Status.WAITING:
        return {"n": n, "status": "waiting", "reason": intake.lead.wait_reason}
    return {
        "n": n,
        "status": "allocated",
        "providers": [
            {"id": p.id, "name": p.name, "role": p.role, "rank": rank}
            for rank, p in enumerate(intake.providers, start=1)
        ],
    }


def ids(entry):
    return [p["id"] for p in entry.get("providers", [])]


@pytest.mark.django_db
def test_the_forecast_of_the_seed_is_the_spec_worked_example_and_real_leads_follow_it(seeded):
    answer = forecast(1, leads=3)

    assert [ids(entry) for entry in answer["leads"]] == [[1, 2, 3], [1, 4, 2], [1, 3, 4]]
    assert answer["leads"][0]["providers"][0] == {
        "id": 1,
        "name": "Provider 1",
        "role": "mandatory",
        "rank": 1,
    }
    real = [as_forecast(submit(1, n), n + 1) for n in range(3)]
    assert real == answer["leads"]


@pytest.mark.django_db
def test_runs_out_at_is_the_lead_after_which_a_provider_has_nothing_left(seeded):
    Provider.objects.filter(pk=2).update(remaining_quota=1)

    answer = forecast(1, leads=12)

    by_id = {p["id"]: p for p in answer["providers"]}
    assert by_id[2] == {"id": 2, "name": "Provider 2", "leads_left": 0, "runs_out_at": 1}
    assert by_id[1]["runs_out_at"] == 10  # quota 10, in every lead
    assert by_id[4] == {"id": 4, "name": "Provider 4", "leads_left": 1, "runs_out_at": None}
    assert answer["leads"][10] == {"n": 11, "status": "waiting", "reason": "not_enough_providers"}
    assert answer["leads"][11] == {"n": 12, "status": "waiting", "reason": "queued"}
    real = [as_forecast(submit(1, n), n + 1) for n in range(12)]
    assert real == answer["leads"]


@pytest.mark.django_db
def test_a_daily_cap_runs_out_within_the_forecast(seeded):
    route(1, daily_cap=2)

    answer = forecast(1, leads=4)

    by_id = {p["id"]: p for p in answer["providers"]}
    assert by_id[1]["runs_out_at"] == 2
    assert by_id[1]["leads_left"] == 0
    assert [ids(entry) for entry in answer["leads"]][2:] == [[3, 4, 2], [3, 4, 2]]
    assert [as_forecast(submit(1, n), n + 1) for n in range(4)] == answer["leads"]


@pytest.mark.django_db
def test_leads_of_a_city_with_a_waiting_lead_are_queued_and_other_cities_are_not(seeded):
    route(2, cities=["Oslo"])
    route(3, cities=["Oslo"])
    Provider.objects.filter(pk=4).update(status="paused")
    assert submit(1, 0, city="Bergen").lead.status == Lead.Status.WAITING

    bergen = forecast(1, leads=2, city=" BERGEN ")
    oslo = forecast(1, leads=1, city="oslo")

    assert bergen["leads"] == [
        {"n": 1, "status": "waiting", "reason": "queued"},
        {"n": 2, "status": "waiting", "reason": "queued"},
    ]
    assert bergen["based_on"]["waiting_ahead"] == 1
    assert bergen["based_on"]["city"] == "bergen"
    assert ids(oslo["leads"][0]) == [1, 2, 3]
    assert [as_forecast(submit(1, n, city="Bergen"), n) for n in (1, 2)] == bergen["leads"]


@pytest.mark.django_db
def test_what_if_resume_drains_the_queue_first_and_is_echoed(seeded):
    Provider.objects.filter(pk__in=[3, 4]).update(status="paused")
    submit(1, 0)  # waits: P1 and P2 only

    plain = forecast(1, leads=2, city="Springfield")
    resumed = forecast(1, leads=2, city="Springfield", what_if=WhatIf(resume=(3,)))

    assert [e["status"] for e in plain["leads"]] == ["waiting", "waiting"]
    assert resumed["based_on"]["drained_first"] == 1
    assert [ids(e) for e in resumed["leads"]] == [[1, 2, 3], [1, 2, 3]]
    assert resumed["what_if"]["resume"] == [3]
    assert Provider.objects.get(pk=3).status == "paused"  # nothing written


@pytest.mark.django_db
def test_what_if_pause_quota_and_cities(seeded):
    route(4, cities=["Bergen"])

    answer = forecast(
        1,
        leads=3,
        city="Oslo",
        what_if=WhatIf(pause=(2,), quota={3: 1}, cities={4: ("oslo",)}),
    )

    assert [e["status"] for e in answer["leads"]] == ["allocated", "waiting", "waiting"]
    assert ids(answer["leads"][0]) == [1, 3, 4]  # P2 paused; P4 now serves Oslo
    assert [e.get("reason") for e in answer["leads"][1:]] == ["not_enough_providers", "queued"]
    assert answer["what_if"]["quota"] == [{"provider": 3, "quota": 1}]
    assert answer["what_if"]["cities"] == [{"provider": 4, "cities": ["oslo"]}]


@pytest.mark.django_db
def test_bad_what_if_and_unknown_or_inactive_services_are_refused(seeded):
    with pytest.raises(ForecastRefused) as refused:
        forecast(1, leads=1, what_if=WhatIf(pause=(999,), resume=(2,), quota={2: 3}))
    with pytest.raises(UnknownService):
        forecast(999, leads=1)
    Service.objects.filter(pk=2).update(active=False)
    with pytest.raises(ForecastRefused) as inactive:
        forecast(2, leads=1)

    assert refused.value.fields == {"pause": ["Unknown provider: 999."]}
    assert "service" in inactive.value.fields


def _table_state():
    return (
        Lead.objects.count(),
        Allocation.objects.count(),
        Event.objects.count(),
        list(PoolCursor.objects.order_by("service_id").values_list("service_id", "position")),
        list(
            Provider.objects.order_by("pk").values_list(
                "pk", "status", "remaining_quota", "cap_day_count", "routing_open", "version"
            )
        ),
    )


@pytest.mark.django_db(transaction=True)
def test_the_forecast_runs_in_one_read_only_snapshot_locks_nothing_and_writes_nothing(seeded_tx):
    submit(1, 0)
    before = _table_state()

    with CaptureQueriesContext(connection) as queries:
        forecast(1, leads=50, what_if=WhatIf(resume=(2,), quota={3: 40}))

    statements = [q["sql"].upper() for q in queries.captured_queries if q["sql"] != "BEGIN"]
    assert statements[0] == READ_ONLY_SNAPSHOT
    assert not [s for s in statements if "FOR UPDATE" in s or "FOR SHARE" in s]
    assert not [s for s in statements if s.startswith(("INSERT", "UPDATE", "DELETE"))]
    assert _table_state() == before
    assert not connection.in_atomic_block


@pytest.mark.django_db(transaction=True)
def test_a_write_inside_the_forecast_snapshot_fails(seeded_tx):
    def write():
        Provider.objects.filter(pk=1).update(remaining_quota=0)

    with pytest.raises(DatabaseError, match="read-only transaction"):
        _in_snapshot(write)

    assert Provider.objects.get(pk=1).remaining_quota == 10


@pytest.mark.django_db
def test_inside_a_callers_transaction_the_snapshot_is_read_only_too(seeded):
    def read_only():
        with connection.cursor() as db:
            db.execute("SHOW transaction_read_only")
            return db.fetchone()[0]

    assert _in_snapshot(read_only) == "on"
    Provider.objects.filter(pk=1).update(remaining_quota=3)  # the caller may write again

    assert Provider.objects.get(pk=1).remaining_quota == 3
