"""Speed to lead: leads at a steady rate through `make serve`, delivered to a local receiver.

Run: .venv/bin/python bench/bench_delivery.py [--rate 60 100] [--seconds 30] [--workers 2]
         [--mode steady one-hangs kill terminate] [--kill-at 10]

It makes a throw-away database (<DATABASE_URL's name>_delivery), migrated, seeded, quotas of
100,000,000, one API key, and gives every provider a webhook endpoint at a receiver on
127.0.0.1 (bench/receiver.py, its own process, recording each receipt's time and webhook-id).
For each mode and rate it starts `python -m leaddist.serve` (DEBUG off, as production), sends
POST /api/leads at the rate (open loop: request i leaves at i/rate seconds, whatever the
answers), waits until every delivery is done (at most --drain seconds), stops the server and
reports, per run:

- leads answered 201 (allocated) and deliveries expected (3 per lead);
- received once, received more than once (by webhook-id), never received;
- speed to lead: from the customer's request leaving the load generator to the provider's
  receipt of it, p50, p99 and max, over every delivery; the same from the allocation (the
  delivery row's creation, in the allocating transaction); and intake's own answer time, p99;
- the delivery worker's CPU per webhook (ms, its process read from /proc), and the receiver's;
- the longest gap between two receipts while the run was sending.

Modes: ``steady`` (every endpoint answers at once); ``one-hangs`` (provider 1, in two services'
every lead, never answers in time; the others' latency is reported); ``kill`` (endpoints answer
after 1 s; the delivery worker is SIGKILLed --kill-at seconds in, and the launcher starts
another); ``terminate`` (after a steady run's first --kill-at seconds, every backend of the app
is terminated with pg_terminate_backend, as a failover does; latency of the leads after it).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

import common
import httpx
from bench_http import delivery_workers, set_endpoints

MODES = ("steady", "one-hangs", "kill", "terminate")


async def send_leads(
    url: str, key: str, *, rate: float, seconds: float, run: int, on_tick=None
) -> list[tuple[float, int | None, int, float]]:
    """POST rate*seconds leads, request i at start + i/rate; return (sent at, lead id, status,
    seconds until the answer)."""
    total = int(rate * seconds)
    results: list[tuple[float, int | None, int, float]] = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        start = time.monotonic()

        async def one(i: int) -> None:
            body = {
                "name": "Bench",
                "phone": f"+1{run:03d}{i:07d}",
                "city": "Oslo",
                "service": 1 + i % 3,
            }
            sent = time.time()
            try:
                response = await client.post(
                    "/api/leads", json=body, headers={"Authorization": f"Bearer {key}"}
                )
                lead = response.json().get("id") if response.status_code in (201, 202) else None
                results.append((sent, lead, response.status_code, time.time() - sent))
            except httpx.HTTPError:
                results.append((sent, None, 0, time.time() - sent))

        tasks = []
        ticked = set()
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elapsed = int(time.monotonic() - start)
            if on_tick is not None and elapsed not in ticked:
                ticked.add(elapsed)
                on_tick(elapsed)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return results


def deliveries_of(db_url: str, lead_ids: list[int]) -> dict[int, tuple[int, int, float]]:
    """delivery id -> (lead id, provider id, allocated at) for the leads."""
    with common.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT id, lead_id, provider_id, extract(epoch FROM created_at)::float8"
            " FROM delivery_delivery WHERE lead_id = ANY(%s)",
            [lead_ids],
        ).fetchall()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


def wait_done(db_url: str, lead_ids: list[int], limit: float) -> float:
    """Wait until none of the leads' deliveries is open (at most ``limit`` s); return how long."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        with common.connect(db_url) as conn:
            open_ = conn.execute(
                "SELECT count(*) FROM delivery_delivery"
                " WHERE lead_id = ANY(%s) AND status IN ('pending', 'retrying')",
                [lead_ids],
            ).fetchone()[0]
        if not open_:
            break
        time.sleep(0.5)
    return time.monotonic() - start


def terminate_backends(db_url: str) -> int:
    """pg_terminate_backend every other session on the bench database; return how many."""
    with common.connect(db_url) as conn:
        return conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]


def worker_ticks(server_pid: int) -> int:
    procs = common._processes()
    return sum(procs[pid].ticks for pid in delivery_workers(server_pid) if pid in procs)


def run_one(args, db_url: str, key: str, mode: str, rate: float, run: int, log_dir: Path) -> dict:
    receiver = common.Receiver(slow=1.0, record=True)
    kind = "slow" if mode == "kill" else "fast"
    with common.connect(db_url) as conn:
        conn.execute("DELETE FROM delivery_endpoint")
    set_endpoints(db_url, receiver.url(kind, "/p"))
    with common.connect(db_url) as conn:  # a path per provider, to tell them apart
        conn.execute(
            "UPDATE delivery_endpoint SET url = %s || provider_id",
            [receiver.url(kind, "/p")],
        )
        if mode == "one-hangs":
            conn.execute(
                "UPDATE delivery_endpoint SET url = %s WHERE provider_id = 1",
                [receiver.url("hang", "/p1")],
            )
    events: dict[str, float] = {}
    with common.run_server(
        "serve", url=db_url, workers=args.workers, redis_url=args.redis_url, log_dir=log_dir
    ) as server:
        time.sleep(1.0)  # the delivery worker's first claim
        pid = server.process.pid
        ticks_before = worker_ticks(pid)
        receiver_before = receiver.cpu_seconds()

        def on_tick(second: int) -> None:
            if second != args.kill_at or mode not in ("kill", "terminate"):
                return
            events["fault_at"] = time.time()
            if mode == "kill":
                for worker in delivery_workers(pid):
                    os.kill(worker, signal.SIGKILL)
            else:
                events["terminated"] = terminate_backends(db_url)

        # CPU of a worker that is killed is lost with it: kill mode reports none.
        results = asyncio.run(
            send_leads(server.url, key, rate=rate, seconds=args.seconds, run=run, on_tick=on_tick)
        )
        sent_end = time.time()
        lead_ids = [lead for _, lead, status, _ in results if lead is not None]
        drained = wait_done(db_url, lead_ids, args.drain)
        ticks_after = worker_ticks(pid)
        receiver_cpu = receiver.cpu_seconds() - receiver_before
    receipts = receiver.close()
    deliveries = deliveries_of(db_url, lead_ids)
    sent_at = {lead: sent for sent, lead, _, _ in results if lead is not None}
    counts = Counter(webhook_id for _, webhook_id, _ in receipts)
    first: dict[int, float] = {}
    for at, webhook_id, _ in sorted(receipts):
        if webhook_id.isdigit() and int(webhook_id) in deliveries:
            first.setdefault(int(webhook_id), at)
    after_fault = events.get("fault_at", 0.0) if mode == "terminate" else 0.0
    counted = [
        (d, lead, allocated)
        for d, (lead, provider, allocated) in deliveries.items()
        if d in first
        and not (mode == "one-hangs" and provider == 1)
        and sent_at[lead] >= after_fault
    ]
    latencies = [first[d] - sent_at[lead] for d, lead, _ in counted]
    from_allocation = [first[d] - allocated for d, _, allocated in counted]
    answers = [answer for _, _, _, answer in results]
    times = sorted(at for at, _, _ in receipts if at <= sent_end)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    webhooks = sum(1 for d in deliveries if d in first)
    worker_ms = (ticks_after - ticks_before) / common.CLOCK_TICKS * 1000
    expected = [d for d, (_, provider, _) in deliveries.items()]
    if mode == "one-hangs":
        expected = [d for d, (_, provider, _) in deliveries.items() if provider != 1]
    return {
        "mode": mode,
        "rate": rate,
        "leads": len(lead_ids),
        "errors": sum(1 for _, lead, _, _ in results if lead is None),
        "deliveries": len(expected),
        "once": sum(1 for d in expected if counts.get(str(d)) == 1),
        "twice+": sum(1 for d in expected if counts.get(str(d), 0) > 1),
        "missing": sum(1 for d in expected if str(d) not in counts),
        "p50": common.percentile(latencies, 50),
        "p99": common.percentile(latencies, 99),
        "max": max(latencies) if latencies else None,
        "alloc_p50": common.percentile(from_allocation, 50),
        "alloc_p99": common.percentile(from_allocation, 99),
        "answer_p99": common.percentile(answers, 99),
        "worker_ms": None if mode == "kill" else worker_ms / max(webhooks, 1),
        "receiver_ms": receiver_cpu * 1000 / max(len(receipts), 1),
        "gap": max(gaps) if gaps else None,
        "drained": drained,
        "last_after_end": (max(first.values()) - sent_end) if first else None,
        "terminated": events.get("terminated"),
    }


def table(rows: list[dict]) -> str:
    headers = [
        "mode",
        "leads/s",
        "leads",
        "deliveries",
        "once",
        "twice+",
        "missing",
        "p50 s",
        "p99 s",
        "max s",
        "from allocation p50/p99 s",
        "intake answer p99 s",
        "worker CPU ms/webhook",
        "receiver CPU ms/webhook",
        "longest gap s",
        "last receipt after last request s",
    ]
    body = [
        [
            row["mode"],
            f"{row['rate']:g}",
            row["leads"],
            row["deliveries"],
            row["once"],
            row["twice+"],
            row["missing"],
            common.fmt(row["p50"], 3),
            common.fmt(row["p99"], 3),
            common.fmt(row["max"], 3),
            f"{common.fmt(row['alloc_p50'], 3)} / {common.fmt(row['alloc_p99'], 3)}",
            common.fmt(row["answer_p99"], 3),
            common.fmt(row["worker_ms"], 2),
            common.fmt(row["receiver_ms"], 2),
            common.fmt(row["gap"], 2),
            common.fmt(row["last_after_end"], 2),
        ]
        for row in rows
    ]
    return common.markdown_table(headers, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, nargs="+", default=[60, 100])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mode", nargs="+", default=["steady"], choices=MODES)
    parser.add_argument("--kill-at", type=int, default=10)
    parser.add_argument("--drain", type=float, default=120)
    parser.add_argument("--redis-url", default=common.DEFAULT_REDIS_URL)
    args = parser.parse_args()
    common.raise_fd_limit(4096)
    os.environ["ALLOW_PRIVATE_DELIVERY_TARGETS"] = "true"  # the receiver is on 127.0.0.1
    db_url = common.database_url(common.database_name(common.base_database_url()) + "_delivery")
    key = common.prepare_app_database(db_url)
    log_dir = Path(tempfile.mkdtemp(prefix="leaddist-bench-delivery-"))
    rows = []
    run = 0
    for mode in args.mode:
        for rate in args.rate:
            run += 1
            common.log(f"{mode} at {rate:g} leads/s for {args.seconds:g} s")
            rows.append(run_one(args, db_url, key, mode, rate, run, log_dir))
            print(table(rows[-1:]), flush=True)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
