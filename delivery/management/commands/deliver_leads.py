"""Run a delivery worker: claim due deliveries and send them, until SIGTERM or Ctrl-C.

    manage.py deliver_leads [--concurrency N] [--poll SECONDS]

Any number of them may run, on any number of hosts, against one database (docs/DELIVERY.md).
`make worker`, `make run` and `make serve` start one. On SIGTERM it takes no new delivery,
lets its attempts in flight finish (up to 25 s), records them and leaves.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import uvloop
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from delivery.worker import Worker


class Command(BaseCommand):
    help = __doc__
    # `make serve` has checked the project already; a worker restarted after a crash starts
    # delivering a second or two sooner without the checks.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--concurrency",
            type=int,
            default=settings.DELIVERY_CONCURRENCY,
            help="attempts in flight at once (default DELIVERY_CONCURRENCY)",
        )
        parser.add_argument(
            "--poll",
            type=float,
            default=settings.DELIVERY_POLL_SECONDS,
            help="seconds between asking for due deliveries when idle (DELIVERY_POLL_SECONDS)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1.")
        if options["poll"] <= 0:
            raise CommandError("--poll must be more than 0 seconds.")
        worker = Worker(concurrency=options["concurrency"], poll_seconds=options["poll"])
        uvloop.run(self._run(worker))

    async def _run(self, worker: Worker) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await worker.run(stop)
