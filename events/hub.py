"""Each process's fan-out of committed events to its open streams: in order, cheap, lossless.

One ``Hub`` per process lives on the ASGI server's event loop. It reads new events from the
log in seq order, encodes each one once as an SSE frame, keeps the latest frames in memory and
wakes every waiting stream at once; a stream then sends all it has not sent in one write. So an
event costs one read per process, one encoding per process and one small write per stream,
however many streams are open.

The hub reads when something may have committed:

- a commit in this process (``notify_committed``, run by ``transaction.on_commit``);
- a message on the Redis channel ``leaddist:events`` from another process (REDIS_URL); the hub
  publishes one such message per pass after local commits, and processes without a hub (a
  management command) publish on every commit;
- every POLL_SECONDS, so a lost message or a Redis outage delays an event, never loses it.

Redis is only a wake-up: the events themselves always come from PostgreSQL, so nothing is
lost, repeated or reordered whatever Redis does. The Redis listener reconnects by itself, and
after a reconnection the hub reads at once, catching up on what it missed.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Max
from django.utils import timezone
from django_eventstream.utils import make_id, sse_encode_event

from events.models import Event, Horizon
from events.types import CHANNEL
from leaddist.http import redis_client
from leaddist.http.metrics import EVENT_HUB_FAILURES, count_publish_failure

logger = logging.getLogger(__name__)

T = TypeVar("T")

WAKE_CHANNEL = "leaddist:events"
READ_BATCH = 500
TRIM_EVERY_SECONDS = 600.0


@dataclass(frozen=True)
class Frame:
    """One event as every stream sends it: the SSE bytes, with its stream position.

    ``event_type`` and ``payload`` are the event as logged, for streams that send each of
    their clients only some events, reshaped (the provider portal's).
    """

    seq: int
    data: bytes
    event_type: str = ""
    payload: Any = None


def stream_id(seq: int) -> str:
    """The SSE id of a position, as django-eventstream writes it: ``dashboard:42``."""
    return make_id({CHANNEL: seq})


def encode(seq: int, event_type: str, data: Any) -> Frame:
    text = sse_encode_event(event_type, json.dumps(data), event_id=stream_id(seq))
    return Frame(seq, text.encode(), event_type, data)


# --- Reads from the log (blocking; the hub runs them in a thread) ------------------------------


def current_position() -> int:
    """The seq of the latest committed event, 0 when there is none."""
    return Event.objects.published().aggregate(top=Max("seq"))["top"] or 0


def trimmed_through() -> int:
    """Positions up to this one may have been trimmed from the log (0: none ever were)."""
    return Horizon.objects.values_list("trimmed_through", flat=True).first() or 0


def frames_after(position: int, *, limit: int = READ_BATCH) -> list[Frame]:
    rows = Event.objects.published().filter(seq__gt=position).values_list("seq", "type", "data")
    return [encode(seq, event_type, data) for seq, event_type, data in rows[:limit]]


def trim_log() -> int:
    """Delete events older than EVENT_RETENTION_HOURS; a stream further behind starts afresh."""
    cutoff = timezone.now() - timedelta(hours=settings.EVENT_RETENTION_HOURS)
    old = Event.objects.published().filter(created_at__lt=cutoff)
    with transaction.atomic():
        through = old.aggregate(top=Max("seq"))["top"]
        if through is None:
            return 0
        deleted, _ = Event.objects.published().filter(seq__lte=through).delete()
        horizon, _ = Horizon.objects.select_for_update().get_or_create(pk=1)
        if through > horizon.trimmed_through:
            Horizon.objects.filter(pk=horizon.pk).update(trimmed_through=through)
    return deleted


async def in_thread(read: Callable[..., T], *args: Any) -> T:
    """Run a database read in a worker thread and hand its connection back to the pool."""

    def call() -> T:
        try:
            return read(*args)
        finally:
            close_old_connections()

    return await sync_to_async(call, thread_sensitive=False)()


# --- The hub ---------------------------------------------------------------------------------


class Hub:
    """This process's buffer of recent frames, and the pulse that wakes its streams."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.streams = 0
        # Keep-alive ticks so far: every EVENT_KEEP_ALIVE_SECONDS the hub pulses once for all
        # streams, so a waiting stream needs no timer of its own.
        self.ticks = 0
        # Every seq in (floor, position] is in ``frames``, in order; gaps are rolled-back
        # transactions, whose seq was drawn and never committed.
        self.position: int | None = None
        self.floor = 0
        self.frames: list[Frame] = []
        self.seqs: list[int] = []
        self._wake = asyncio.Event()
        self._pulse = asyncio.Event()
        self._local_commits = False
        self._redis = redis_client.async_client()
        self._tasks = [loop.create_task(self._run(), name="events-hub")]
        if self._redis is not None:
            self._tasks.append(loop.create_task(self._listen(), name="events-hub-redis"))

    async def close(self) -> None:
        """Stop the hub's tasks (a server stops with its loop; tests stop hubs themselves)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()

    # Called from any thread.
    def wake_threadsafe(self) -> None:
        self.loop.call_soon_threadsafe(self._wake_after_local_commit)

    def _wake_after_local_commit(self) -> None:
        self._local_commits = True
        self._wake.set()

    # For streams, on the loop.
    def buffered_after(self, position: int) -> list[Frame] | None:
        """The buffered frames after ``position``, or None if they are not all buffered."""
        if self.position is None or position < self.floor:
            return None
        start = bisect.bisect_right(self.seqs, position)
        return self.frames[start:]

    async def next_pulse(self) -> None:
        """Until the hub has buffered new frames, or it is time for a keep-alive."""
        await self._pulse.wait()

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        last_trim = last_tick = self.loop.time()
        while True:
            try:
                async with asyncio.timeout(settings.EVENT_POLL_SECONDS):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                if self._local_commits:
                    self._local_commits = False
                    await self._tell_other_processes()
                if self.streams:
                    await self._read()
                elif self.position is not None:
                    # Nobody listens: forget the buffer rather than keep reading into it.
                    self.position = None
                    self.frames, self.seqs = [], []
                if self.loop.time() - last_tick >= settings.EVENT_KEEP_ALIVE_SECONDS:
                    last_tick = self.loop.time()
                    self.ticks += 1
                    self._pulse.set()
                    self._pulse.clear()
                if self.loop.time() - last_trim > TRIM_EVERY_SECONDS:
                    last_trim = self.loop.time()
                    await in_thread(trim_log)
            except Exception:
                # The hub must outlive any failure; the next pass tries again.
                EVENT_HUB_FAILURES.inc()
                logger.exception("live events: reading the event log failed")
            # A burst of commits is read, and sent to each stream, a few times a second rather
            # than once per commit: the first event after a quiet spell goes out at once.
            await asyncio.sleep(settings.EVENT_BATCH_SECONDS)

    async def _read(self) -> None:
        if self.position is None:
            self.position = self.floor = await in_thread(current_position)
            # Streams that opened before this first read, and read the log themselves, may be
            # waiting on events committed meanwhile, now below the floor: wake them, so each
            # reads what it lacks (buffered_after says None below the floor) instead of
            # sleeping until the next keep-alive.
            self._pulse.set()
            self._pulse.clear()
            return
        new: list[Frame] = []
        while True:
            batch = await in_thread(frames_after, self.position)
            new += batch
            if batch:
                self.position = batch[-1].seq
            if len(batch) < READ_BATCH:
                break
        if not new:
            return
        self.frames += new
        self.seqs += [frame.seq for frame in new]
        excess = len(self.frames) - settings.EVENT_STREAM_BUFFER
        if excess > settings.EVENT_STREAM_BUFFER // 2:
            # Trimmed in steps, so appends stay cheap.
            self.floor = self.seqs[excess - 1]
            del self.frames[:excess], self.seqs[:excess]
        self._pulse.set()
        self._pulse.clear()

    async def _tell_other_processes(self) -> None:
        if self._redis is None:
            return
        if not redis_client.breaker.allow():
            count_publish_failure("breaker_open")
            return
        try:
            await self._redis.publish(WAKE_CHANNEL, "1")
        except Exception as exc:
            count_publish_failure("redis_error")
            redis_client.breaker.failed(exc)
        else:
            redis_client.breaker.succeeded()

    async def _listen(self) -> None:
        """Wake on other processes' commits; reconnect with backoff when Redis goes away."""
        assert self._redis is not None
        delay = 0.5
        while True:
            subscriber = redis_client.async_client(subscriber=True)
            assert subscriber is not None
            try:
                async with subscriber.pubsub() as pubsub:
                    await pubsub.subscribe(WAKE_CHANNEL)
                    if delay > 0.5:
                        logger.warning("live events: listening to Redis again")
                    delay = 0.5
                    self._wake.set()  # catch up on whatever committed while we were away
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if delay == 0.5:
                    logger.warning("live events: Redis listener lost (%s); reconnecting", exc)
            finally:
                await subscriber.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


_hub: Hub | None = None
_hub_lock = threading.Lock()


def running_hub() -> Hub | None:
    """This process's hub, if its event loop is still running."""
    hub = _hub
    if hub is None or hub.loop.is_closed():
        return None
    return hub


def start_hub() -> Hub:
    """This process's hub, started on the running event loop the first time it is asked for."""
    global _hub
    loop = asyncio.get_running_loop()
    with _hub_lock:
        if _hub is None or _hub.loop is not loop:
            # A server has one loop for its life; tests run one loop after another.
            _hub = Hub(loop)
        return _hub


def notify_committed() -> None:
    """A transaction with events committed: wake this process's hub, or the others through Redis.

    Runs in the committing thread (an on_commit callback), so it must not block: the hub's
    wake-up is a thread-safe call, and a direct Redis publish is bounded by the client's short
    timeout and skipped while the breaker is open.
    """
    hub = running_hub()
    if hub is not None:
        try:
            hub.wake_threadsafe()
            return
        except RuntimeError:  # its loop closed in between
            pass
    client = redis_client.sync_client()
    if client is None:
        return
    if not redis_client.breaker.allow():
        count_publish_failure("breaker_open")
        return
    try:
        client.publish(WAKE_CHANNEL, "1")
    except Exception as exc:
        count_publish_failure("redis_error")
        redis_client.breaker.failed(exc)
    else:
        redis_client.breaker.succeeded()
