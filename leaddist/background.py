"""The background worker (procrastinate): drains and housekeeping, as `make run`, `make worker`
and leaddist.serve start it.

    python -m leaddist.background [--queues drains,routing,default] [--concurrency 1]
        [--shutdown-graceful-timeout 25] [--fetch-job-polling-interval 5] [--name NAME]

It runs ``manage.py procrastinate worker``'s worker (procrastinate's public API: ``App``,
``PsycopgConnector``), with two changes for a database that goes away:

- Its connection pool lends only live connections, tested without a round trip
  (leaddist.http.db.usable_async), as the web processes' pool does. procrastinate's own pool
  check (psycopg_pool's ``check``) sleeps 1 s, 2 s, 4 s... after each dead connection it finds,
  so connections killed again and again made the worker wait until "couldn't get a connection
  after 30.00 sec", and exit.
- When the worker stops on a database error (a side task such as the heartbeat or the LISTEN
  connection failed, or a fetch did), this process does not exit. It logs one warning, waits
  until PostgreSQL accepts a connection again, trying after 0.5 s, then doubling up to
  RECONNECT_MAX_SECONDS, logs once that it is back, and starts the worker again. A worker that
  stops again within STABLE_SECONDS of its restart belongs to the same outage: no new warning.

SIGTERM or SIGINT stops it as procrastinate's command does: the running job gets
``--shutdown-graceful-timeout`` seconds to finish.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from typing import Any

import psycopg
import psycopg_pool

logger = logging.getLogger("leaddist.background")

RECONNECT_FIRST_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 10.0
# A worker that ran this long before it stopped had recovered: its stop is a new outage.
STABLE_SECONDS = 30.0
PROBE_TIMEOUT_SECONDS = 5


class LivePool(psycopg_pool.AsyncConnectionPool):
    """procrastinate's pool, lending only connections that are still alive.

    procrastinate passes psycopg_pool's ``check``, which costs a round trip per checkout and
    sleeps after each dead connection; this pool drops it and tests each connection itself
    (leaddist.http.db.usable_async): a dead one is closed, the pool replaces it, and the next
    is tested.
    """

    def __init__(self, *args: Any, check: object = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

    async def getconn(self, timeout: float | None = None) -> psycopg.AsyncConnection:
        from leaddist.http.db import usable_async

        connection = await super().getconn(timeout)
        for _ in range(self.max_size):
            if await usable_async(connection):
                break
            await self.putconn(connection)
            connection = await super().getconn(timeout)
        return connection


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queues", default="drains,routing,default", help="comma-separated queues")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--shutdown-graceful-timeout", type=float, default=25.0)
    parser.add_argument("--fetch-job-polling-interval", type=float, default=5.0)
    parser.add_argument("--name", default="worker")
    return parser.parse_args(argv)


class Outage:
    """When the database went away, and what was said about it: one warning when an outage
    begins, one line when it ends."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.delay = RECONNECT_FIRST_SECONDS
        self.worker_started = time.monotonic()

    def began(self, reason: BaseException | None) -> None:
        now = time.monotonic()
        if self.since is not None and now - self.worker_started < STABLE_SECONDS:
            return  # the same outage: the worker stopped again soon after its restart
        self.since = now
        self.delay = RECONNECT_FIRST_SECONDS
        logger.warning(
            "background worker stopped on a database error (%s); starting it again once the "
            "database answers, asking after %g s, then up to every %g s",
            describe(reason),
            self.delay,
            RECONNECT_MAX_SECONDS,
        )

    def next_delay(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, RECONNECT_MAX_SECONDS)
        return delay

    def restarting(self, *, first: bool) -> None:
        if first:
            logger.warning(
                "the database answers again after %.1f s; background worker started again",
                time.monotonic() - (self.since or time.monotonic()),
            )
        self.worker_started = time.monotonic()


def describe(exc: BaseException | None) -> str:
    """The root cause's type and first line: procrastinate wraps psycopg's errors in its own
    ("Database error.")."""
    if exc is None:
        return "a side task failed"
    while exc.__cause__ is not None:
        exc = exc.__cause__
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


async def database_answers(params: dict[str, Any]) -> bool:
    try:
        connection = await psycopg.AsyncConnection.connect(
            **params, connect_timeout=PROBE_TIMEOUT_SECONDS
        )
    except psycopg.Error:
        return False
    async with connection:
        with contextlib.suppress(psycopg.Error):
            await connection.execute("SELECT 1")
            return True
    return False


async def supervise(app: Any, params: dict[str, Any], options: dict[str, Any]) -> None:
    """Run the worker until SIGTERM/SIGINT; start it again after every database outage."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    stop = asyncio.ensure_future(stopping.wait())
    outage = Outage()
    while True:

        async def run_worker() -> None:
            async with app.open_async():
                await app.run_worker_async(**options, install_signal_handlers=False)

        worker = asyncio.ensure_future(run_worker())
        await asyncio.wait({worker, stop}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.is_set():
            worker.cancel()  # procrastinate's graceful stop: running jobs get their timeout
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker
            return
        since = outage.since
        outage.began(worker.exception())
        # Wait for the database, with backoff; a stop request ends the wait at once.
        while not stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(stop), timeout=outage.next_delay())
            if stopping.is_set():
                return
            if await database_answers(params):
                break
        outage.restarting(first=outage.since != since)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaddist.settings")
    import django

    django.setup()
    from procrastinate import PsycopgConnector
    from procrastinate.contrib.django import app
    from procrastinate.contrib.django.utils import connector_params

    params = connector_params()
    options = {
        "queues": [queue for queue in args.queues.split(",") if queue],
        "concurrency": args.concurrency,
        "shutdown_graceful_timeout": args.shutdown_graceful_timeout,
        "fetch_job_polling_interval": args.fetch_job_polling_interval,
        "name": args.name,
    }
    from django.conf import settings

    # Waits for a connection as long as the web processes do, not psycopg_pool's 30 s: with the
    # database away, the worker stops sooner, and this process waits for it instead.
    connector = PsycopgConnector(
        kwargs=params, pool_factory=LivePool, timeout=settings.DB_POOL_TIMEOUT
    )
    with app.replace_connector(connector):
        asyncio.run(supervise(app, params, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
