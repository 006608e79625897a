"""The test-tools page's "Generate 10 concurrent leads", end to end, against the production server.

Run: .venv/bin/python bench/bench_testtools.py [--runs 20] [--server serve] [--workers 2]

It makes a throw-away database (<DATABASE_URL's name>_testtools), a staff session made in the
session store, starts the server (default: serve, the production launcher, with REDIS_URL
for several workers), takes the CSRF cookie from GET /test-tools as a browser would, then
presses the button --runs times: POST /test-tools/leads as the page's script does, which fans
out 10 truly parallel POST /api/leads on the server. Reported: the client's end-to-end time
per press (p50, p95, max), the time the server reports for the fan-out, and every lead's
outcome. Then the invariants of bench/common.py.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common
import httpx


def press(client: httpx.Client, base: str, token: str) -> tuple[float, int, list[str], list[int]]:
    """One press: (seconds, the server's own ms, the leads' outcomes, each lead's ms)."""
    started = time.perf_counter()
    answer = client.post(
        base + "/test-tools/leads",
        headers={
            "X-CSRFToken": token,
            "X-Requested-With": "fetch",
            "Origin": base,
            "Referer": base + "/test-tools",
        },
    )
    seconds = time.perf_counter() - started
    answer.raise_for_status()
    html = answer.text
    server_ms = int(re.search(r'<span class="muted">in (\d+) ms</span>', html).group(1))
    lead_ms = [int(ms) for ms in re.findall(r'<td class="num">(\d+)</td>\s*</tr>', html)]
    return seconds, server_ms, re.findall(r'data-outcome="([a-z]+)"', html), lead_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--server", default="serve")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--redis-url", default=common.DEFAULT_REDIS_URL)
    args = parser.parse_args()

    url = common.database_url(common.database_name(common.base_database_url()) + "_testtools")
    common.prepare_app_database(url, api_key=False)
    cookie = common.staff_session(url)
    log_dir = Path(tempfile.mkdtemp(prefix="leaddist-bench-testtools-"))
    with common.run_server(
        args.server, url=url, workers=args.workers, redis_url=args.redis_url, log_dir=log_dir
    ) as server:
        base = server.url
        # The cookies are Secure (production settings) and the bench speaks plain HTTP, so
        # they are sent by hand, as a browser would over HTTPS.
        page = httpx.get(base + "/test-tools", cookies={"sessionid": cookie}, timeout=30)
        page.raise_for_status()
        token = page.cookies["csrftoken"]
        headers = {"Cookie": f"sessionid={cookie}; csrftoken={token}"}
        with httpx.Client(headers=headers, timeout=30) as client:
            press(client, base, token)  # warm-up
            results = [press(client, base, token) for _ in range(args.runs)]
    seconds = sorted(r[0] * 1000 for r in results)
    outcomes = [outcome for r in results for outcome in r[2]]
    print(
        common.markdown_table(
            [
                "presses",
                "leads",
                "p50 ms",
                "p95 ms",
                "max ms",
                "server ms (median)",
                "slowest lead ms (median)",
                "outcomes",
            ],
            [
                [
                    len(results),
                    len(outcomes),
                    common.fmt(statistics.median(seconds)),
                    common.fmt(common.percentile(seconds, 95)),
                    common.fmt(seconds[-1]),
                    statistics.median(r[1] for r in results),
                    statistics.median(max(r[3]) for r in results),
                    ", ".join(f"{o}: {outcomes.count(o)}" for o in sorted(set(outcomes))),
                ]
            ],
        )
    )
    print(f"Server: {args.server}, {args.workers} workers; logs: {log_dir}")
    ok = common.report_invariants(common.check_invariants(url, label="testtools"))
    sys.exit(0 if ok and set(outcomes) <= {"allocated", "waiting"} else 1)


if __name__ == "__main__":
    main()
