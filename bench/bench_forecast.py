"""Forecast latency: N=100 on the seed catalogue, N=1000 on the 10,000-provider pools.

Run: .venv/bin/python bench/bench_forecast.py [--runs 200] [--before PATH] [--queries] [--profile]

Builds a throw-away test database as bench_allocation.py does (its pools), then times
allocation.forecast.forecast in this process, the scenarios interleaved run by run.
``--before PATH``: also time another version of allocation/forecast.py (e.g. from
``git show <commit>:allocation/forecast.py``), interleaved with this one run by run, and give
each scenario's ratio of medians. ``--queries``: print the statements of one run of each;
``--profile``: cProfile one run of each in CPU time (top functions by own time).

Each forecast is timed twice: wall time, and this process's CPU time (time.process_time, which
a loaded machine inflates far less: other processes' load shows in wall time only). The
database server's CPU is not in the CPU column.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import pstats
import statistics
import sys
import time

import bench_allocation as ba
from django.db import connection
from django.test.utils import CaptureQueriesContext, setup_test_environment

from allocation.forecast import forecast
from providers.models import Provider
from providers.services import seed_catalogue


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--before", help="another allocation/forecast.py to compare with")
    parser.add_argument("--queries", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    versions = {"": forecast}
    if args.before:
        spec = importlib.util.spec_from_file_location("forecast_before", args.before)
        module = importlib.util.module_from_spec(spec)
        sys.modules["forecast_before"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        versions = {"before: ": module.forecast, "": forecast}
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        seed_catalogue()
        Provider.objects.update(quota=1_000_000, remaining_quota=1_000_000)
        big = ba.build_big_pool(0.0)
        routed = ba.build_routed_pool()
        scenarios = {}
        for label, run in versions.items():
            scenarios |= {
                f"{label}seed catalogue, service 1, N=100": lambda f=run: f(
                    1, leads=100, city="Oslo"
                ),
                f"{label}pool of 10,000, N=1000": lambda f=run: f(big, leads=1000, city="Oslo"),
                f"{label}pool of 10,000, 5 of 100 cities, hours, N=1000": lambda f=run: f(
                    routed, leads=1000, city="City 7"
                ),
            }
        timings: dict[str, list[float]] = {name: [] for name in scenarios}
        for name, run in scenarios.items():
            run()  # warm-up
            if args.queries:
                connection.queries_log.clear()  # the setup's bulk loads filled it
                with CaptureQueriesContext(connection) as queries:
                    run()
                print(f"{name}: {len(queries.captured_queries)} statements")
                for query in queries.captured_queries:
                    print(f"  {query['sql'][:160]}")
            if args.profile:
                profile = cProfile.Profile(time.process_time)  # CPU, not wall
                profile.runcall(run)
                print(f"{name}: profile")
                pstats.Stats(profile).sort_stats("tottime").print_stats(15)
        cpu: dict[str, list[float]] = {name: [] for name in scenarios}
        for _ in range(args.runs):
            for name, run in scenarios.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                run()
                cpu[name].append(time.process_time() - start_cpu)
                timings[name].append(time.perf_counter() - start)
        print("| scenario | runs | wall median ms | wall p99 ms | CPU median ms | CPU p99 ms |")
        print("|---|---|---|---|---|---|")
        for name, values in timings.items():
            print(
                f"| {name} | {len(values)} | {statistics.median(values) * 1000:.1f} "
                f"| {p99(values) * 1000:.1f} | {statistics.median(cpu[name]) * 1000:.1f} "
                f"| {p99(cpu[name]) * 1000:.1f} |"
            )
        for name in timings:
            if name.startswith("before: "):
                after = name.removeprefix("before: ")
                wall = statistics.median(timings[after]) / statistics.median(timings[name])
                ratio = statistics.median(cpu[after]) / statistics.median(cpu[name])
                print(f"{after}: after / before medians, wall {wall:.2f}, CPU {ratio:.2f}")
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
