"""Forecast latency: N=100 on the seed catalogue, N=1000 on the 10,000-provider pools.

Run: .venv/bin/python bench/bench_forecast.py [--runs 200]

Builds a throw-away test database as bench_allocation.py does (its pools), then times
allocation.forecast.forecast in this process, the scenarios interleaved run by run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import bench_allocation as ba
from django.db import connection
from django.test.utils import setup_test_environment

from allocation.forecast import forecast
from providers.models import Provider
from providers.services import seed_catalogue


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        seed_catalogue()
        Provider.objects.update(quota=1_000_000, remaining_quota=1_000_000)
        big = ba.build_big_pool(0.0)
        routed = ba.build_routed_pool()
        scenarios = {
            "seed catalogue, service 1, N=100": lambda: forecast(1, leads=100, city="Oslo"),
            "pool of 10,000, N=1000": lambda: forecast(big, leads=1000, city="Oslo"),
            "pool of 10,000, 5 of 100 cities, hours, N=1000": lambda: forecast(
                routed, leads=1000, city="City 7"
            ),
        }
        timings: dict[str, list[float]] = {name: [] for name in scenarios}
        for run in scenarios.values():
            run()  # warm-up
        for _ in range(args.runs):
            for name, run in scenarios.items():
                start = time.perf_counter()
                run()
                timings[name].append(time.perf_counter() - start)
        print("| scenario | runs | median ms | p99 ms |")
        print("|---|---|---|---|")
        for name, values in timings.items():
            print(
                f"| {name} | {len(values)} | {statistics.median(values) * 1000:.1f} "
                f"| {p99(values) * 1000:.1f} |"
            )
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
