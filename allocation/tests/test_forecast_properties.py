"""The forecast against reality: random catalogues (mandatory and pool, quotas including 0, paused
providers, areas, hours, time off, caps), random cursors and random waiting leads. The forecast
of N leads is computed, then N real leads go through intake at the same instant, and each must
get exactly what the forecast said: the same providers in the same order, or the same wait.
What-if assumptions are checked the same way: the changes are then made for real (and drain, as
they do) before the real leads arrive."""

import os
from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from allocation.forecast import WhatIf, forecast
from allocation.models import Lead
from allocation.services import LeadInput, intake_lead
from allocation.tests.test_forecast import as_forecast
from allocation.tests.test_routing_properties import (
    CITIES,
    STARTS,
    providers_with_rules,
    rules_of,
)
from providers.models import Membership, PoolCursor, Provider, Service
from providers.routing import format_hours, normalise_city, time_off_from_json, time_off_to_json
from providers.services import (
    RoutingRules,
    canonical_cities,
    pause_provider,
    refresh_routing,
    resume_provider,
    set_routing,
    update_provider,
)

QUOTA = 4


@st.composite
def scenarios(draw):
    start = draw(st.sampled_from(STARTS)) + timedelta(minutes=draw(st.integers(0, 7 * 24 * 60)))
    n_pool = draw(st.integers(2, 25))
    n_mandatory = draw(st.integers(0, 3))
    specs = [draw(providers_with_rules(i, start)) for i in range(n_mandatory + n_pool)]
    positions = draw(st.lists(st.integers(1, 200), min_size=n_pool, max_size=n_pool, unique=True))
    cursor = draw(st.one_of(st.none(), st.integers(0, 201)))
    city = draw(st.sampled_from((*CITIES, "tromsø")))
    waiting = draw(st.lists(st.sampled_from((*CITIES, "tromsø")), max_size=2))
    leads = draw(st.integers(1, 12))
    indexes = st.integers(0, max(len(specs) - 1, 0))
    what_if = {}
    if specs:
        what_if = draw(
            st.one_of(
                st.just({}),
                st.fixed_dictionaries(
                    {},
                    optional={
                        "pause": st.lists(indexes, max_size=2, unique=True),
                        "resume": st.lists(indexes, max_size=2, unique=True),
                        "quota": st.dictionaries(indexes, st.integers(0, 6), max_size=2),
                        "cities": st.dictionaries(
                            indexes, st.lists(st.sampled_from(CITIES), max_size=2), max_size=1
                        ),
                    },
                ),
            )
        )
    if what_if:
        # A real drain serves the service's other cities' queues too, in global order; the
        # forecast models only its own queue's (docs/SPEC.md §2b).
        waiting = [city] * len(waiting)
    if "pause" in what_if and "resume" in what_if:
        what_if["resume"] = [i for i in what_if["resume"] if i not in what_if["pause"]]
    return n_mandatory, specs, positions, cursor, start, city, waiting, leads, what_if


def build(n_mandatory, specs, positions, cursor, at, waiting, number):
    service = Service.objects.create(slug=f"forecast-{number}", name=f"Forecast {number}")
    PoolCursor.objects.create(service=service, position=cursor)
    pks = []
    for spec in specs:
        pks.append(
            Provider.objects.create(
                name=f"F{number}-{spec['id']}",
                quota=QUOTA,
                remaining_quota=spec["remaining"],
                leads_this_cycle=QUOTA - spec["remaining"],
                status="active" if spec["active"] else "paused",
                cities=sorted(spec["cities"]),
                timezone=spec["tz"],
                hours=format_hours(rules_of(spec).hours),
                time_off=time_off_to_json(spec["time_off"]),
                daily_cap=spec["daily_cap"],
                weekly_cap=spec["weekly_cap"],
            ).pk
        )
    Membership.objects.bulk_create(
        [
            Membership(service=service, provider_id=pk, role="mandatory", position=pos)
            for pos, pk in enumerate(pks[:n_mandatory], start=1)
        ]
        + [
            Membership(service=service, provider_id=pk, role="pool", position=pos)
            for pk, pos in zip(pks[n_mandatory:], positions, strict=True)
        ]
    )
    refresh_routing(provider_ids=pks, now=at)
    for n, city in enumerate(waiting):
        Lead.objects.create(
            service=service,
            name="Old",
            phone=f"+1666{n:07d}",
            city=city,
            city_key=normalise_city(city),
            status=Lead.Status.WAITING,
            wait_reason=Lead.WaitReason.NOT_ENOUGH_PROVIDERS,
            created_at=at - timedelta(minutes=5),
        )
    return service, pks


def make_real(what_if: WhatIf) -> None:
    """The what-if's changes, made as staff make them (each drains if it adds capacity)."""
    for pid in what_if.pause:
        pause_provider(Provider.objects.get(pk=pid))
    for pid in what_if.resume:
        resume_provider(Provider.objects.get(pk=pid))
    for pid, quota in what_if.quota.items():
        update_provider(Provider.objects.get(pk=pid), quota=quota)
    for pid, cities in what_if.cities.items():
        p = Provider.objects.get(pk=pid)
        # As clean_routing would give them, without re-checking the generated time off.
        rules = RoutingRules(
            canonical_cities(cities),
            p.timezone,
            p.hours,
            list(time_off_from_json(p.time_off)),
            p.daily_cap,
            p.weekly_cap,
            listed_cities=list(cities),
        )
        set_routing(p, rules)


def what_if_of(changes: dict, pks: list[int]) -> WhatIf:
    """The drawn changes (indexes into the providers) as a WhatIf of their ids."""
    return WhatIf(
        pause=tuple(pks[i] for i in changes.get("pause", [])),
        resume=tuple(pks[i] for i in changes.get("resume", [])),
        quota={pks[i]: q for i, q in changes.get("quota", {}).items()},
        cities={pks[i]: tuple(c) for i, c in changes.get("cities", {}).items()},
    )


def real_leads(service: Service, count: int, city: str) -> list[dict]:
    """``count`` real leads of the service and city through intake, in the forecast's shape."""
    return [
        as_forecast(
            intake_lead(
                LeadInput(service_id=service.pk, name="x", phone=f"+1555{n:07d}", city=city)
            ),
            n,
        )
        for n in range(1, count + 1)
    ]


@pytest.mark.django_db(transaction=True)
@settings(
    max_examples=int(os.environ.get("FORECAST_DB_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(scenarios())
def test_the_forecast_equals_what_real_leads_then_get(scenario):
    n_mandatory, specs, positions, cursor, at, city, waiting, count, changes = scenario
    number = Service.objects.count() + 1
    clock = {"at": at}

    with mock.patch.object(timezone, "now", side_effect=lambda: clock["at"]):
        service, pks = build(n_mandatory, specs, positions, cursor, at, waiting, number)
        what_if = what_if_of(changes, pks)
        answer = forecast(service.pk, leads=count, city=city, what_if=what_if)
        make_real(what_if)
        real = real_leads(service, count, city)

    for entry in answer["leads"]:
        event(entry.get("reason") or entry["status"])
    if what_if.provider_ids:
        event("what-if")
    assert real == answer["leads"]
    left = dict(Provider.objects.filter(pk__in=pks).values_list("pk", "remaining_quota"))
    for provider in answer["providers"]:
        assert provider["leads_left"] <= left[provider["id"]]
        if provider["runs_out_at"] is None:
            assert provider["leads_left"] > 0


@pytest.mark.django_db(transaction=True)
@settings(
    max_examples=int(os.environ.get("FORECAST_DB_EXAMPLES", "40")) // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(scenarios(), st.integers(1, 3 * 24 * 60))
def test_a_forecast_for_a_later_instant_equals_what_real_leads_then_get(scenario, minutes):
    """``at`` later than now: the forecast reads past the materialised routing flags (it
    assumes the routing check has run by then, docs/SPEC.md §2b); the real leads arrive then,
    after that check. No lead waits (a check that opens a provider would drain it first)."""
    n_mandatory, specs, positions, cursor, now, city, _, count, changes = scenario
    later = now + timedelta(minutes=minutes)
    number = Service.objects.count() + 1
    clock = {"at": now}

    with mock.patch.object(timezone, "now", side_effect=lambda: clock["at"]):
        service, pks = build(n_mandatory, specs, positions, cursor, now, [], number)
        what_if = what_if_of(changes, pks)
        answer = forecast(service.pk, leads=count, city=city, at=later, what_if=what_if)
        clock["at"] = later
        refresh_routing(provider_ids=pks, now=later)
        make_real(what_if)
        real = real_leads(service, count, city)

    for entry in answer["leads"]:
        event(entry.get("reason") or entry["status"])
    assert real == answer["leads"]
