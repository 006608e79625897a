"""Following the event log over SSE: replay after Last-Event-ID, then live frames from the hub.

The wire format is django-eventstream's, so its clients and ids work unchanged: a padded
``stream-open`` first, ``id: dashboard:<seq>`` on every event, ``stream-reset`` when the
position asked for no longer exists, ``keep-alive`` every KEEP_ALIVE_SECONDS.

A stream holds no database connection while it waits: the few reads it makes (its replay, or a
catch-up when it falls behind the hub's buffer) run in a worker thread that hands the
connection back at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user
from django.http import HttpRequest
from django_eventstream.utils import parse_last_event_id, sse_encode_error, sse_encode_event

from events.hub import (
    Frame,
    Hub,
    current_position,
    frames_after,
    in_thread,
    start_hub,
    stream_id,
    trimmed_through,
)
from events.types import CHANNEL

# django-eventstream pads its first chunk so that proxies and old browsers flush it at once.
OPENING = b":" + b" " * 2048 + b"\n\nevent: stream-open\ndata:\n\n"
KEEP_ALIVE = b"event: keep-alive\ndata:\n\n"
RECHECK_FLOOR_SECONDS = 0.1


class BadPosition(ValueError):
    """Last-Event-ID (or ?lastEventId=) is not a position this stream can resume from."""


def parse_position(last_event_id: str | None) -> int | None:
    """``dashboard:42`` -> 42; None when the client sent no position."""
    if not last_event_id:
        return None
    try:
        ids = parse_last_event_id(last_event_id)
        position = int(ids[CHANNEL])
    except (ValueError, KeyError) as exc:
        raise BadPosition(last_event_id) from exc
    if position < 0:
        raise BadPosition(last_event_id)
    return position


async def _starting_position(position: int | None) -> tuple[int, bool]:
    """Where to start and whether the client must be told to start afresh (stream-reset)."""
    current = await in_thread(current_position)
    if position is None:
        return current, False
    if position > current:
        return current, True  # a position from another database, or from the future
    if position < await in_thread(trimmed_through):
        return current, True  # older than the log keeps
    return position, False


async def follow(
    position: int | None,
    *,
    still_allowed: Callable[[], Awaitable[bool]],
    scope: Callable[[Frame], bytes | None] | None = None,
) -> AsyncIterator[bytes]:
    """The stream's text: everything after ``position``, then each new event as it commits.

    ``still_allowed`` is asked every SESSION_RECHECK_SECONDS, on a quiet stream too; when it
    says no, the stream sends django-eventstream's ``stream-error`` and ends, and the client's
    reconnection is refused.

    ``scope``, if given, decides what this client gets of each event: the bytes to send (the
    frame's own, or a reshaped frame with the same id), or None to skip it. Positions still
    advance over skipped events, so a reconnection resumes after them.
    """
    hub: Hub = start_hub()
    hub.streams += 1
    hub.wake()
    loop = asyncio.get_running_loop()
    try:
        start, reset = await _starting_position(position)
        pending = OPENING  # sent with the first frames, so a replay arrives in one piece
        if reset:
            pending += sse_encode_event(
                "stream-reset", {"channels": [CHANNEL]}, event_id=stream_id(start), json_encode=True
            ).encode()
        position = start
        checked_at = loop.time()
        while True:
            if loop.time() - checked_at >= settings.EVENT_SESSION_RECHECK_SECONDS:
                checked_at = loop.time()
                if not await still_allowed():
                    yield pending + sse_encode_error("forbidden", "The session has ended.").encode()
                    return
            frames = hub.buffered_after(position)
            if frames is None:
                frames = await in_thread(frames_after, position)
            if frames or pending:
                if frames:
                    position = frames[-1].seq
                if scope is None:
                    body = b"".join(frame.data for frame in frames)
                else:
                    body = b"".join(filter(None, map(scope, frames)))
                if pending or body:
                    yield pending + body
                pending = b""
                continue
            ticks = hub.ticks
            # Wake for the session re-check as well: a quiet stream would otherwise keep
            # serving a signed-out page until the next event or keep-alive.
            recheck_in = settings.EVENT_SESSION_RECHECK_SECONDS - (loop.time() - checked_at)
            try:
                async with asyncio.timeout(max(recheck_in, RECHECK_FLOOR_SECONDS)):
                    await hub.next_pulse()
            except TimeoutError:
                continue
            if hub.ticks != ticks:
                pending = KEEP_ALIVE  # sent with whatever else this pulse brought
    finally:
        hub.streams -= 1


# Streams of one session share its re-check: (scope, session key) -> (monotonic time, allowed).
_session_checks: dict[tuple[Hashable, str], tuple[float, bool]] = {}


def session_still_allows(
    session_key: str, allows: Callable[[Any], bool], *, scope: Hashable
) -> bool:
    """Read the session and its user afresh, as the next request would see them, and answer
    ``allows(user)``. Within EVENT_SESSION_RECHECK_SECONDS the streams of one session and
    ``scope`` (who may read them: staff, one provider) share one answer."""
    key = (scope, session_key)
    checked = _session_checks.get(key)
    now = time.monotonic()
    if checked is not None and now - checked[0] < settings.EVENT_SESSION_RECHECK_SECONDS:
        return checked[1]
    probe = HttpRequest()
    probe.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    allowed = bool(allows(get_user(probe)))
    if len(_session_checks) > 10_000:
        _session_checks.clear()
    _session_checks[key] = (now, allowed)
    return allowed
