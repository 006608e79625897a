"""What the app's PostgreSQL sessions are doing during a burst: sampled wait events.

Run beside a benchmark, e.g. in another shell while bench_http.py runs:

    .venv/bin/python bench/sample_waits.py leaddist_bench_http --seconds 8 \
        [--after-line "wrk -c 32" --log /tmp/bench_http.err]

Every 5 ms it reads pg_stat_activity for the client backends of that database and counts, per
sample, the sessions in a transaction: waiting on a lock (and on which statement), flushing WAL
at COMMIT, running, or "idle in transaction" (the app's thread between two statements while its
transaction holds its locks). The averages say where a lead's locks are held and waited for,
whatever the load: with ``--after-line`` it starts once that line appears in ``--log`` (the
bench's stderr), and one second later, so that it covers the burst only.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import common

SESSIONS_SQL = """
SELECT state, coalesce(wait_event_type, '-'), coalesce(wait_event, '-'), left(query, 40)
  FROM pg_stat_activity
 WHERE datname = %s AND backend_type = 'client backend' AND pid <> pg_backend_pid()
   AND state IN ('active', 'idle in transaction')
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("database")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--after-line", help="start once this text is in --log")
    parser.add_argument("--log", type=Path)
    args = parser.parse_args()
    if args.after_line:
        while not args.log.exists() or args.after_line not in args.log.read_text():
            time.sleep(0.05)
        time.sleep(1)
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    locked_on: collections.Counter[str] = collections.Counter()
    samples = 0
    with common.connect(common.database_url("postgres")) as conn:
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            rows = conn.execute(SESSIONS_SQL, [args.database]).fetchall()
            if rows:
                samples += 1
            for state, kind, event, query in rows:
                if state != "active":
                    counts[("idle in transaction", "the app, between statements")] += 1
                    continue
                counts[(kind, event)] += 1
                if kind == "Lock":
                    locked_on[" ".join(query.split())] += 1
            time.sleep(0.005)
    print(f"{samples} samples with sessions in a transaction; sessions per sample:")
    for (kind, event), n in counts.most_common(8):
        print(f"  {n / max(samples, 1):5.2f}  {kind} {event}")
    for query, n in locked_on.most_common(4):
        print(f"  {n / max(samples, 1):5.2f}  waiting on a lock in: {query}")


if __name__ == "__main__":
    main()
