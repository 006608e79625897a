"""Allocation cost per lead: the seed catalogue against a 10,000-provider pool and 1M stored leads.

Run: .venv/bin/python bench/bench_allocation.py [--leads 400] [--stored-leads 1000000]

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
from providers.services import seed_catalogue  # noqa: E402

BIG_POOL = 10_000


def time_leads(service_id: int, count: int, phone_base: int) -> list[float]:
    timings = []
    for n in range(count):
        data = LeadInput(service_id=service_id, name="Bench", phone=f"+1{phone_base + n}", city="X")
        start = time.perf_counter()
        lead = submit_lead(data)
        timings.append(time.perf_counter() - start)
        assert lead.status == "allocated", lead
    return timings


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
    args = parser.parse_args()

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        seed_catalogue()
        Provider.objects.update(quota=1_000_000, remaining_quota=1_000_000)
        big = build_big_pool(0.0)
        big_exhausted = build_big_pool(0.9)
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
