"""How long each allocation holds its locks, before and after a change, in-process.

Run: .venv/bin/python bench/bench_lockhold.py --app /path/to/other/checkout [--rounds 3]
     [--leads 600] [--threads 6]

Intake over HTTP queues on locks: each service's leads take turns on its pool cursor, and in
the seed catalogue two services share their mandatory provider (P1), so most leads also take
turns on one provider row. Throughput then follows the time a lead holds those locks, which this
measures without the HTTP layer and with load-independent figures beside the wall times:

- **held**: from the moment the cursor lock is granted to the end of COMMIT (wall), split into
  the statements run under it (the candidates read that locks the providers, the writes) and
  the Python between them;
- **CPU held**: this thread's CPU time over the same span (time.thread_time), which other
  processes on the machine do not inflate as much as wall time;
- **statements** run per lead, and the PostgreSQL backend's CPU per lead (from /proc);
- with ``--threads``: leads of the three services from that many threads at once, the rate and
  the time from asking for the cursor to the end of COMMIT (waits included: a version that
  pipelines the lock with the next statement cannot tell the wait from the hold client-side).

Each version runs in a process of its own, on a fresh database (migrated, seeded, ample quotas)
named after DATABASE_URL's with ``_lockhold`` appended; ``--app`` names the other checkout
(its code and migrations; this checkout's virtualenv), and the two alternate, ``--rounds``
times, so both see the same load. Production settings (DEBUG off: server-side binding,
prepared statements). Results and commands go in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import common

HERE = Path(__file__).resolve()
SERVICES = (1, 2, 3)


def _proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child(app: str, url: str, leads: int, threads: int, run: int) -> None:
    """Runs inside one version's code: prints one JSON line of figures."""
    os.environ.update(common.app_env(url))
    os.environ["DJANGO_SETTINGS_MODULE"] = "leaddist.settings"
    sys.path.insert(0, app)
    import django

    django.setup()
    from django.db import connection
    from django.db.backends.signals import connection_created

    def track_functions(connection, **kwargs):
        # Trigger functions' calls and time (pg_stat_user_functions), for this test only.
        with connection.cursor() as db:
            db.execute("SET track_functions = 'pl'")

    connection_created.connect(track_functions)

    from allocation.services import LeadInput, submit_lead

    local = threading.local()

    def wrapper(execute, sql, params, many, context):
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            end = time.perf_counter()
            if "providers_poolcursor" in sql and "FOR UPDATE" in sql and not hasattr(local, "t0"):
                # Pipelined with the read, this returns at once: the wait is then counted in
                # ``first`` and in ``held`` (compare ``total`` under contention).
                local.wait = end - start
                local.start = start
                local.t0, local.c0 = end, time.thread_time()
                local.steps = []
            elif hasattr(local, "t0"):
                local.steps.append((start, end))

    from django.db import connections

    backend = type(connections["default"])
    original_commit = backend._commit

    def commit(self):
        start = time.perf_counter()
        try:
            return original_commit(self)
        finally:
            if hasattr(local, "t0"):
                end = time.perf_counter()
                local.steps.append((start, end))
                local.held = (end - local.t0, time.thread_time() - local.c0)
                local.done = local.steps
                del local.t0

    backend._commit = commit

    def lead(n: int, tag: int) -> dict[str, float]:
        data = LeadInput(
            service_id=SERVICES[n % 3],
            name="Bench",
            phone=f"+1{run:03d}{tag:02d}{n:08d}",
            city="Benchville",
        )
        with connection.execute_wrapper(wrapper):
            submit_lead(data)
        steps = local.done
        sql = sum(end - start for start, end in steps)
        return {
            "wait": local.wait,
            "held": local.held[0],
            "cpu_held": local.held[1],
            "sql": sql,
            "python": local.held[0] - sql,
            "statements": len(steps),  # after the cursor lock, COMMIT included
            "first": steps[0][1] - steps[0][0],  # the candidates read (locks the providers)
            # The writes and COMMIT (sent together, or COMMIT after them).
            "write": steps[-1][1] - steps[-2][0],
            "total": steps[-1][1] - local.start,  # from asking for the cursor to the end
        }

    for n in range(60):  # warm up: prepared statements, caches
        lead(n, 99)
    with connection.cursor() as db:
        db.execute("SELECT pg_backend_pid()")
        pid = db.fetchone()[0]
    pg0, cpu0, wall0 = _proc_cpu_seconds(pid), time.process_time(), time.perf_counter()
    rows = [lead(n, 0) for n in range(leads)]
    wall = time.perf_counter() - wall0
    result = {
        "serial_leads_per_s": leads / wall,
        "pg_cpu_ms": (_proc_cpu_seconds(pid) - pg0) / leads * 1000,
        "py_cpu_ms": (time.process_time() - cpu0) / leads * 1000,
    }
    for key in rows[0]:
        if key != "statements":
            result[key + "_ms"] = statistics.median(r[key] for r in rows) * 1000
    result["statements"] = statistics.median(r["statements"] for r in rows)
    if threads:
        per_thread = leads // threads
        found: list[dict[str, float]] = []

        def worker(tag: int) -> None:
            try:
                found.extend(lead(n, tag) for n in range(per_thread))
            finally:
                connection.close()

        pool = [threading.Thread(target=worker, args=(t + 1,)) for t in range(threads)]
        start = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        result["threads_leads_per_s"] = len(found) / (time.perf_counter() - start)
        result["threads_total_ms"] = statistics.median(r["total"] for r in found) * 1000
        result["threads_cpu_held_ms"] = statistics.median(r["cpu_held"] for r in found) * 1000
    connection.close()
    with common.connect(url) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        time.sleep(1.5)
        total = leads + 60 + (leads // threads * threads if threads else 0)
        result["functions"] = {
            name: [calls / total, self_ms / total]
            for name, calls, self_ms in conn.execute(
                "SELECT funcname, calls, self_time FROM pg_stat_user_functions ORDER BY 1"
            )
        }
    print("LOCKHOLD " + json.dumps(result), flush=True)


COLUMNS = [
    ("held_ms", "held ms"),
    ("cpu_held_ms", "CPU held ms"),
    ("first_ms", "candidates ms"),
    ("python_ms", "Python between ms"),
    ("write_ms", "writes + COMMIT ms"),
    ("statements", "statements"),
    ("py_cpu_ms", "app CPU ms/lead"),
    ("pg_cpu_ms", "PG CPU ms/lead"),
    ("serial_leads_per_s", "1 thread leads/s"),
    ("threads_leads_per_s", "N threads leads/s"),
    ("threads_total_ms", "N threads lock request to commit ms"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", required=True, help="the other checkout (LEADDIST_APP_DIR)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--leads", type=int, default=600)
    parser.add_argument("--threads", type=int, default=6, help="0: single thread only")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    url = common.database_url(common.database_name(common.base_database_url()) + "_lockhold")
    if args.child:
        child(str(common.APP_DIR), url, args.leads, args.threads, args.run)
        return
    versions = {"other (--app)": str(Path(args.app).resolve()), "this": str(common.ROOT)}
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in versions}
    for round_ in range(args.rounds):
        for name, app in versions.items():
            env = dict(os.environ, LEADDIST_APP_DIR=app)
            # Migrated and seeded by that version's own manage.py (common.APP_DIR).
            code = f"import common; common.prepare_app_database({url!r}, api_key=False)"
            subprocess.run([common.PYTHON, "-c", code], cwd=HERE.parent, env=env, check=True)
            common.log(f"round {round_ + 1}: {name}, load average {os.getloadavg()[0]:.1f}")
            out = subprocess.run(
                [
                    common.PYTHON,
                    str(HERE),
                    "--child",
                    "--app",
                    app,
                    "--leads",
                    str(args.leads),
                    "--threads",
                    str(args.threads),
                    "--run",
                    str(round_),
                ],
                cwd=HERE.parent,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            line = next(x for x in out.splitlines() if x.startswith("LOCKHOLD "))
            figures[name].append(json.loads(line.removeprefix("LOCKHOLD ")))
    rows = []
    for round_ in range(args.rounds):
        for name in versions:
            f = figures[name][round_]
            rows.append([round_ + 1, name, *(common.fmt(f.get(k), 2) for k, _ in COLUMNS)])
    print(common.markdown_table(["round", "version", *(h for _, h in COLUMNS)], rows))
    print()
    ratios = []
    for key, head in COLUMNS:
        values = [
            figures["this"][r][key] / figures["other (--app)"][r][key]
            for r in range(args.rounds)
            if figures["other (--app)"][r].get(key)
        ]
        if values:
            ratios.append([head, " / ".join(f"{v:.2f}" for v in values)])
    print(common.markdown_table(["this / other, per round", "ratios"], ratios))
    print()
    rows = []
    for name in versions:
        for function in sorted({f for r in figures[name] for f in r.get("functions", {})}):
            calls = [r["functions"].get(function, [0, 0]) for r in figures[name]]
            rows.append(
                [
                    name,
                    function,
                    f"{statistics.median(c for c, _ in calls):.2f}",
                    " / ".join(f"{ms * 1000:.0f}" for _, ms in calls),
                ]
            )
    print(
        common.markdown_table(
            ["version", "trigger function", "calls per lead", "self µs per lead, per round"], rows
        )
    )
    with common.connect(common.database_url("postgres", url)) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{common.database_name(url)}" WITH (FORCE)')


if __name__ == "__main__":
    main()
