"""What checking pooled connections costs a request, with DB_POOL_CHECK off, on (leaddist's
check: a poll() of the idle socket, no round trip), and with psycopg_pool's own check
(`roundtrip`: an empty query per checkout, Django's CONN_HEALTH_CHECKS), in turns in one run.

Run: .venv/bin/python bench/bench_pool_check.py [--seconds 8] [--concurrency 8] [--rounds 2]
         [--modes off on roundtrip] [--no-wrk]

First, the checkout itself: what a request pays to take a connection from the pool and give it
back (Django's connect and close, as at a request's first query and its end), in a process of
each mode, the best of 7 runs of 2,000 checkouts (the best, because other load on a shared
machine only ever adds time).

One production server (`leaddist.serve`, DEBUG off, one uvicorn worker, no background worker)
per mode and round, on a throw-away database (<DATABASE_URL's name>_poolcheck, default
leaddist_bench_poolcheck): migrated, seeded, one API key. Each path gets 1 s of warm-up, then
``--seconds`` of wrk (2 threads, ``--concurrency`` connections). Modes alternate within each
round (off, on, roundtrip; then the reverse), so drift on a shared machine falls on all of
them. Each row: requests/s, p50 and p99 latency; then the ratio of each mode's mean to off's.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common

HERE = Path(__file__).resolve().parent
PATHS = ("/healthz", "/api/providers")
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["off", "on", "roundtrip"])
    parser.add_argument("--no-wrk", action="store_true", help="the checkout figures only")
    return parser.parse_args()


def mode_env(mode: str) -> dict[str, str]:
    if mode == "off":
        return {"DB_POOL_CHECK": "false"}
    if mode == "on":
        return {"DB_POOL_CHECK": "true"}
    # Django's engine with psycopg_pool's check: bench/pool_roundtrip_settings.py.
    return {
        "DB_POOL_CHECK": "false",
        "DJANGO_SETTINGS_MODULE": "pool_roundtrip_settings",
        "PYTHONPATH": f"{common.APP_DIR}:{HERE}",
    }


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * UNITS[unit]


def run_wrk(url: str, key: str, *, clients: int, seconds: int) -> dict[str, float]:
    command = ["wrk", "-t", "2", "-c", str(clients), "-d", f"{seconds}s", "--latency"]
    command += ["-H", f"Authorization: Bearer {key}", url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"{url}: {errors.group(1)} answers were not 2xx:\n{out}")
    return {"rate": rate, "p50": p50, "p99": p99}


CHECKOUTS = """
import os, time, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaddist.settings")
django.setup()
from django.db import connection
def cycles(n):
    started = time.perf_counter()
    for _ in range(n):
        connection.ensure_connection()
        connection.close()
    return (time.perf_counter() - started) / n
cycles(500)
print(min(cycles(2000) for _ in range(7)) * 1e6)
"""


def checkout_microseconds(url: str, mode: str) -> float:
    env = common.app_env(url) | mode_env(mode)
    out = subprocess.run(
        [common.PYTHON, "-c", CHECKOUTS],
        cwd=common.APP_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    url = common.database_url(common.database_name(common.base_database_url()) + "_poolcheck")
    key = common.prepare_app_database(url)
    checkout: dict[str, list[float]] = {}
    for round_number in range(args.rounds):
        for mode in args.modes if round_number % 2 == 0 else reversed(args.modes):
            checkout.setdefault(mode, []).append(checkout_microseconds(url, mode))
            common.log(f"round {round_number + 1} {mode:9} checkout {checkout[mode][-1]:.1f} us")
    print("| mode | µs per checkout (each round) |")
    print("|---|---|")
    for mode in args.modes:
        print(f"| {mode} | {', '.join(f'{us:.1f}' for us in checkout[mode])} |")
    if args.no_wrk:
        return
    print()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    order = list(args.modes)
    original = common.app_env
    with tempfile.TemporaryDirectory() as logs:
        for round_number in range(args.rounds):
            for mode in order if round_number % 2 == 0 else reversed(order):
                # The server's environment is common.app_env's, plus the mode's.
                extra = {"BACKGROUND_WORKERS": "0"} | mode_env(mode)

                def app_env(*a: object, _extra: dict = extra, **k: object) -> dict[str, str]:
                    return original(*a, **k) | _extra

                common.app_env = app_env
                try:
                    with common.run_server(
                        "serve", url=url, workers=1, redis_url=None, log_dir=Path(logs)
                    ) as server:
                        for path in PATHS:
                            run_wrk(server.url + path, key, clients=args.concurrency, seconds=1)
                            row = run_wrk(
                                server.url + path,
                                key,
                                clients=args.concurrency,
                                seconds=args.seconds,
                            )
                            results.setdefault((mode, path), []).append(row)
                            common.log(f"round {round_number + 1} {mode:9} {path:15} {row}")
                finally:
                    common.app_env = original
    print("| path | mode | requests/s (each round) | p50 ms | p99 ms | vs off |")
    print("|---|---|---|---|---|---|")
    for path in PATHS:
        base = statistics.mean(r["rate"] for r in results[("off", path)])
        for mode in args.modes:
            rows = results[(mode, path)]
            mean = statistics.mean(r["rate"] for r in rows)
            rates = ", ".join(f"{r['rate']:.0f}" for r in rows)
            p50 = statistics.mean(r["p50"] for r in rows)
            p99 = statistics.mean(r["p99"] for r in rows)
            print(f"| `{path}` | {mode} | {rates} | {p50:.2f} | {p99:.2f} | {mean / base:.2f}x |")


if __name__ == "__main__":
    main()
