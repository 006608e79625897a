"""Intake over HTTP, this checkout against another one, in alternating bursts on one machine.

Run: .venv/bin/python bench/bench_ab.py --app /path/to/other/checkout [--this CHECKOUT] [--rounds 8]
         [--seconds 10] [--concurrency 32] [--workers 2] [--warmup 2]

For "stays ≥ 0.9x of the commit before" on a 2-core machine whose speed drifts by a third
from one minute to the next (other virtual machines on the host): bench_http.py measures one
version per run, a minute or more apart, and its pairs scatter more than the difference asked
about. Here both versions run at once, each with `make serve`'s launcher (bench/common.py's
`serve`, DEBUG off) on a database of its own (DATABASE_URL's name with ``_ab_other`` and
``_ab_this``, migrated and seeded by its own version, quotas of 100,000,000) and a Redis
database of its own (``--redis-url``'s number and the next). After a warm-up of each, the
bursts alternate, ABBA (round 1 other first, round 2 this first...), so the drift falls on
both equally; each burst is wrk with bench/wrk_leads.lua as in bench_http.py (POST
/api/leads, a unique phone per request, services 1-3 in turn). The idle server meanwhile runs
only its background workers' periodic checks.

Per round: leads/s of each, this/other, and the CPU per stored lead of each server (its
process tree) and of PostgreSQL (the backends of its database); then the median, lowest and
highest ratio. The invariants are checked on both databases at the end; exit 1 if one fails.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import common
from bench_http import measure, run_wrk

ROOT = Path(__file__).resolve().parent.parent


def redis_db(url: str, offset: int) -> str:
    """``url`` with its database number moved by ``offset`` (redis://host:port/N)."""
    parts = urlsplit(url)
    number = int(parts.path.lstrip("/") or 0) + offset
    return urlunsplit(parts._replace(path=f"/{number}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", type=Path, required=True, help="the other checkout")
    parser.add_argument(
        "--this", type=Path, default=ROOT, help="this side's checkout (default: this one)"
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk -c 4 per server")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/8")
    args = parser.parse_args()

    base = common.database_name(common.base_database_url())
    versions = {"other": args.app.resolve(), "this": args.this.resolve()}
    urls = {name: common.database_url(f"{base}_ab_{name}") for name in versions}
    keys = {
        name: common.prepare_app_database(urls[name], app_dir=app) for name, app in versions.items()
    }
    log_dir = Path(tempfile.mkdtemp(prefix="leaddist-bench-ab-"))
    rows: list[dict[str, dict[str, object]]] = []
    with contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(
                common.run_server(
                    "serve",
                    url=urls[name],
                    workers=args.workers,
                    redis_url=redis_db(args.redis_url, offset),
                    log_dir=log_dir,
                    app_dir=app,
                )
            )
            for offset, (name, app) in enumerate(versions.items())
        }
        run = 0
        for name, server in servers.items():
            run += 1
            run_wrk(server.url, keys[name], clients=4, seconds=args.warmup, run=run)
        for round_ in range(args.rounds):
            order = ["other", "this"] if round_ % 2 == 0 else ["this", "other"]
            row: dict[str, dict[str, object]] = {}
            for name in order:
                run += 1
                common.log(f"round {round_ + 1}: {name}, wrk -c {args.concurrency}")
                row[name] = measure(
                    servers[name],
                    urls[name],
                    keys[name],
                    clients=args.concurrency,
                    seconds=args.seconds,
                    run=run,
                )
                common.log(f"    {row[name]['leads_s']:.0f} leads/s")
            rows.append(row)

    invariants: list[str] = []
    for name, url in urls.items():
        invariants += common.check_invariants(url, name)
    print(table(rows, args))
    print(f"\nother: {versions['other']}\nthis: {versions['this']}\nServer logs: {log_dir}")
    if not common.report_invariants(invariants):
        sys.exit(1)


def table(rows: list[dict[str, dict[str, object]]], args: argparse.Namespace) -> str:
    headers = [
        "round",
        "first",
        "other leads/s",
        "this leads/s",
        "this / other",
        "server CPU ms/lead other / this",
        "PG CPU ms/lead other / this",
        "p99 ms other / this",
    ]
    out = []
    ratios = []
    for i, row in enumerate(rows, 1):
        other, this = row["other"], row["this"]
        ratio = this["leads_s"] / other["leads_s"] if other["leads_s"] else float("nan")
        ratios.append(ratio)
        out.append(
            [
                i,
                next(iter(row)),
                common.fmt(other["leads_s"], 0),
                common.fmt(this["leads_s"], 0),
                f"{ratio:.2f}x",
                f"{common.fmt(other['server_ms'], 2)} / {common.fmt(this['server_ms'], 2)}",
                f"{common.fmt(other['pg_ms'], 2)} / {common.fmt(this['pg_ms'], 2)}",
                f"{common.fmt(other['p99'], 0)} / {common.fmt(this['p99'], 0)}",
            ]
        )
    summary = (
        f"\nc={args.concurrency}, {args.workers} workers, {args.seconds} s bursts: this / other "
        f"median **{statistics.median(ratios):.2f}x** (lowest {min(ratios):.2f}x, highest "
        f"{max(ratios):.2f}x, {len(ratios)} rounds)"
    )
    return common.markdown_table(headers, out) + "\n" + summary


if __name__ == "__main__":
    main()
