"""SPEC §2a against a plain reference model: random areas, hours, time off, caps and clocks.

The engine gets each candidate's routing reason from providers.routing; the reference below
reads the rules literally (local dates and minutes, leads counted from their instants) and
walks SPEC §2 itself. Over a sequence of leads at advancing instants they must agree on the
picks, the cursor and every line of the trace.
"""

import os
from datetime import UTC, date, datetime, timedelta
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from allocation.engine import Candidate, choose_providers
from allocation.services import LeadInput, intake_lead
from providers.models import Membership, PoolCursor, Provider, Service
from providers.routing import (
    Routing,
    Usage,
    WeeklyHours,
    format_hours,
    routing_reason,
    time_off_to_json,
    with_usage_day,
)
from providers.services import refresh_routing

CITIES = ("oslo", "bergen", "pune")
ZONES = ("UTC", "Europe/Oslo", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe")
# Clocks start near the DST changes of 2026 as often as anywhere else.
STARTS = (
    datetime(2026, 3, 28, 20, tzinfo=UTC),
    datetime(2026, 10, 24, 20, tzinfo=UTC),
    datetime(2026, 4, 4, 12, tzinfo=UTC),
    datetime(2026, 12, 31, 12, tzinfo=UTC),
)


def reference_reason(p, city, at, taken):
    """The one reason SPEC §2/§2a gives for not taking provider ``p`` at ``at``, or None.

    ``taken`` is every instant at which p got a lead before.
    """
    if not p["active"]:
        return "paused"
    if p["remaining"] <= 0:
        return "no_quota"
    if p["cities"] and city not in p["cities"]:
        return "out_of_area"
    local = at.astimezone(ZoneInfo(p["tz"]))
    if any(first <= local.date() <= last for first, last in p["time_off"]):
        return "time_off"
    if p["hours"] is not None:
        minute = local.hour * 60 + local.minute
        if not any(a <= minute < b for a, b in p["hours"][local.weekday()]):
            return "off_hours"
    days = [t.astimezone(ZoneInfo(p["tz"])).date() for t in taken]
    week = local.isocalendar()[:2]
    if (
        p["weekly_cap"] is not None
        and sum(d.isocalendar()[:2] == week for d in days) >= (p["weekly_cap"])
    ):
        return "weekly_cap"
    if p["daily_cap"] is not None and sum(d == local.date() for d in days) >= p["daily_cap"]:
        return "daily_cap"
    return None


def reference(mandatory, pool, cursor, providers, city, at, taken):
    """SPEC §2 read literally with §2a's eligibility: (picks or None, cursor, trace)."""
    chosen, trace = [], []

    def examine(pid, role):
        reason = "already_selected" if pid in chosen else None
        reason = reason or reference_reason(providers[pid], city, at, taken[pid])
        if reason is None:
            chosen.append(pid)
            trace.append((pid, role, "selected", None))
            return True
        trace.append((pid, role, "skipped", reason))
        return False

    for pid, _ in sorted(mandatory, key=lambda m: m[1]):
        if len(chosen) < 3:
            examine(pid, "mandatory")
    ring = sorted(pool, key=lambda m: m[1])
    start = 0
    if cursor is not None:
        later = [i for i, (_, pos) in enumerate(ring) if pos > cursor]
        start = later[0] if later else 0
    last = cursor
    for step in range(len(ring)):
        if len(chosen) == 3:
            break
        pid, pos = ring[(start + step) % len(ring)]
        if examine(pid, "pool"):
            last = pos
    if len(chosen) < 3:
        return None, cursor, trace[:50]
    return chosen, last, trace[:50]


interval = st.integers(0, 1439).flatmap(lambda a: st.tuples(st.just(a), st.integers(a + 1, 1440)))


@st.composite
def providers_with_rules(draw, pid, start):
    hours = draw(
        st.one_of(
            st.none(),
            st.lists(st.lists(interval, max_size=2), min_size=7, max_size=7).map(
                lambda week: week if any(week) else [[(480, 1080)], *week[1:]]
            ),
        )
    )
    time_off = []
    for _ in range(draw(st.integers(0, 2))):
        first = start.date() + timedelta(days=draw(st.integers(-3, 6)))
        time_off.append((first, first + timedelta(days=draw(st.integers(0, 3)))))
    return {
        "id": pid,
        "active": draw(st.integers(0, 6)) != 0,
        "remaining": draw(st.integers(0, 4)),
        "cities": frozenset(draw(st.lists(st.sampled_from(CITIES), max_size=2))),
        "tz": draw(st.sampled_from(ZONES)),
        "hours": None if hours is None else [sorted(_merge(day)) for day in hours],
        "time_off": time_off,
        "daily_cap": draw(st.one_of(st.none(), st.integers(0, 3))),
        "weekly_cap": draw(st.one_of(st.none(), st.integers(0, 5))),
    }


def _merge(spans):
    merged = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


@st.composite
def scenarios(draw):
    start = draw(st.sampled_from(STARTS)) + timedelta(minutes=draw(st.integers(0, 7 * 24 * 60)))
    n = draw(st.integers(0, 10))
    providers = {pid: draw(providers_with_rules(pid, start)) for pid in range(1, n + 1)}
    ids = list(providers)
    n_mandatory = draw(st.integers(0, min(3, n)))
    mandatory_ids = draw(st.permutations(ids))[:n_mandatory]
    pool_ids = [i for i in ids if i not in mandatory_ids]
    positions = draw(
        st.lists(st.integers(1, 40), min_size=len(pool_ids), max_size=len(pool_ids), unique=True)
    )
    mandatory = [(pid, pos) for pos, pid in enumerate(mandatory_ids, start=1)]
    pool = list(zip(pool_ids, positions, strict=True))
    cursor = draw(st.one_of(st.none(), st.integers(0, 41)))
    leads = draw(
        st.lists(
            st.tuples(st.sampled_from((*CITIES, "tromsø")), st.integers(0, 40 * 60)),
            min_size=1,
            max_size=8,
        )
    )
    return providers, mandatory, pool, cursor, start, leads


def rules_of(p):
    hours = None if p["hours"] is None else WeeklyHours(tuple(tuple(day) for day in p["hours"]))
    return Routing(
        cities=p["cities"],
        timezone=p["tz"],
        hours=hours,
        time_off=tuple(p["time_off"]),
        daily_cap=p["daily_cap"],
        weekly_cap=p["weekly_cap"],
    )


@settings(max_examples=500, deadline=None)
@given(scenarios())
def test_routed_decisions_match_the_reference_over_leads_at_advancing_clocks(scenario):
    providers, mandatory, pool, cursor, at, leads = scenario
    usage = {pid: Usage() for pid in providers}
    taken: dict[int, list[datetime]] = {pid: [] for pid in providers}
    ref_cursor = cursor

    for city, minutes_later in leads:
        at = at + timedelta(minutes=minutes_later)

        def candidate(pid, position, city=city, at=at):
            p = providers[pid]
            blocked = routing_reason(rules_of(p), usage[pid], city=city, at=at)
            return Candidate(pid, position, p["active"], p["remaining"], blocked)

        decision = choose_providers(
            [candidate(pid, pos) for pid, pos in mandatory],
            [candidate(pid, pos) for pid, pos in pool],
            cursor=cursor,
        )
        expected, ref_cursor, ref_trace = reference(
            mandatory, pool, ref_cursor, providers, city, at, taken
        )

        assert [(e.provider_id, e.role, e.outcome, e.reason) for e in decision.trace] == ref_trace
        assert decision.provider_ids == (expected or [])
        assert decision.cursor == ref_cursor
        for pid in decision.provider_ids:
            providers[pid]["remaining"] -= 1
            usage[pid] = with_usage_day(rules_of(providers[pid]), usage[pid], at)
            taken[pid].append(at)
        cursor = decision.cursor


def test_the_reference_counts_caps_in_local_days_across_midnight():
    p = {
        "active": True,
        "remaining": 5,
        "cities": frozenset(),
        "tz": "Asia/Kolkata",
        "hours": None,
        "time_off": [],
        "daily_cap": 1,
        "weekly_cap": None,
    }
    taken = [datetime(2026, 1, 5, 18, 0, tzinfo=UTC)]  # 23:30 in Kolkata, 5 January

    assert reference_reason(p, "x", datetime(2026, 1, 5, 18, 29, tzinfo=UTC), taken) == "daily_cap"
    assert reference_reason(p, "x", datetime(2026, 1, 5, 18, 30, tzinfo=UTC), taken) is None
    assert date(2026, 1, 5).weekday() == 0


# --- The same, stored: the engine's SQL walk (per-city index, bounded reads) and its writes ---


@st.composite
def db_scenarios(draw):
    start = draw(st.sampled_from(STARTS)) + timedelta(minutes=draw(st.integers(0, 7 * 24 * 60)))
    n_pool = draw(st.integers(0, 60))
    n_mandatory = draw(st.integers(0, 3))
    providers = [draw(providers_with_rules(i, start)) for i in range(n_mandatory + n_pool)]
    positions = draw(st.lists(st.integers(1, 400), min_size=n_pool, max_size=n_pool, unique=True))
    cursor = draw(st.one_of(st.none(), st.integers(0, 401)))
    leads = draw(
        st.lists(
            st.tuples(st.sampled_from((*CITIES, "tromsø")), st.integers(0, 30 * 60)),
            min_size=1,
            max_size=6,
        )
    )
    return n_mandatory, providers, positions, cursor, start, leads


class _Rollback(Exception):
    pass


@pytest.mark.django_db
@settings(
    max_examples=int(os.environ.get("ENGINE_DB_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(db_scenarios())
def test_stored_routed_allocations_match_the_reference(scenario):
    n_mandatory, specs, positions, cursor, at, leads = scenario
    clock = {"at": at}

    try:
        with (
            transaction.atomic(),
            mock.patch.object(timezone, "now", side_effect=lambda: clock["at"]),
        ):
            service = Service.objects.create(slug="prop", name="Prop")
            PoolCursor.objects.create(service=service, position=cursor)
            providers = {}
            for spec in specs:
                row = Provider.objects.create(
                    name=f"P{spec['id']}",
                    quota=4,
                    remaining_quota=spec["remaining"],
                    status="active" if spec["active"] else "paused",
                    cities=sorted(spec["cities"]),
                    timezone=spec["tz"],
                    hours=format_hours(rules_of(spec).hours),
                    time_off=time_off_to_json(spec["time_off"]),
                    daily_cap=spec["daily_cap"],
                    weekly_cap=spec["weekly_cap"],
                )
                providers[row.pk] = spec
                spec["pk"] = row.pk
            mandatory = [(s["pk"], pos) for pos, s in enumerate(specs[:n_mandatory], start=1)]
            pool = [(s["pk"], pos) for s, pos in zip(specs[n_mandatory:], positions, strict=True)]
            Membership.objects.bulk_create(
                [
                    Membership(service=service, provider_id=p, role="mandatory", position=pos)
                    for p, pos in mandatory
                ]
                + [
                    Membership(service=service, provider_id=p, role="pool", position=pos)
                    for p, pos in pool
                ]
            )
            refresh_routing(provider_ids=list(providers), now=clock["at"])
            taken = {pid: [] for pid in providers}
            ref_cursor = cursor
            waiting_cities = set()

            for n, (city, minutes_later) in enumerate(leads):
                clock["at"] += timedelta(minutes=minutes_later)
                refresh_routing(now=clock["at"])  # the transition refresh, on time
                intake = intake_lead(
                    LeadInput(service_id=service.pk, name="x", phone=f"+1555{n:07d}", city=city)
                )
                expected, ref_cursor, ref_trace = reference(
                    mandatory, pool, ref_cursor, providers, city, clock["at"], taken
                )
                if city in waiting_cities:
                    expected, ref_trace = None, []  # queued behind its city's waiting lead
                got = [p.id for p in intake.providers]
                event(intake.lead.status)
                for entry in intake.lead.trace:
                    event(entry.get("reason") or entry["outcome"])

                assert got == (expected or [])
                assert intake.lead.status == ("allocated" if expected else "waiting")
                if expected is not None or city not in waiting_cities:
                    trace = [
                        (e["provider_id"], e["role"], e["outcome"], e.get("reason"))
                        for e in intake.lead.trace
                    ]
                    assert trace == ref_trace
                if expected is None:
                    ref_cursor = PoolCursor.objects.get(service=service).position
                    waiting_cities.add(city)
                assert PoolCursor.objects.get(service=service).position == ref_cursor
                for pid in got:
                    providers[pid]["remaining"] -= 1
                    taken[pid].append(clock["at"])
            raise _Rollback
    except _Rollback:
        pass
