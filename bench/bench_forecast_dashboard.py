"""What the dashboard's forecast panel costs intake: one dashboard open in Chromium during a c=32
burst, with the forecast panel and without it, interleaved in one run.

Run: .venv/bin/python bench/bench_forecast_dashboard.py [--rounds 3] [--seconds 10]
         [--concurrency 32] [--server serve] [--workers 2]

It makes a throw-away database (<DATABASE_URL's name>_fcdash, default leaddist_bench_fcdash,
dropped and recreated each run: migrated, seeded, ample quotas), an API key and a staff session,
collects the static files (the server runs with DEBUG off, as production), and starts the server
(an entry of SERVERS in bench/common.py, default serve with 2 workers and REDIS_URL). Headless
Chromium (/usr/bin/chromium, CHROMIUM_PATH overrides; Playwright never downloads one) opens
/dashboard with the staff session. Then, --rounds times, off then on (every second round on
then off):

- off: the dashboard is loaded with static/js/forecast.js refused by the browser, so the page
  is the dashboard without its forecast panel (no forecast request reaches the server);
- on: the dashboard as shipped, waited for until every service's forecast is shown;

and the same wrk burst as bench_http.py (POST /api/leads, unique phones, services 1-3) runs
--seconds while Playwright keeps the page running. Reported per burst: leads/s, p99, the
forecast requests the page made during it, and server and PostgreSQL CPU per lead; then each
"on" as a ratio of its round's "off", and the median and spread of those ratios.
Then the invariants of bench/common.py; exit 1 if one fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from bench_http import wrk_command, wrk_stats

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
PUMP_MS = 100  # Playwright serves the page's events while wrk runs


def open_dashboard(page, server: common.Server, *, panel: bool) -> None:
    page.unroute("**/static/js/forecast.js*")
    if not panel:
        page.route("**/static/js/forecast.js*", lambda route: route.abort())
    page.goto(server.url + "/dashboard")
    page.wait_for_selector('[data-live-status][data-state="live"]', timeout=30_000)
    if panel:
        page.wait_for_function(
            """() => [...document.querySelectorAll("[data-forecast-basis]")]
                .every((b) => b.textContent !== "")""",
            timeout=30_000,
        )


def burst(page, server, db_url, key, *, clients, seconds, run, panel, forecasts) -> dict:
    open_dashboard(page, server, panel=panel)
    before = common.count_leads(db_url)
    forecasts.clear()
    with common.CpuMeter(server.process.pid, common.database_name(db_url)) as used:
        command = wrk_command(server.url, key, clients=clients, seconds=seconds, run=run)
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        while process.poll() is None:
            page.wait_for_timeout(PUMP_MS)
        stats = wrk_stats(process.returncode, *process.communicate())
        asked = len(forecasts)
        stored = common.settle(db_url) - before
    duration = stats["duration_us"] / 1e6
    return {
        "mode": "on" if panel else "off",
        "leads_s": (stats["s201"] + stats["s202"]) / duration,
        "p99": stats["p99"] / 1000,
        "other": stats["other"],
        "forecasts": asked,
        "forecasts_s": asked / duration,
        "server_ms": used.server * 1000 / stored if stored else None,
        "pg_ms": used.postgres * 1000 / stored if stored else None,
    }


HEADERS = [
    *("round", "panel", "leads/s", "p99 ms", "non-2xx", "forecasts (/s)"),
    *("server ms/lead", "pg ms/lead", "on/off"),
]


def pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
    """Each round's (off, on) bursts."""
    rounds = zip(rows[::2], rows[1::2], strict=True)
    return [(a, b) if a["mode"] == "off" else (b, a) for a, b in rounds]


def ratio(rows: list[dict], i: int) -> str:
    """A round's "on" intake as a ratio of its "off" one, on the round's second row."""
    if i % 2 == 0:
        return ""
    off, on = pairs(rows)[i // 2]
    return f"{on['leads_s'] / off['leads_s']:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--server", default="serve")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--redis-url", default=common.DEFAULT_REDIS_URL)
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    db_url = common.database_url(common.database_name(common.base_database_url()) + "_fcdash")
    key = common.prepare_app_database(db_url)
    cookie = common.staff_session(db_url)
    common.manage(db_url, "collectstatic", "--no-input", "--verbosity", "0")
    rows = []
    with (
        tempfile.TemporaryDirectory() as logs,
        common.run_server(
            args.server,
            url=db_url,
            workers=args.workers,
            redis_url=args.redis_url,
            log_dir=Path(logs),
        ) as server,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        context.add_cookies([{"name": "sessionid", "value": cookie, "url": server.url}])
        page = context.new_page()
        forecasts: list[str] = []
        page.on("request", lambda r: "/forecast?" in r.url and forecasts.append(r.url))
        run = 0
        for round_number in range(args.rounds):
            # Every second round runs "on" first: a drifting machine favours neither.
            for panel in (False, True) if round_number % 2 == 0 else (True, False):
                run += 1
                row = burst(
                    page,
                    server,
                    db_url,
                    key,
                    clients=args.concurrency,
                    seconds=args.seconds,
                    run=run,
                    panel=panel,
                    forecasts=forecasts,
                )
                common.log(
                    f"{row['mode']}: {row['leads_s']:.0f} leads/s, "
                    f"{row['forecasts']} forecasts ({row['forecasts_s']:.1f}/s)"
                )
                rows.append(row)
                time.sleep(1)
        browser.close()

    print(
        common.markdown_table(
            HEADERS,
            [
                [
                    i // 2 + 1,
                    row["mode"],
                    common.fmt(row["leads_s"], 0),
                    common.fmt(row["p99"], 0),
                    row["other"],
                    f"{row['forecasts']} ({row['forecasts_s']:.1f})",
                    common.fmt(row["server_ms"], 2),
                    common.fmt(row["pg_ms"], 2),
                    ratio(rows, i),
                ]
                for i, row in enumerate(rows)
            ],
        )
    )
    ratios = sorted(on["leads_s"] / off["leads_s"] for off, on in pairs(rows))
    print(
        f"\non/off intake: median {statistics.median(ratios):.2f}x, "
        f"spread {ratios[0]:.2f}x-{ratios[-1]:.2f}x over {len(ratios)} rounds"
    )
    ok = common.report_invariants(common.check_invariants(db_url))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
