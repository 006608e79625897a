"""Serve leaddist in production: uvicorn, one worker process per core, DEBUG off, and the
background worker beside it.

    python -m leaddist.serve [--host 0.0.0.0] [--port 8000] [--workers N] [--background N]

This is what `make serve` and the Dockerfile run. ``--port`` defaults to PORT (else 8000),
``--workers`` to WEB_CONCURRENCY (else the machine's cores): one Python process runs Python on
one core at a time, so a core per worker. All workers share PostgreSQL, whose row locks keep
the engine correct across processes and hosts.

``--background`` (default BACKGROUND_WORKERS, else 1) is how many background workers
(procrastinate, `python -m leaddist.background`) run beside the web server: they finish the
drains a request leaves over and run the periodic jobs. Each comes with a delivery worker
(`manage.py deliver_leads`, DELIVERY_CONCURRENCY attempts at once), so drains and lead deliveries
never wait for each other; the delivery worker runs at a lower priority (nice 10, or
DELIVERY_WORKER_NICENESS), so on a busy host intake gets the CPU first. Any number of them, on
any number of hosts, share the queues in PostgreSQL; 0 leaves them to another container or
`make worker`.
The launcher stays their parent: it restarts a background worker that dies, and SIGTERM or
Ctrl-C stops everything, each process finishing what it was doing.

Before handing over to uvicorn it loads the production settings, so a missing SECRET_KEY,
WEBHOOK_SECRET or DELIVERY_SECRET_KEYS (or any other refused setting) stops it with the
reason, and it refuses several workers without REDIS_URL: live events would then reach the
other workers' dashboards only at their next poll, and each worker would count rate limits
alone.

Metrics (GET /metrics) count in every process. With more than one process the launcher gives
them a directory to count in, PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess
mode), and /metrics adds the processes up: a temporary directory removed at exit, or the one
the environment names, emptied of a previous run's files at start.

uvicorn (uvloop, httptools) was chosen by measurement against granian and daphne; the figures
are in docs/PERFORMANCE.md. Its supervisor restarts a worker that dies. It runs without
lifespan events (Django has none) and without its own X-Forwarded-For handling: which proxy
headers to trust is the app's decision (TRUSTED_PROXY_COUNT), never the server's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

APPLICATION = "leaddist.asgi:application"
MANAGE = Path(__file__).resolve().parent.parent / "manage.py"
# A background worker that dies is started again after this long, doubling up to the maximum
# while it keeps dying at once.
RESTART_DELAY_SECONDS = (1.0, 30.0)
# The delivery worker runs this much nicer than the web server (DELIVERY_WORKER_NICENESS, 0 to
# 19): on a busy host intake gets the CPU first, and deliveries take what is left (they wait in
# their queue, intake does not). Measured in docs/PERFORMANCE.md, "Lead delivery".
DELIVERY_NICENESS = 10


def delivery_niceness() -> int:
    raw = os.environ.get("DELIVERY_WORKER_NICENESS") or str(DELIVERY_NICENESS)
    try:
        niceness = int(raw)
    except ValueError:
        niceness = -1
    if not 0 <= niceness <= 19:
        sys.exit(f"DELIVERY_WORKER_NICENESS must be a whole number from 0 to 19, not {raw!r}")
    return niceness


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("HOST") or "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WEB_CONCURRENCY") or os.cpu_count() or 1),
    )
    parser.add_argument(
        "--background", type=int, default=int(os.environ.get("BACKGROUND_WORKERS") or 1)
    )
    return parser.parse_args(argv)


def refusal(workers: int, background: int = 0) -> str | None:
    """Why the production configuration cannot start, or None."""
    if workers < 1:
        return "--workers must be at least 1."
    if background < 0:
        return "--background must be 0 or more."
    os.environ["DEBUG"] = "false"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaddist.settings")
    import django
    from django.core.exceptions import ImproperlyConfigured

    try:
        django.setup()
    except ImproperlyConfigured as exc:
        return f"Refusing to start: {exc}"
    from django.conf import settings

    if workers > 1 and not settings.REDIS_URL:
        return (
            "Several workers need REDIS_URL: without it a live event reaches the dashboards of "
            "the other workers only at their next poll, and each worker counts rate limits "
            "alone. Set REDIS_URL, or use --workers 1."
        )
    return None


def share_metrics(processes: int) -> Path | None:
    """Set PROMETHEUS_MULTIPROC_DIR for the processes we start; return the directory to remove
    at exit, if we made it.

    One process keeps its metrics in memory, unless the environment names a directory. A named
    directory is emptied of its .db files: counts of a previous run's processes would otherwise
    be added to this run's (prometheus-client asks for a wiped directory at start).
    """
    named = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if named:
        directory = Path(named)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        return None
    if processes < 2:
        return None
    made = Path(tempfile.mkdtemp(prefix="leaddist-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(made)
    return made


def server_command(args: argparse.Namespace) -> list[str]:
    return [
        *(sys.executable, "-m", "uvicorn", APPLICATION),
        *("--host", args.host, "--port", str(args.port), "--workers", str(args.workers)),
        *("--loop", "uvloop", "--http", "httptools", "--lifespan", "off"),
        *("--no-proxy-headers", "--no-access-log", "--no-server-header", "--backlog", "2048"),
        *("--timeout-graceful-shutdown", "30", "--log-level", "warning"),
    ]


def background_command() -> list[str]:
    return [
        # procrastinate's worker, waiting out database outages instead of exiting
        # (leaddist.background).
        *(sys.executable, "-m", "leaddist.background"),
        # Drains and housekeeping. One job at a time: a drain is a loop of short transactions,
        # and two drains of the same queue would only wait for each other's cursor locks.
        *("--queues", "drains,routing,default"),
        *("--concurrency", "1", "--shutdown-graceful-timeout", "25"),
        # A job retried after a failure is due 1 s later, and no NOTIFY says so: look each
        # second (one small query).
        *("--fetch-job-polling-interval", "1"),
    ]


def delivery_command() -> list[str]:
    """Lead deliveries, in a process of their own (`manage.py deliver_leads`), so that drains
    and deliveries never wait for each other. Attempts are async: DELIVERY_CONCURRENCY of them
    at once, so an endpoint that hangs until the timeout holds one place, not the worker."""
    from django.conf import settings

    return [
        *(sys.executable, str(MANAGE), "deliver_leads"),
        *("--concurrency", str(settings.DELIVERY_CONCURRENCY)),
        *("--poll", str(settings.DELIVERY_POLL_SECONDS)),
    ]


class BackgroundWorker:
    """One background worker process, started again after it dies (a backoff while it keeps
    dying at once)."""

    def __init__(self, command: list[str], niceness: int = 0, *, kind: str = "background") -> None:
        self.command = command
        self.kind = kind
        self.niceness = niceness
        self.delay = RESTART_DELAY_SECONDS[0]
        self.restart_at: float | None = None
        self.start()

    def start(self) -> None:
        niceness = self.niceness
        self.process = subprocess.Popen(
            self.command, preexec_fn=(lambda: os.nice(niceness)) if niceness else None
        )
        self.started_at = time.monotonic()
        self.restart_at = None

    def look_after(self, now: float) -> None:
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
            return
        if self.process.poll() is None:
            return
        if now - self.started_at > 60:
            self.delay = RESTART_DELAY_SECONDS[0]  # it had been running well: no backoff
        print(
            f"leaddist.serve: background worker exited with {self.process.returncode}; "
            f"starting another in {self.delay:g}s",
            file=sys.stderr,
            flush=True,
        )
        self.restart_at = now + self.delay
        from leaddist.http.metrics import WORKER_RESTARTS

        WORKER_RESTARTS.labels(self.kind).inc()
        self.delay = min(self.delay * 2, RESTART_DELAY_SECONDS[1])


def supervise(server: list[str], background: int) -> int:
    """Run the web server and ``background`` background workers until the server exits or
    SIGTERM/SIGINT asks us to stop; return the server's exit code."""
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    niceness = delivery_niceness()  # a bad value stops us before anything starts
    web = subprocess.Popen(server)
    workers = [
        worker
        for _ in range(background)
        for worker in (
            BackgroundWorker(background_command()),
            BackgroundWorker(delivery_command(), niceness=niceness, kind="delivery"),
        )
    ]
    while not stopping and web.poll() is None:
        now = time.monotonic()
        for worker in workers:
            worker.look_after(now)
        time.sleep(0.2)
    processes = [web, *(worker.process for worker in workers)]
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # each finishes what it is doing
    for process in processes:
        try:
            process.wait(timeout=35)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return web.returncode


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # First: loading the settings below imports the metrics, which need their directory.
    made = share_metrics(args.workers + args.background)
    try:
        reason = refusal(args.workers, args.background)
        if reason:
            print(reason, file=sys.stderr)
            return 2
        command = server_command(args)
        if not args.background and made is None:
            os.execv(command[0], command)  # uvicorn itself: nothing else to look after
        return supervise(command, args.background)
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
