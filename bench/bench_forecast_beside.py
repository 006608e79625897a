"""Intake beside forecasts: a c=32 burst of POST /api/leads with and without forecast requests
running at the same time, against one `make serve` server (2 workers), rounds interleaved.

Run: .venv/bin/python bench/bench_forecast_beside.py [--rounds 3] [--seconds 10]
         [--forecast-leads 100] [--forecast-rate 0] [--forecasters 1]

Each round runs the burst twice, without forecasts then with them (ABAB...), and the table gives
each round's intake rate with forecasts as a ratio of the same round's rate without. The
forecasts are GET /api/services/{1,2,3}/forecast?leads=N&city=Oslo in turn, from
``--forecasters`` keep-alive clients: back to back (``--forecast-rate 0``), or each client at
that many requests per second. The server CPU per lead includes the forecasts' CPU; with the
forecasts counted, the difference is their CPU per request. The invariants of bench/common.py
are checked at the end (exit 1 if one fails).
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import common
from bench_http import measure, run_wrk


class Forecaster(threading.Thread):
    """One dashboard-like client asking for forecasts until stopped."""

    def __init__(self, url: str, key: str, *, leads: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.address = urlsplit(url).netloc
        self.key = key
        self.leads = leads
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failures = 0

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.address, timeout=30)
        headers = {"Authorization": f"Bearer {self.key}"}
        n = 0
        while not self.stop.is_set():
            path = f"/api/services/{1 + n % 3}/forecast?leads={self.leads}&city=Oslo"
            n += 1
            start = time.perf_counter()
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(self.address, timeout=30)
                ok = False
            elapsed = time.perf_counter() - start
            if ok:
                self.latencies.append(elapsed)
            else:
                self.failures += 1
            if self.interval:
                self.stop.wait(max(self.interval - elapsed, 0.0))
        conn.close()


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--forecast-leads", type=int, default=100)
    parser.add_argument("--forecast-rate", type=float, default=0.0, help="per client; 0: b2b")
    parser.add_argument("--forecasters", type=int, default=1)
    parser.add_argument("--redis-url", default=common.DEFAULT_REDIS_URL)
    args = parser.parse_args()

    db_url = common.database_url(common.database_name(common.base_database_url()) + "_beside")
    key = common.prepare_app_database(db_url)
    log_dir = Path(tempfile.mkdtemp(prefix="leaddist-bench-beside-"))
    rows: list[dict[str, object]] = []
    with common.run_server(
        "serve", url=db_url, workers=2, redis_url=args.redis_url, log_dir=log_dir
    ) as server:
        run = 1
        run_wrk(server.url, key, clients=4, seconds=2, run=run)
        for round_ in range(args.rounds):
            for mode in ("without", "with"):
                run += 1
                clients = [
                    Forecaster(server.url, key, leads=args.forecast_leads, rate=args.forecast_rate)
                    for _ in range(args.forecasters if mode == "with" else 0)
                ]
                for client in clients:
                    client.start()
                row = measure(
                    server, db_url, key, clients=args.concurrency, seconds=args.seconds, run=run
                )
                for client in clients:
                    client.stop.set()
                for client in clients:
                    client.join()
                latencies = [s for c in clients for s in c.latencies]
                row |= {
                    "round": round_ + 1,
                    "mode": mode,
                    "forecasts": len(latencies),
                    "forecast_failures": sum(c.failures for c in clients),
                    "forecast_p50": statistics.median(latencies) * 1000 if latencies else None,
                    "forecast_p99": p99(latencies) * 1000 if latencies else None,
                }
                common.log(
                    f"round {round_ + 1} {mode} forecasts: {row['leads_s']:.0f} leads/s, "
                    f"{len(latencies)} forecasts"
                )
                rows.append(row)
    invariants = common.check_invariants(db_url, "beside")

    table = []
    ratios = []
    for row in rows:
        base = next(r for r in rows if r["round"] == row["round"] and r["mode"] == "without")
        ratio = row["leads_s"] / base["leads_s"] if base["leads_s"] else 0.0
        if row["mode"] == "with":
            ratios.append(ratio)
        table.append(
            (
                row["round"],
                row["mode"],
                f"{row['leads_s']:.0f}",
                f"{ratio:.2f}x",
                f"{row['p99']:.0f}",
                common.fmt(row["server_ms"], 2),
                common.fmt(row["pg_ms"], 2),
                row["forecasts"],
                f"{row['forecasts'] / args.seconds:.1f}",
                common.fmt(row["forecast_p50"], 1),
                common.fmt(row["forecast_p99"], 1),
                row["forecast_failures"],
                row["other"],
            )
        )
    print(
        common.markdown_table(
            (
                "round",
                "forecasts",
                "leads/s",
                "vs without",
                "intake p99 ms",
                "server CPU ms/lead",
                "PostgreSQL CPU ms/lead",
                "forecasts",
                "forecasts/s",
                "forecast p50 ms",
                "forecast p99 ms",
                "forecast errors",
                "intake non-2xx",
            ),
            table,
        )
    )
    if ratios:
        print(
            f"\nwith / without: median {statistics.median(ratios):.2f}x, "
            f"range {min(ratios):.2f}x-{max(ratios):.2f}x over {len(ratios)} rounds"
        )
    print(f"Server logs: {log_dir}")
    if not common.report_invariants(invariants) or any(r["other"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
