"""Intake first: delivery jobs wait while leads arrive fast, for a bounded time.

On a host where the web server, PostgreSQL and the delivery worker share the cores, every
millisecond the worker spends during a burst is taken from intake, which is what the platform
exists for. So a delivery job, before it reads or sends anything, asks whether intake is busy:
more than DELIVERY_INTAKE_BUSY_RATE new leads per second, read from the lead id sequence (one
cheap statement, at most every SAMPLE_SECONDS per worker process, shared by all its waiting
jobs; the first job after a quiet spell waits SAMPLE_SECONDS for a second reading). While it
is, the job waits, until DELIVERY_INTAKE_FIRST_SECONDS after the moment it was due (its
lead's allocation, or its retry's scheduled time). A burst shorter than that is taken at full
speed and delivered right after it; under load that lasts longer, each delivery goes out
that many seconds late and the worker shares the cores again. 0 turns the wait off.

A waiting job holds one of its worker's slots (--concurrency) and nothing in the database: no
transaction, no lock, no provider slot. If the worker dies, procrastinate gives the job to
another one, as for any job.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection

from delivery.loops import per_loop
from delivery.services import _in_thread

# The lead id sequence is read at most this often per worker process; a reading older than
# STALE_SECONDS is not used for a rate (the next job takes a new pair of readings).
SAMPLE_SECONDS = 0.25
STALE_SECONDS = 2.0

LEAD_SEQUENCE_SQL = (
    "SELECT pg_sequence_last_value(pg_get_serial_sequence('allocation_lead', 'id')::regclass)"
)


def lead_sequence() -> int:
    """The last lead id handed out (0 before the first): new leads, whether stored or not."""
    with connection.cursor() as cursor:
        cursor.execute(LEAD_SEQUENCE_SQL)
        (value,) = cursor.fetchone()
    return value or 0


@dataclass
class _Reading:
    value: int
    at: float  # time.monotonic()


class IntakeGate:
    """Whether intake is busy, and the wait for it not to be (module docstring). One per event
    loop: its readings are shared by the loop's jobs, and its lock belongs to the loop."""

    def __init__(self, *, busy_rate: float, hold_seconds: float) -> None:
        self.busy_rate = busy_rate
        self.hold_seconds = hold_seconds
        self._lock = asyncio.Lock()
        self._last: _Reading | None = None
        self._rate = 0.0

    @property
    def enabled(self) -> bool:
        return self.hold_seconds > 0 and self.busy_rate > 0

    async def wait(self, due: float | None = None) -> float:
        """Wait while intake is busy, until ``hold_seconds`` after ``due`` (Unix time; now if
        None); return the seconds waited. Returns at once when off, or when ``due`` is that
        long ago."""
        if not self.enabled:
            return 0.0
        started = time.time()
        until = (started if due is None else due) + self.hold_seconds
        while time.time() < until and await self.rate() >= self.busy_rate:
            await asyncio.sleep(min(SAMPLE_SECONDS, max(until - time.time(), 0.0)))
        return time.time() - started

    async def rate(self) -> float:
        """New leads per second between the last two readings of the sequence, read again
        when the last is SAMPLE_SECONDS old. With no recent reading (the first job after a
        quiet spell), two, SAMPLE_SECONDS apart: the jobs that ask meanwhile wait for them."""
        async with self._lock:
            last = self._last
            if last is not None and time.monotonic() - last.at < SAMPLE_SECONDS:
                return self._rate
            if last is None or time.monotonic() - last.at > STALE_SECONDS:
                last = await self._read()
                await asyncio.sleep(SAMPLE_SECONDS)
            reading = await self._read()
            self._rate = (reading.value - last.value) / (reading.at - last.at)
            self._last = reading
            return self._rate

    @staticmethod
    async def _read() -> _Reading:
        return _Reading(await _in_thread(lead_sequence)(), time.monotonic())


def _from_settings() -> IntakeGate:
    return IntakeGate(
        busy_rate=settings.DELIVERY_INTAKE_BUSY_RATE,
        hold_seconds=settings.DELIVERY_INTAKE_FIRST_SECONDS,
    )


# The running event loop's gate, with the settings of its first use in the loop.
intake_gate = per_loop(_from_settings)
