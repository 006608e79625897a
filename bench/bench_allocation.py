"""Allocation cost per lead: the seed catalogue against a 10,000-provider pool and 1M stored leads.

Run: .venv/bin/python bench/bench_allocation.py [--leads 400] [--stored-leads 1000000]

The routed scenario (SPEC §2a) gives each provider of a 10,000-provider pool 5 of 100 cities,
weekly hours and a timezone (about half of them open at any time), and sends each lead from one
of the 100 cities: the walk goes through the city's rows of the per-city index.

It builds a throw-away test database (test_<name> of DATABASE_URL, default
test_leaddist_bench), fills it, and times submit_lead one lead at a time in each scenario,
in this process. Machines here are noisy, so read the ratios between scenarios of the same
run, not the absolute numbers. Results and commands go in docs/PERFORMANCE.md. The
invariants of bench/common.py are checked on the leads it allocated (the bulk-loaded history
left out) before the database is dropped; the command exits 1 if one fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import common

sys.path.insert(0, str(common.APP_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaddist.settings")
os.environ.setdefault("DATABASE_URL", common.DEFAULT_DATABASE_URL)

import django

django.setup()

from django.db import connection  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

from allocation.services import LeadInput, submit_lead  # noqa: E402
from providers.models import Membership, PoolCursor, Provider, Service  # noqa: E402
from providers.services import refresh_routing, seed_catalogue  # noqa: E402

BIG_POOL = 10_000


def time_leads(
    service_id: int, count: int, phone_base: int, cities: list[str] | None = None
) -> list[float]:
    timings = []
    for n in range(count):
        city = cities[n % len(cities)] if cities else "X"
        data = LeadInput(
            service_id=service_id, name="Bench", phone=f"+1{phone_base + n}", city=city
        )
        start = time.perf_counter()
        lead = submit_lead(data)
        timings.append(time.perf_counter() - start)
        assert lead.status == "allocated", lead
    return timings


def interleaved(
    first: int, second: int, count: int, phone_base: int, cities: list[str]
) -> tuple[list[float], list[float]]:
    """Leads of two services one after the other, ``count`` of each: on a shared, noisy machine
    both see the same load, so the ratio of their medians is steadier than between two runs."""
    a: list[float] = []
    b: list[float] = []
    for n in range(count):
        a += time_leads(first, 1, phone_base + 2 * n)
        b += time_leads(second, 1, phone_base + 2 * n + 1, [cities[n % len(cities)]])
    return a, b


def build_big_pool(exhausted_share: float) -> int:
    """A service with 1 mandatory provider and a pool of BIG_POOL providers.

    The exhausted ones have a quota of 0: ineligible like a used-up quota, and consistent
    for the invariants check (quota - remaining_quota = leads allocated this cycle).
    """
    service = Service.objects.create(slug=f"big-{exhausted_share}", name="Big pool")
    PoolCursor.objects.create(service=service)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO providers_provider
                (name, quota, remaining_quota, status, cycle,
                 leads_this_cycle, leads_total, created_at)
            SELECT 'Big ' || g, q, q, 'active', 1, 0, 0, now()
            FROM (
                SELECT g, CASE WHEN random() < %s THEN 0 ELSE 1000000 END AS q
                FROM generate_series(1, %s) g
            ) s
            RETURNING id
            """,
            [exhausted_share, BIG_POOL + 1],
        )
        ids = sorted(row[0] for row in cursor.fetchall())
    Provider.objects.filter(pk=ids[0]).update(quota=1_000_000, remaining_quota=1_000_000)
    Membership.objects.create(service=service, provider_id=ids[0], role="mandatory", position=1)
    Membership.objects.bulk_create(
        (
            Membership(service=service, provider_id=pid, role="pool", position=pos)
            for pos, pid in enumerate(ids[1:], start=1)
        ),
        batch_size=5000,
    )
    return service.pk


CITIES = [f"City {n}" for n in range(100)]
HOURS = [
    ("mon-fri 08:00-18:00", "Europe/Oslo"),
    ("mon-sun 06:00-22:00", "Asia/Kolkata"),
    ("mon-sat 09:00-17:00", "America/New_York"),
    ("mon-fri 00:00-12:00; sat-sun 10:00-14:00", "UTC"),
    ("mon-sun 00:00-24:00", "Australia/Sydney"),
]


def build_routed_pool() -> int:
    """A service with 1 mandatory provider (everywhere, always) and a pool of BIG_POOL providers,
    each serving 5 of 100 cities, with weekly hours in one of 5 timezones."""
    service = Service.objects.create(slug="big-routed", name="Big routed pool")
    PoolCursor.objects.create(service=service)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO providers_provider
                (name, quota, remaining_quota, status, cycle, leads_this_cycle, leads_total,
                 created_at, cities, hours, timezone, routing_changes_at)
            SELECT 'Routed ' || g, 1000000, 1000000, 'active', 1, 0, 0, now(),
                   ARRAY(SELECT 'city ' || ((g * 7 + k * 20) %% 100) FROM generate_series(0, 4) k),
                   (%s::text[])[1 + (g / 100) %% 5], (%s::text[])[1 + (g / 100) %% 5], now()
            FROM generate_series(1, %s) g
            RETURNING id
            """,
            [[h for h, _ in HOURS], [tz for _, tz in HOURS], BIG_POOL],
        )
        ids = sorted(row[0] for row in cursor.fetchall())
    mandatory = Provider.objects.create(
        name="Routed mandatory", quota=1_000_000, remaining_quota=1_000_000
    )
    Membership.objects.create(service=service, provider=mandatory, role="mandatory", position=1)
    Membership.objects.bulk_create(
        (
            Membership(service=service, provider_id=pid, role="pool", position=pos)
            for pos, pid in enumerate(ids, start=1)
        ),
        batch_size=5000,
    )
    refresh_routing()  # materialise who is open now, as the transition refresh keeps it
    open_now = Provider.objects.filter(pk__in=ids, routing_open=True).count()
    print(f"Routed pool: {open_now} of {len(ids)} providers open now", file=sys.stderr)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return service.pk


def explain(service_id: int) -> None:
    """The plan of the engine's candidates statement for a lead of the routed pool: every step
    an index scan with a bounded number of rows (docs/PERFORMANCE.md)."""
    from django.db import transaction

    from allocation.services import INITIAL_SLACK, MAX_POSITION, SLOTS, TRACE_LIMIT
    from allocation.sql import CANDIDATES_SQL

    cursor_position = PoolCursor.objects.get(service_id=service_id).position
    params = {
        "service": service_id,
        "city": "city 42",
        "before": 2**63 - 1,
        "cursor": -1 if cursor_position is None else cursor_position,
        "wanted": SLOTS + INITIAL_SLACK,
        "seen": TRACE_LIMIT,
        "intake": True,
        "max_position": MAX_POSITION,
    }
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + CANDIDATES_SQL, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    print(plan, file=sys.stderr)


def store_leads(count: int) -> None:
    """Old history: allocated leads of another service, bulk-loaded without the triggers."""
    service = Service.objects.create(slug="history", name="History")
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")  # skip the commit-time checks
        cursor.execute(
            """
            INSERT INTO allocation_lead
                (service_id, name, phone, city, description, status, wait_reason, source, trace,
                 created_at, allocated_at)
            SELECT %s, 'Old', '+2' || g, 'X', '', 'allocated', '', 'bench', '[]', now(), now()
            FROM generate_series(1, %s) g
            """,
            [service.pk, count],
        )
        cursor.execute("SET session_replication_role = DEFAULT")
        cursor.execute("ANALYZE")


def summary(name: str, timings: list[float], baseline: float | None) -> float:
    median = statistics.median(timings) * 1000
    p95 = sorted(timings)[int(len(timings) * 0.95)] * 1000
    ratio = f"{median / baseline:.2f}x" if baseline else "1.00x"
    print(f"| {name} | {len(timings)} | {median:.2f} | {p95:.2f} | {ratio} |")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=400)
    parser.add_argument("--stored-leads", type=int, default=1_000_000)
    parser.add_argument(
        "--explain",
        action="store_true",
        help="print EXPLAIN (ANALYZE, BUFFERS) of the candidates statement on the routed pool",
    )
    args = parser.parse_args()

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        seed_catalogue()
        Provider.objects.update(quota=1_000_000, remaining_quota=1_000_000)
        big = build_big_pool(0.0)
        big_exhausted = build_big_pool(0.9)
        routed = build_routed_pool()
        print(f"Storing {args.stored_leads} old leads...", file=sys.stderr)
        store_leads(args.stored_leads)

        time_leads(1, 50, 10_000_000)  # warm-up
        print("| scenario | leads | median ms/lead | p95 ms/lead | vs seed |")
        print("|---|---|---|---|---|")
        base = summary("seed catalogue, service 1", time_leads(1, args.leads, 20_000_000), None)
        summary("seed catalogue, service 3", time_leads(3, args.leads, 30_000_000), base)
        summary("pool of 10,000", time_leads(big, args.leads, 40_000_000), base)
        summary(
            "pool of 10,000, 90% exhausted", time_leads(big_exhausted, args.leads, 50_000_000), base
        )
        summary(
            "pool of 10,000, 5 of 100 cities each, with hours",
            time_leads(routed, args.leads, 70_000_000, CITIES),
            base,
        )
        seed_again, routed_again = interleaved(1, routed, args.leads, 80_000_000, CITIES)
        pair = summary("interleaved: seed catalogue, service 1", seed_again, None)
        summary("interleaved: pool of 10,000, 5 of 100 cities, with hours", routed_again, pair)
        if args.explain:
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
            explain(routed)
        summary("seed catalogue again (drift check)", time_leads(2, args.leads, 60_000_000), base)
        url = common.database_url(connection.settings_dict["NAME"], common.base_database_url())
        # The history leads (source "bench") were bulk-loaded without allocations.
        invariants = common.check_invariants(url, "allocation", leads_where="l.source <> 'bench'")
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
    if not common.report_invariants(invariants):
        sys.exit(1)


if __name__ == "__main__":
    main()
