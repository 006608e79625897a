"""The delivery worker (`manage.py deliver_leads`): one process, one event loop, many attempts.

The loop claims due deliveries (delivery/queue.py) as long as it has room for more attempts
(DELIVERY_CONCURRENCY), starts each attempt at once, and records finished attempts in batches:
whatever finished while the previous record statement ran goes in the next one. It asks for
more work every DELIVERY_POLL_SECONDS, and at once while its last claim came back full. Nothing
ever waits on purpose: a lead's deliveries leave as soon as a worker has room.

Its database work runs in two threads, each with a connection of its own: claims and heartbeats
in one, records in the other, so a claim never waits behind a record. A lost connection is
retried on a fresh one with backoff, logged once per outage, never fatal: the worker waits for
the database to come back, its attempts in flight finish meanwhile and are recorded after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.db import connection
from django.utils import timezone

from delivery import queue
from delivery.attempts import Record, Send, already_recorded, attempt, record_attempts
from delivery.sending import Outcome, close_clients
from leaddist.http.db import connection_lost

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The most attempts one record statement takes: a burst's batches stay well under it, and a
# backlog after an outage goes in a few statements of bounded size.
RECORD_BATCH_MAX = 200
# Backoff while the database is unreachable: from the first to the last, doubling.
RECONNECT_WAITS = (0.1, 5.0)


def _close_connection() -> None:
    """Close the calling thread's Django connection (back to the pool)."""
    connection.close()


class Database:
    """One thread with one Django connection, for the loop's database work of one kind.

    :meth:`call` runs a function there; a lost connection is dropped and the call made again on
    a fresh one, with backoff, until the database answers (logged once per outage).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"delivery-{name}")
        self.outage_since: float | None = None

    async def call(
        self, func: Callable[..., T], *args: Any, before_retry: Callable[[], Any] | None = None
    ) -> T:
        """``func(*args)`` in this thread; ``before_retry`` runs there first on each retry."""
        loop = asyncio.get_running_loop()
        wait = RECONNECT_WAITS[0]
        retrying = False
        while True:
            try:
                result = await loop.run_in_executor(
                    self._thread, self._run, func, args, before_retry if retrying else None
                )
            except Exception as exc:
                if not connection_lost(exc):
                    raise
                if self.outage_since is None:
                    self.outage_since = time.monotonic()
                    logger.warning(
                        "delivery worker (%s): database connection lost (%s); reconnecting",
                        self.name,
                        exc,
                    )
                retrying = True
                await asyncio.sleep(wait)
                wait = min(wait * 2, RECONNECT_WAITS[1])
                continue
            if self.outage_since is not None:
                logger.warning(
                    "delivery worker (%s): database back after %.1f s",
                    self.name,
                    time.monotonic() - self.outage_since,
                )
                self.outage_since = None
            return result

    @staticmethod
    def _run(func: Callable[..., T], args: tuple, before: Callable[[], Any] | None) -> T:
        try:
            if before is not None:
                before()
            return func(*args)
        except Exception as exc:
            if connection_lost(exc):
                # The next call opens a fresh connection (from the pool, checked).
                with contextlib.suppress(Exception):
                    connection.close()
            raise

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            # ``connection`` names the calling thread's connection: looked up here, in the
            # loop's thread, it would close that one and leave this thread's out of the pool.
            await loop.run_in_executor(self._thread, _close_connection)
        self._thread.shutdown(wait=False)


def _batch(waiting: list[Record]) -> tuple[list[Record], list[Record]]:
    """The next batch to record (at most one attempt per delivery), and what waits after it."""
    batch: list[Record] = []
    rest: list[Record] = []
    seen: set[int] = set()
    for record in waiting:
        if record.delivery_id in seen or len(batch) == RECORD_BATCH_MAX:
            rest.append(record)
        else:
            seen.add(record.delivery_id)
            batch.append(record)
    return batch, rest


class Worker:
    """Claims, attempts and records deliveries until :meth:`run`'s ``stop`` is set."""

    def __init__(self, *, concurrency: int, poll_seconds: float) -> None:
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self.id: int | None = None
        self.in_flight: dict[int, Send] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished = asyncio.Event()
        self._recorded = asyncio.Event()
        self._to_record: list[Record] = []
        self._record_wake = asyncio.Event()
        self._claims = Database("claims")
        self._records = Database("records")

    async def run(self, stop: asyncio.Event, *, grace_seconds: float = 25.0) -> None:
        await self._register()
        beating = asyncio.create_task(self._beat(stop))
        recording = asyncio.create_task(self._record_loop())
        try:
            await self._claim_loop(stop)
            # Stopping: no new claims; the attempts in flight finish (up to the grace period)
            # and are recorded; whatever is left goes back to the queue as the worker leaves.
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=grace_seconds)
            await self._drain_records()
        finally:
            beating.cancel()
            recording.cancel()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                if self.id is not None:
                    await asyncio.wait_for(self._claims.call(queue.leave, self.id), 10)
            await self._claims.close()
            await self._records.close()
            await close_clients()

    async def _register(self) -> None:
        self.id = await self._claims.call(queue.register_worker)
        gone = await self._claims.call(queue.gone_on_this_host, self.id)
        handed_back = await self._claims.call(lambda: queue.reap_dead_workers(gone=gone))
        if handed_back:
            logger.warning(
                "delivery worker #%d: %d deliveries of dead workers back in the queue",
                self.id,
                handed_back,
            )

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                free = self.concurrency - len(self.in_flight)
                wake: asyncio.Event | None = None
                if free <= 0:
                    wake = self._finished  # room comes with the next attempt done
                else:
                    claimed = await self._claim(free)
                    for send in claimed.sends:
                        self._start(send)
                    if len(claimed.sends) == free:
                        wake = self._finished  # more may be due: claim when room frees
                    elif claimed.put_back:
                        # A provider at its cap: its place frees when an attempt is recorded.
                        wake = self._recorded
                waits: set[asyncio.Future[Any]] = {stopping}
                if wake is not None:
                    wake.clear()
                    waits.add(asyncio.ensure_future(wake.wait()))
                _done, pending = await asyncio.wait(
                    waits, timeout=self.poll_seconds, return_when=asyncio.FIRST_COMPLETED
                )
                for future in pending - {stopping}:
                    future.cancel()
        finally:
            stopping.cancel()

    async def _claim(self, free: int) -> queue.Claim:
        assert self.id is not None
        worker_id = self.id

        def release_unknown() -> None:
            # The lost claim may have committed: hand back what this loop never heard of.
            queue.release_claims(worker_id, keep=set(self.in_flight))

        try:
            return await self._claims.call(
                lambda: queue.claim(worker_id, take=free), before_retry=release_unknown
            )
        except Exception:
            logger.exception("delivery worker #%d: claim failed", worker_id)
            return queue.Claim([])

    def _start(self, send: Send) -> None:
        self.in_flight[send.delivery_id] = send
        task = asyncio.create_task(self._attempt(send))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(self, send: Send) -> None:
        try:
            record = await attempt(send)
        except Exception as exc:  # a bug, not the provider: a failed attempt, retried
            logger.exception("delivery #%d: the attempt raised", send.delivery_id)
            outcome = Outcome(False, 0, error=f"{type(exc).__name__}: {exc}"[:500])
            record = Record(send.delivery_id, send.generation, outcome, timezone.now())
        finally:
            self.in_flight.pop(send.delivery_id, None)
            self._finished.set()
        self._to_record.append(record)
        self._record_wake.set()

    async def _record_loop(self) -> None:
        while True:
            await self._record_wake.wait()
            self._record_wake.clear()
            await self._drain_records()

    async def _drain_records(self) -> None:
        while self._to_record:
            batch, self._to_record = _batch(self._to_record)
            await self._record(batch)

    async def _record(self, batch: list[Record]) -> None:
        retried: list[bool] = [False]

        def record() -> dict[int, str]:
            pending = batch
            if retried[0]:
                done = already_recorded(batch)
                pending = [r for r in batch if r.delivery_id not in done]
            return record_attempts(pending, worker_id=self.id)

        def mark_retry() -> None:
            retried[0] = True

        try:
            await self._records.call(record, before_retry=mark_retry)
            self._recorded.set()
        except Exception:
            # A claim not recorded runs out and its delivery is due again: sent once more,
            # under the same webhook-id, which receivers use to drop repeats.
            logger.exception(
                "delivery worker #%s: recording %d attempts failed", self.id, len(batch)
            )

    async def _beat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(queue.HEARTBEAT_SECONDS)
            try:
                alive = await self._claims.call(queue.beat, self.id)
                if not alive:
                    # Taken for dead (silent too long: paused, or cut off): a new identity;
                    # its attempts in flight still record, their claims already handed back.
                    logger.warning("delivery worker #%s was taken for dead; registering", self.id)
                    self.id = await self._claims.call(queue.register_worker)
                await self._claims.call(queue.reap_dead_workers)
            except Exception:
                logger.exception("delivery worker #%s: heartbeat failed", self.id)
