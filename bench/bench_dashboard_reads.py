"""The dashboard page's data reads, this checkout against another one, interleaved, in-process.

Run: .venv/bin/python bench/bench_dashboard_reads.py --before /path/to/other/checkout
         [--database NAME] [--rounds 6] [--calls 40] [--providers 300] [--leads 6000] [--reuse]

What GET /dashboard and its fragments read, without HTTP or templates: ``provider_page(1)``
(50 provider rows: latest leads, delivery rate), ``service_cards()`` (20 services: mandatory,
pool window, fairness counts, next provider), ``waiting_queues()`` (/metrics), and, as a
control that neither version changes, ``dashboard_summary()``. Each is called ``--calls`` times
in a row after a warm-up; a version's figure for a read is the median call, ``page`` the median
of the four calls' sum.

The database (``--database``, default DATABASE_URL's name with ``_dashreads``) is made afresh
with this checkout (migrate, seed) and filled in bulk: ``--providers`` more providers, twelve
more services whose pools take a fifth of them each (longer than the window of 16), the cursors
mid-pool, ``--leads`` allocated leads (3 pool allocations each) and a few hundred waiting;
half the providers have an endpoint, so their deliveries exist, most delivered, some failed.
``--reuse`` keeps a database already filled.

Each version runs in its own processes (its code on sys.path; this checkout's virtualenv),
production settings (DEBUG off), on the same database: rounds alternate ABBA (round 1 the other
first, round 2 this first...) so drift on a shared machine falls on both. Before anything is
timed, both versions' answers are compared (they must be equal) and their query counts shown.
Prints one row per round and read, then the median ratio this/other per read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common

HERE = Path(__file__).resolve()
READS = ("provider_page", "service_cards", "waiting_queues", "dashboard_summary")


# --- Inside one version's code -----------------------------------------------------------------


def setup_django(app: str, url: str) -> None:
    os.environ.update(common.app_env(url, app_dir=Path(app)))
    os.environ["DJANGO_SETTINGS_MODULE"] = "leaddist.settings"
    sys.path.insert(0, app)
    import django

    django.setup()


def fill(providers: int, leads: int) -> None:
    """Bulk rows on top of the seed catalogue (this checkout's code)."""
    import random

    from django.db import connection, transaction
    from django.utils import timezone

    from allocation.models import Allocation, Lead
    from delivery.models import Delivery, Endpoint
    from events.services import record_event
    from events.types import LEAD_ALLOCATED
    from providers.models import Membership, PoolCursor, Provider, Service

    rng = random.Random(7)
    with transaction.atomic():
        made = Provider.objects.bulk_create(
            Provider(name=f"Bench {n}", quota=10_000, remaining_quota=9_000)
            for n in range(providers)
        )
        services = Service.objects.bulk_create(
            Service(slug=f"bench-{n}", name=f"Bench service {n}") for n in range(12)
        )
        PoolCursor.objects.bulk_create(PoolCursor(service=s) for s in services)
        pools: dict[int, list[Provider]] = {}
        members = []
        for service in services:
            chosen = rng.sample(made, providers // 5 + 1)
            members.append(
                Membership(
                    service=service, provider=chosen[0], role=Membership.Role.MANDATORY, position=1
                )
            )
            pools[service.pk] = chosen[1:]
            members += [
                Membership(service=service, provider=p, role=Membership.Role.POOL, position=n)
                for n, p in enumerate(chosen[1:], start=1)
            ]
        Membership.objects.bulk_create(members)
        for service in services:
            PoolCursor.objects.filter(service=service).update(position=len(pools[service.pk]) // 2)
        # Endpoints for half the providers, written past the SSRF guard: delivery's trigger then
        # inserts their deliveries with the allocations.
        endpoints = []
        for provider in made[::2]:
            endpoint = Endpoint(provider=provider, url=f"https://p{provider.pk}.example/hook")
            endpoint.set_secret(Endpoint.generate_secret())
            endpoints.append(endpoint)
        Endpoint.objects.bulk_create(endpoints)
        now = timezone.now()
        rows = Lead.objects.bulk_create(
            Lead(
                service=services[n % len(services)],
                name=f"Lead {n}",
                phone=f"+1777{n:07d}",
                city="Benchville",
                status=Lead.Status.ALLOCATED,
                allocated_at=now,
            )
            for n in range(leads)
        )
        Allocation.objects.bulk_create(
            Allocation(lead=lead, provider=p, role="pool", rank=k + 1, cycle=1)
            for lead in rows
            for k, p in enumerate(rng.sample(pools[lead.service_id], 3))
        )
        Lead.objects.bulk_create(
            Lead(
                service=services[n % len(services)],
                name=f"Waiting {n}",
                phone=f"+1778{n:07d}",
                city="Benchville",
                city_key="benchville",
                status=Lead.Status.WAITING,
                wait_reason=Lead.WaitReason.NOT_ENOUGH_PROVIDERS,
            )
            for n in range(300)
        )
        for lead in rows[-40:]:
            record_event(LEAD_ALLOCATED, {"lead_id": lead.pk, "service_id": lead.service_id})
    table = Delivery._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET status = CASE WHEN random() < 0.85 THEN 'delivered' "
            "ELSE 'failed' END, delivered_at = now() WHERE random() < 0.9"
        )
        cursor.execute(f"UPDATE {table} SET delivered_at = NULL WHERE status <> 'delivered'")
        cursor.execute("ANALYZE")


def answers() -> dict[str, str]:
    """What each read returns, in one comparable shape."""
    from dashboard import selectors

    page = selectors.provider_page(1)
    rows = [
        (r.provider.pk, [tuple(vars(x).values()) for x in r.latest], r.delivered, r.finished)
        for r in page.object_list
    ]
    cards = [
        (
            c.service.pk,
            c.cursor,
            [vars(x) for x in c.mandatory],
            [vars(x) for x in c.pool],
            c.pool_size,
            c.windowed,
            c.last_picked and vars(c.last_picked),
            c.next_provider and vars(c.next_provider),
            c.waiting,
        )
        for c in selectors.service_cards()
    ]
    queues = [(q.slug, q.waiting, q.oldest_age_seconds > 0) for q in selectors.waiting_queues()]
    summary = vars(selectors.dashboard_summary())
    return {
        name: repr(value) for name, value in zip(READS, (rows, cards, queues, summary), strict=True)
    }


def child(app: str, url: str, calls: int, check: bool) -> None:
    """Prints one JSON line: each read's median seconds (and its queries and answers, with
    ``check``)."""
    setup_django(app, url)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from dashboard import selectors

    reads = {
        "provider_page": lambda: list(selectors.provider_page(1).object_list),
        "service_cards": selectors.service_cards,
        "waiting_queues": selectors.waiting_queues,
        "dashboard_summary": selectors.dashboard_summary,
    }
    out: dict[str, object] = {}
    if check:
        out["answers"] = answers()
        queries = {}
        for name, read in reads.items():
            with CaptureQueriesContext(connection) as captured:
                read()
            queries[name] = len(captured)
        out["queries"] = queries
    for read in reads.values():  # warm-up: connection, compiled queries, plans
        for _ in range(3):
            read()
    times: dict[str, list[float]] = {name: [] for name in reads}
    pages = []
    for _ in range(calls):
        total = 0.0
        for name, read in reads.items():
            start = time.perf_counter()
            read()
            took = time.perf_counter() - start
            times[name].append(took)
            total += took
        pages.append(total)
    out["median"] = {name: statistics.median(t) for name, t in times.items()}
    out["median"]["page"] = statistics.median(pages)
    print(json.dumps(out))


# --- The driver ----------------------------------------------------------------------------------


def run_child(app: Path, url: str, calls: int, *, check: bool = False) -> dict:
    command = [common.PYTHON, str(HERE), "--child", str(app), "--url", url, "--calls", str(calls)]
    if check:
        command.append("--check")
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=app)
    if result.returncode != 0:
        sys.exit(f"{app} failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="the other checkout (old code)")
    parser.add_argument("--this", type=Path, default=common.ROOT, help="default: this checkout")
    parser.add_argument("--database", help="default: DATABASE_URL's name + _dashreads")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--providers", type=int, default=300)
    parser.add_argument("--leads", type=int, default=6000)
    parser.add_argument("--reuse", action="store_true", help="keep a database already filled")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fill", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.fill:
            setup_django(args.child, args.url)
            fill(args.providers, args.leads)
        else:
            child(args.child, args.url, args.calls, args.check)
        return
    if args.before is None:
        parser.error("--before is required")

    base = common.base_database_url()
    name = args.database or common.database_name(base) + "_dashreads"
    url = common.database_url(name, base)
    this, before = args.this.resolve(), args.before.resolve()
    if not args.reuse:
        common.prepare_app_database(url, api_key=False, app_dir=this)
        common.log(f"filling {name}: {args.providers} providers, {args.leads} leads")
        command = [common.PYTHON, str(HERE), "--child", str(this), "--url", url, "--fill"]
        command += ["--providers", str(args.providers), "--leads", str(args.leads)]
        subprocess.run(command, check=True, cwd=this)

    checks = {
        "before": run_child(before, url, 1, check=True),
        "this": run_child(this, url, 1, check=True),
    }
    differ = [r for r in READS if checks["before"]["answers"][r] != checks["this"]["answers"][r]]
    print(f"answers equal: {'yes' if not differ else 'NO: ' + ', '.join(differ)}")
    print(
        "queries (before -> this): "
        + ", ".join(
            f"{r} {checks['before']['queries'][r]} -> {checks['this']['queries'][r]}" for r in READS
        )
    )
    if differ:
        sys.exit(1)

    figures: dict[str, list[dict]] = {"before": [], "this": []}
    names = [*READS, "page"]
    print("| round | " + " | ".join(f"{n} ms before / this" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for n in range(1, args.rounds + 1):
        order = ("before", "this") if n % 4 in (1, 0) else ("this", "before")
        got = {}
        for side in order:
            got[side] = run_child(before if side == "before" else this, url, args.calls)["median"]
            figures[side].append(got[side])
        cells = [f"{1e3 * got['before'][r]:.2f} / {1e3 * got['this'][r]:.2f}" for r in names]
        print(f"| {n} | " + " | ".join(cells) + " |", flush=True)
    print()
    for r in names:
        ratios = [t[r] / b[r] for b, t in zip(figures["before"], figures["this"], strict=True)]
        print(
            f"{r}: this/before median {statistics.median(ratios):.2f} "
            f"(lowest {min(ratios):.2f}, highest {max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
