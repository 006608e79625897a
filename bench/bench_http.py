"""Lead intake over HTTP under wrk, per server and worker count, against the database ceiling.

Run: .venv/bin/python bench/bench_http.py [--server serve] [--server granian ...]
         [--workers 1 2] [--concurrency 1 8 32 64] [--seconds 10] [--warmup 2] [--no-ceiling]
         [--delivery off on queued one-hangs hang]

Servers are the named entries of SERVERS in bench/common.py (serve, run, granian, uvicorn);
change a command there. It makes a throw-away database (<DATABASE_URL's name>_http, default
leaddist_bench_http, dropped and recreated each run): migrated, seeded, quotas of 100,000,000,
one API key. For each server and worker count it starts the server (DEBUG off, or on for
`run`; REDIS_URL with more than one worker), waits for /healthz, warms up with wrk, then runs
wrk (threads min(C, 2), `--timeout 30s`) with bench/wrk_leads.lua at each concurrency: POST
/api/leads, a unique phone per request, services 1-3 in turn.

Each row: leads/s (201 and 202 answers per second), wrk's p50/p99 latency, the status counts
(socket errors are wrk's connect/read/write/timeout errors), the CPU per stored lead of the
server (its process and all descendants) and of PostgreSQL (the postmaster and all its
descendants), read from /proc before and after the run, after the leads still in flight when
wrk stopped are stored; wrk's own CPU per request; and the ratio of leads/s to the pgbench
ceiling (bench/bench_ceiling.py, `multi` script, same concurrency), run first in the same
command unless --no-ceiling. Invariants are checked after each server; exit 1 if one fails.
With --delivery, each concurrency runs once per mode against the same server (off: no
endpoints; on: every provider a webhook to a receiver on 127.0.0.1 answering 200; hang: the
receiver answers only after the delivery timeout; queued: as on, with the delivery workers
stopped (SIGSTOP) during the burst and continued after it, as if they ran on another host, so
the ratio is the intake transaction's own delivery cost; one-hangs: as on, except the provider
with the most allocations, whose receiver hangs), with a second table: the ratios to `off`, the
delivery workers' share of the server CPU, deliveries done per second, jobs left at the end and
(on, queued, one-hangs) how long until every delivery of the burst to the other providers was
delivered, with their latency from creation to delivery (p50, p99, max): compare one-hangs to
on for "a hanging provider never slows the others' deliveries". Compare rows of one run: the
2-core machines are noisy, and wrk, the server and PostgreSQL share the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import common
from bench_ceiling import ceiling_table, run_ceiling

LUA = Path(__file__).resolve().with_name("wrk_leads.lua")


class WrkFailed(Exception):
    """wrk printed no result line (e.g. it could not connect at all)."""


def wrk_command(url: str, key: str, *, clients: int, seconds: float, run: int) -> list[str]:
    """wrk posting leads (wrk_leads.lua) for ``seconds`` (whole seconds: wrk takes no others)."""
    return [
        "wrk",
        *("-t", str(min(clients, 2)), "-c", str(clients), "-d", f"{round(seconds)}s"),
        *("--timeout", "30s", "-s", str(LUA), url, "--", key, str(run)),
    ]


def wrk_stats(returncode: int, stdout: str, stderr: str) -> dict[str, float]:
    """The BENCH_JSON line wrk_leads.lua prints at the end of a run."""
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line.removeprefix("BENCH_JSON "))
    raise WrkFailed(f"wrk failed ({returncode}): {stdout} {stderr}".strip())


def run_wrk(url: str, key: str, *, clients: int, seconds: float, run: int) -> dict[str, float]:
    command = wrk_command(url, key, clients=clients, seconds=seconds, run=run)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    return wrk_stats(result.returncode, result.stdout, result.stderr)


# --- Delivery modes (--delivery) ----------------------------------------------------------
DELIVERY_MODES = ("off", "on", "queued", "hang", "one-hangs")


Receiver = common.Receiver


def set_endpoints(db_url: str, url: str | None, *, hanging: tuple[int, str] | None = None) -> None:
    """Every provider gets a webhook endpoint at ``url`` (None: no endpoints at all), except
    ``hanging`` (provider id, url) if given. The first is made by `manage.py set_delivery` (its
    signing secret); the others copy it in SQL, as stored: encrypted, which every process of the
    run decrypts (common.DELIVERY_SECRET_KEYS)."""
    with common.connect(db_url) as conn:
        if url is None:
            conn.execute("DELETE FROM delivery_endpoint")
            return
        if not conn.execute("SELECT 1 FROM delivery_endpoint LIMIT 1").fetchone():
            first = conn.execute("SELECT min(id) FROM providers_provider").fetchone()[0]
            common.manage(db_url, "set_delivery", str(first), "--url", url)
        conn.execute(
            """
            INSERT INTO delivery_endpoint (provider_id, url, email, secret, updated_at)
            SELECT p.id, %(url)s, '', e.secret, now()
            FROM providers_provider p, (SELECT secret FROM delivery_endpoint LIMIT 1) e
            ON CONFLICT (provider_id) DO UPDATE SET url = EXCLUDED.url, updated_at = now()
            """,
            {"url": url},
        )
        if hanging:
            conn.execute(
                "UPDATE delivery_endpoint SET url = %s WHERE provider_id = %s",
                [hanging[1], hanging[0]],
            )


def busiest_provider(db_url: str) -> int:
    """The provider with the most allocations so far: the one whose endpoint hangs in
    `one-hangs` (a mandatory provider, in about a third of all leads)."""
    with common.connect(db_url) as conn:
        return conn.execute(
            "SELECT provider_id FROM allocation_allocation GROUP BY provider_id"
            " ORDER BY count(*) DESC, provider_id LIMIT 1"
        ).fetchone()[0]


def others_latency(db_url: str, since_id: int, hanging: int | None) -> dict[str, float | None]:
    """Seconds from a delivery's creation to its delivery, for the deliveries created since
    ``since_id`` to providers other than ``hanging``: p50, p99, max, and how many are still
    open (not delivered yet)."""
    with common.connect(db_url) as conn:
        p50, p99, top, still_open = conn.execute(
            """
            SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY latency),
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY latency),
                   max(latency),
                   count(*) FILTER (WHERE latency IS NULL)
              FROM (SELECT extract(epoch FROM delivered_at - created_at) AS latency
                      FROM delivery_delivery
                     WHERE id > %s AND provider_id IS DISTINCT FROM %s) AS d
            """,
            [since_id, hanging],
        ).fetchone()
    return {"others_p50": p50, "others_p99": p99, "others_max": top, "others_open": still_open}


def last_delivery_id(db_url: str) -> int:
    with common.connect(db_url) as conn:
        return conn.execute("SELECT coalesce(max(id), 0) FROM delivery_delivery").fetchone()[0]


def wait_for_others(db_url: str, since_id: int, hanging: int | None, limit: float = 120.0) -> float:
    """Wait (up to ``limit`` s) until every delivery created since ``since_id`` to a provider
    other than ``hanging`` is delivered; return how long it took."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if not others_latency(db_url, since_id, hanging)["others_open"]:
            break
        time.sleep(0.2)
    return time.monotonic() - start


def delivery_counts(db_url: str) -> tuple[int, int]:
    """(deliveries delivered, deliveries in flight or due now; retries later are left out)."""
    with common.connect(db_url) as conn:
        # An earlier version (LEADDIST_APP_DIR) has no worker_id: there, open and due.
        held = conn.execute(
            "SELECT count(*) FROM information_schema.columns"
            " WHERE table_name = 'delivery_delivery' AND column_name = 'worker_id'"
        ).fetchone()[0]
        in_flight = "worker_id IS NOT NULL OR " if held else ""
        return conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'delivered'),"
            " count(*) FILTER (WHERE status IN ('pending', 'retrying')"
            f" AND ({in_flight}next_attempt_at <= now()))"
            " FROM delivery_delivery"
        ).fetchone()


def wait_for_queue(db_url: str, limit: float = 120.0) -> float:
    """Wait (up to ``limit`` s) until no delivery job is left to run; return how long it took."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if delivery_counts(db_url)[1] == 0:
            break
        time.sleep(0.2)
    return time.monotonic() - start


def delivery_workers(server_pid: int) -> list[int]:
    """The launcher's delivery worker processes (`manage.py deliver_leads`; before it,
    `procrastinate worker --queues deliveries`)."""
    procs = common._processes()
    roots = []
    for pid in procs:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"deliver_leads" in argv or (b"deliveries" in argv and b"procrastinate" in argv):
            roots.append(pid)
    return [pid for pid in roots if _descends(procs, pid, server_pid)]


def delivery_ticks(server_pid: int) -> int:
    """CPU ticks of the launcher's delivery workers and their descendants."""
    return common._tree_ticks(common._processes(), delivery_workers(server_pid))


@contextlib.contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """The processes stopped (SIGSTOP) for the block, then continued: in `queued` mode the
    deliveries wait in their queue through the burst, as with workers on another host."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def _descends(procs: dict, pid: int, ancestor: int) -> bool:
    while pid in procs:
        if pid == ancestor:
            return True
        pid = procs[pid].ppid
    return False


def measure(
    server: common.Server,
    db_url: str,
    key: str,
    *,
    clients: int,
    seconds: float,
    run: int,
    mode: str = "-",
    receiver: Receiver | None = None,
) -> dict[str, object]:
    leads_before = common.count_leads(db_url)
    receiver_before = receiver.cpu_seconds() if receiver else 0.0
    delivered_before, _ = delivery_counts(db_url)
    delivery_before = delivery_ticks(server.process.pid)
    with common.CpuMeter(server.process.pid, common.database_name(db_url)) as used:
        stats = run_wrk(server.url, key, clients=clients, seconds=seconds, run=run)
        stored = common.settle(db_url) - leads_before
    delivery_cpu = (delivery_ticks(server.process.pid) - delivery_before) / common.CLOCK_TICKS
    receiver_cpu = receiver.cpu_seconds() - receiver_before if receiver else None
    delivered, queued = delivery_counts(db_url)
    duration = stats["duration_us"] / 1e6
    return {
        "mode": mode,
        "delivered_s": (delivered - delivered_before) / duration if duration else 0.0,
        "queued": queued,
        "delivery_ms": delivery_cpu * 1000 / stored if stored else None,
        "receiver_ms": receiver_cpu * 1000 / stored
        if stored and receiver_cpu is not None
        else None,
        "server": server.name,
        "workers": server.workers,
        "clients": clients,
        "leads_s": (stats["s201"] + stats["s202"]) / duration if duration else 0.0,
        "p50": stats["p50"] / 1000,
        "p99": stats["p99"] / 1000,
        "s201": stats["s201"],
        "s202": stats["s202"],
        "s409": stats["s409"],
        "other": stats["other"],
        "socket": stats["connect"] + stats["read"] + stats["write"] + stats["timeout"],
        "stored": stored,
        "server_ms": used.server * 1000 / stored if stored else None,
        "pg_ms": used.postgres * 1000 / stored if stored else None,
        "wrk_ms": used.children * 1000 / stats["requests"] if stats["requests"] else None,
    }


def http_table(rows: list[dict[str, object]], ceiling: dict[tuple[str, int], dict]) -> str:
    headers = [
        "server",
        "workers",
        "c",
        "leads/s",
        "p50 ms",
        "p99 ms",
        "201",
        "202",
        "409",
        "other",
        "socket err",
        "server CPU ms/lead",
        "PG CPU ms/lead",
        "wrk CPU ms/req",
        "vs pgbench multi",
    ]
    out = []
    for r in rows:
        if "error" in r:
            error = r["error"].replace("|", "/")[:80]
            out.append([r["server"], r["workers"], "-", error, *["-"] * 11])
            continue
        multi = ceiling.get(("multi", r["clients"]), {}).get("tps")
        out.append(
            [
                r["server"],
                r["workers"],
                r["clients"],
                common.fmt(r["leads_s"], 0),
                common.fmt(r["p50"], 1),
                common.fmt(r["p99"], 1),
                r["s201"],
                r["s202"],
                r["s409"],
                r["other"],
                r["socket"],
                common.fmt(r["server_ms"], 2),
                common.fmt(r["pg_ms"], 2),
                common.fmt(r["wrk_ms"], 3),
                f"{r['leads_s'] / multi:.2f}x" if multi else "-",
            ]
        )
    return common.markdown_table(headers, out)


def delivery_table(rows: list[dict[str, object]]) -> str:
    """Per delivery mode: intake figures and their ratio to `off` of the same server, workers
    and concurrency; delivery worker CPU; deliveries completed per second during the run, jobs
    left when it ended and (on, one-hangs) the seconds until the last delivery to a provider
    other than the hanging one was done, and those deliveries' latency."""
    headers = [
        "server",
        "workers",
        "c",
        "delivery",
        "leads/s",
        "vs off",
        "p99 ms",
        "vs off",
        "server CPU ms/lead",
        "of which delivery workers",
        "PG CPU ms/lead",
        "receiver CPU ms/lead",
        "delivered/s",
        "jobs left at end",
        "delivered after (s)",
        "others' latency p50 / p99 / max (s)",
    ]
    base = {
        (r["server"], r["workers"], r["clients"], r.get("round")): r
        for r in rows
        if r.get("mode") == "off" and "error" not in r
    }
    out = []
    for r in rows:
        if "error" in r or r.get("mode", "-") == "-":
            continue
        off = base.get((r["server"], r["workers"], r["clients"], r.get("round")))
        out.append(
            [
                r["server"],
                r["workers"],
                r["clients"],
                r["mode"],
                common.fmt(r["leads_s"], 0),
                f"{r['leads_s'] / off['leads_s']:.2f}" if off and off["leads_s"] else "-",
                common.fmt(r["p99"], 1),
                f"{r['p99'] / off['p99']:.2f}" if off and off["p99"] else "-",
                common.fmt(r["server_ms"], 2),
                common.fmt(r["delivery_ms"], 2),
                common.fmt(r["pg_ms"], 2),
                common.fmt(r.get("receiver_ms"), 2),
                common.fmt(r["delivered_s"], 0),
                r["queued"],
                common.fmt(r.get("lag"), 1),
                " / ".join(
                    common.fmt(r.get(k), 2) for k in ("others_p50", "others_p99", "others_max")
                )
                if r.get("others_p50") is not None
                else "-",
            ]
        )
    return common.markdown_table(headers, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--server",
        action="append",
        choices=list(common.SERVERS),
        help="an entry of SERVERS in bench/common.py; repeat for several (default: serve)",
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk -c 4 per server")
    parser.add_argument(
        "--ceiling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the pgbench ceiling first (default) and print the ratio to it",
    )
    parser.add_argument(
        "--protocol",
        default="prepared",
        help="pgbench -M for the ceiling: prepared, as the app runs its statements",
    )
    parser.add_argument(
        "--delivery",
        nargs="+",
        choices=DELIVERY_MODES,
        help="run each concurrency once per mode, against the same server: off (no endpoints), "
        "on (every provider a webhook to a local receiver answering 200), queued (as on, the "
        "delivery workers stopped during the burst), one-hangs (as on, but "
        "the busiest provider's receiver hangs), hang (the receiver never answers within the "
        "delivery timeout); needs --server serve (delivery workers)",
    )
    parser.add_argument("--redis-url", default=common.DEFAULT_REDIS_URL)
    parser.add_argument("--log-dir", type=Path, help="server logs (default: a temp dir)")
    args = parser.parse_args()
    servers = args.server or ["serve"]

    ceiling: dict[tuple[str, int], dict] = {}
    invariants: list[str] = []
    if args.ceiling:
        ceiling, invariants = run_ceiling(args.concurrency, args.seconds, protocol=args.protocol)

    db_url = common.database_url(common.database_name(common.base_database_url()) + "_http")
    if args.delivery:
        os.environ["ALLOW_PRIVATE_DELIVERY_TARGETS"] = "true"  # the receiver is on 127.0.0.1
        receiver = Receiver()
    key = common.prepare_app_database(db_url)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="leaddist-bench-http-"))
    rows: list[dict[str, object]] = []
    run = 0
    done: set[tuple[str, int]] = set()
    for name in servers:
        for requested in args.workers:
            workers = common.server_workers(name, requested)
            if (name, workers) in done:
                continue
            done.add((name, workers))
            try:
                with common.run_server(
                    name, url=db_url, workers=workers, redis_url=args.redis_url, log_dir=log_dir
                ) as server:
                    run += 1
                    run_wrk(server.url, key, clients=4, seconds=args.warmup, run=run)
                    # A concurrency given twice runs twice: each round's modes compare with
                    # that round's `off`, measured minutes apart at most.
                    for round_, clients in enumerate(args.concurrency):
                        for mode in args.delivery or ["-"]:
                            hanging = None
                            if mode != "-":
                                waited = wait_for_queue(db_url)
                                common.log(f"delivery {mode} (queue drained in {waited:.1f}s)")
                                kind = {"off": None, "hang": "hang"}.get(mode, "fast")
                                if mode == "one-hangs":
                                    hanging = busiest_provider(db_url)
                                set_endpoints(
                                    db_url,
                                    kind and receiver.url(kind),
                                    hanging=hanging and (hanging, receiver.url("hang")),
                                )
                            since = last_delivery_id(db_url)
                            run += 1
                            common.log(
                                f"{name} workers {workers}: wrk -c {clients} -d {args.seconds}s"
                            )
                            pause = delivery_workers(server.process.pid) if mode == "queued" else []
                            with paused(pause):
                                row = measure(
                                    server,
                                    db_url,
                                    key,
                                    clients=clients,
                                    seconds=args.seconds,
                                    run=run,
                                    mode=mode,
                                    receiver=receiver if mode != "-" else None,
                                )
                            if mode in ("on", "queued", "one-hangs"):
                                row["lag"] = wait_for_others(db_url, since, hanging)
                                row.update(others_latency(db_url, since, hanging))
                            common.log(f"    {row['leads_s']:.0f} leads/s")
                            row["round"] = round_
                            rows.append(row)
            except common.ServerFailed as exc:
                common.log(str(exc))
                rows.append({"server": name, "workers": workers, "error": "failed to start"})
                continue
            except WrkFailed as exc:
                common.log(str(exc))
                rows.append(
                    {"server": name, "workers": workers, "error": " ".join(str(exc).split())}
                )
            invariants += common.check_invariants(db_url, f"{name} w{workers}")

    if ceiling:
        print(ceiling_table(ceiling))
        print()
    print(http_table(rows, ceiling))
    if args.delivery:
        print()
        print(delivery_table(rows))
    if args.delivery:
        receiver.close()
    print(f"\nServer logs: {log_dir}")
    ok = common.report_invariants(invariants)
    if not ok or any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
