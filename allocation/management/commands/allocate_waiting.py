"""Allocate waiting leads, oldest first, now that capacity may be back.

Without options, drains the waiting queue once. With --every SECONDS, drains in a loop for
production, sleeping between passes and holding no database connection while it sleeps;
SIGTERM or Ctrl-C stops it after the current pass.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections

from allocation.services import allocate_waiting_leads

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--every",
            type=float,
            metavar="SECONDS",
            help="Drain again every SECONDS, until stopped. Without it: one pass.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        every = options["every"]
        if every is None:
            allocated = allocate_waiting_leads()
            self.stdout.write(self.style.SUCCESS(f"Allocated {allocated} waiting lead(s)."))
            return
        if every <= 0:
            raise CommandError("--every needs a positive number of seconds.")
        self.loop(every, verbosity=options["verbosity"])

    def loop(self, every: float, *, verbosity: int) -> None:
        stop = threading.Event()

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        self.stdout.write(f"Draining waiting leads every {every:g}s; SIGTERM or Ctrl-C stops.")
        try:
            while not stop.is_set():
                try:
                    allocated = allocate_waiting_leads()
                except DatabaseError:
                    # The database may come back; the next pass retries.
                    logger.exception("allocate_waiting: pass failed")
                else:
                    if allocated or verbosity >= 2:
                        self.stdout.write(f"Allocated {allocated} waiting lead(s).")
                # Back to the pool: a sleeping drainer holds no connection.
                connections.close_all()
                stop.wait(every)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
        self.stdout.write("Stopped.")
