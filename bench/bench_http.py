"""A burst of leads over HTTP against daphne: throughput and latency at several concurrencies.

Run: .venv/bin/python bench/bench_http.py [--requests 600] [--concurrency 1 8 32] [--workers 1 2]

It creates a throw-away test database (test_<name>), seeds it with ample quota, serves the app
with `python -m leaddist.serve` (1 daphne process, then 2 on one socket, with Redis fan-out) and
fires POST /api/leads with httpx.AsyncClient. Compare rows of the same run: absolute numbers on
these 2-core machines are noisy. GET /healthz at the same concurrency is the cost of the HTTP
stack plus one database round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaddist.settings")

import django

django.setup()

import httpx  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

from allocation.services import create_api_key  # noqa: E402
from allocation.tests.asgi_server import run_daphne  # noqa: E402
from providers.models import Provider  # noqa: E402
from providers.services import seed_catalogue  # noqa: E402


async def burst(url: str, count: int, concurrency: int, make_request) -> tuple[float, list[float]]:
    """Send `count` requests, `concurrency` at a time; return (seconds, latencies)."""
    latencies: list[float] = []
    queue = iter(range(count))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            for n in queue:
                start = time.perf_counter()
                response = await make_request(client, n)
                latencies.append(time.perf_counter() - start)
                assert response.status_code in (200, 201), response.text

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()

    logging.getLogger("httpx").setLevel(logging.WARNING)
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        seed_catalogue()
        Provider.objects.update(quota=1_000_000, remaining_quota=1_000_000)
        _, key = create_api_key(name="bench")
        headers = {"Authorization": f"Bearer {key}"}
        log = Path("/tmp/leaddist-bench-daphne.log")
        env = {
            "RATE_LIMIT_PER_KEY": "0",
            "DEBUG": "0",
            "SECRET_KEY": "bench",
            "LOG_LEVEL": "WARNING",
        }
        env["WEBHOOK_SECRET"] = "whsec_YmVuY2gtYmVuY2gtYmVuY2gtYmVuY2gtYmVuY2g="
        env["ALLOWED_HOSTS"] = "127.0.0.1"
        env["SECURE_SSL_REDIRECT"] = "false"
        phone = iter(range(10_000_000, 99_999_999))

        async def lead(client: httpx.AsyncClient, n: int) -> httpx.Response:
            body = {"name": "Bench", "phone": f"+1{next(phone)}", "city": "X", "service": n % 3 + 1}
            return await client.post("/api/leads", json=body, headers=headers)

        async def health(client: httpx.AsyncClient, n: int) -> httpx.Response:
            return await client.get("/healthz")

        print("| workers | concurrency | requests | leads/s | p50 ms | p95 ms | healthz/s |")
        print("|---|---|---|---|---|---|---|")
        for workers in args.workers:
            extra = {"REDIS_URL": args.redis_url} if workers > 1 else {}
            with run_daphne(log, workers=workers, **env, **extra) as server:
                asyncio.run(burst(server.url, 60, 4, lead))  # warm-up
                for concurrency in args.concurrency:
                    h_secs, _ = asyncio.run(burst(server.url, args.requests, concurrency, health))
                    secs, lat = asyncio.run(burst(server.url, args.requests, concurrency, lead))
                    lat.sort()
                    rate, h_rate = args.requests / secs, args.requests / h_secs
                    p50, p95 = statistics.median(lat) * 1000, lat[int(len(lat) * 0.95)] * 1000
                    print(
                        f"| {workers} | {concurrency} | {args.requests} | {rate:.0f} | "
                        f"{p50:.1f} | {p95:.1f} | {h_rate:.0f} |"
                    )
        allocated = Provider.objects.values_list("leads_total", flat=True)
        print(f"\n{sum(allocated) // 3} leads allocated, every request answered 201.")
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
