"""Following the log over SSE: replay, live fan-out through the hub, resets, ended sessions."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import pytest
from django.db import connection, transaction

from events import hub as hub_module
from events import streams as stream_module
from events.hub import running_hub, stream_id
from events.services import record_event
from events.streams import follow
from events.tests.support import stream_position
from events.types import CHANNEL, LEAD_WAITING

pytestmark = pytest.mark.django_db(transaction=True)


def commit_events(*lead_ids: int, notify: bool = True) -> None:
    """Commit events from another thread, as another request (or process) would."""

    def write() -> None:
        try:
            for lead_id in lead_ids:
                with transaction.atomic():
                    if notify:
                        record_event(LEAD_WAITING, {"lead_id": lead_id, "service_id": 1})
                    else:
                        # Another process: its commit wakes nobody in this one.
                        from events.models import Event

                        Event.objects.create(
                            type=LEAD_WAITING, data={"lead_id": lead_id, "service_id": 1}
                        )
        finally:
            connection.close()

    thread = threading.Thread(target=write)
    thread.start()
    thread.join(30)


async def allowed() -> bool:
    return True


async def read_until(chunks: AsyncIterator[bytes], marker: str, *, seconds: float = 30) -> str:
    """The stream's text up to ``marker``. The timeout only ends a failing test: generous, so
    that a busy machine cannot break a passing one."""
    text = ""
    async with asyncio.timeout(seconds):
        while marker not in text:
            text += (await anext(chunks)).decode()
    return text


def lead_ids(text: str) -> list[int]:
    return [
        int(line.split('"lead_id": ')[1].split(",")[0])
        for line in text.splitlines()
        if line.startswith("data: {")
    ]


async def close_hub() -> None:
    hub = running_hub()
    if hub is not None:
        await hub.close()


def test_a_stream_replays_after_its_position_then_follows_new_commits():
    commit_events(1, 2)
    seen = stream_position() - 1

    async def scenario() -> tuple[str, str]:
        stream = follow(seen, still_allowed=allowed)
        try:
            replay = await read_until(stream, "event: lead.waiting")
            await asyncio.to_thread(commit_events, 3, 4)
            live = await read_until(stream, '"lead_id": 4')
        finally:
            await stream.aclose()
            await close_hub()
        return replay, live

    replay, live = asyncio.run(scenario())

    assert "event: stream-open" in replay
    assert lead_ids(replay) == [2]
    assert lead_ids(live) == [3, 4]
    assert f"id: {stream_id(stream_position())}\n" in live


def test_many_streams_share_one_read_per_pass(monkeypatch):
    reads = []
    real = hub_module.frames_after

    def counted(position, **kwargs):
        reads.append(position)
        return real(position, **kwargs)

    monkeypatch.setattr(hub_module, "frames_after", counted)
    start = stream_position()

    async def scenario() -> list[str]:
        streams = [follow(start, still_allowed=allowed) for _ in range(50)]
        try:
            for stream in streams:
                await read_until(stream, "stream-open")
            reads.clear()
            await asyncio.to_thread(commit_events, *range(1, 21))
            return [await read_until(stream, '"lead_id": 20') for stream in streams]
        finally:
            for stream in streams:
                await stream.aclose()
            await close_hub()

    received = asyncio.run(scenario())

    assert all(lead_ids(text) == list(range(1, 21)) for text in received)
    assert len(reads) < 20  # the hub's passes, never one read per stream or per event


def test_a_commit_that_wakes_nobody_still_arrives_by_polling(settings):
    settings.EVENT_POLL_SECONDS = 0.2
    start = stream_position()

    async def scenario() -> str:
        stream = follow(start, still_allowed=allowed)
        try:
            await read_until(stream, "stream-open")
            await asyncio.to_thread(commit_events, 7, notify=False)
            return await read_until(stream, '"lead_id": 7')
        finally:
            await stream.aclose()
            await close_hub()

    assert lead_ids(asyncio.run(scenario())) == [7]


def test_a_position_the_log_never_had_is_told_to_start_afresh():
    commit_events(1)
    current = stream_position()

    async def scenario() -> str:
        stream = follow(current + 100, still_allowed=allowed)
        try:
            return await read_until(stream, "stream-reset")
        finally:
            await stream.aclose()
            await close_hub()

    text = asyncio.run(scenario())

    assert f"event: stream-reset\nid: {CHANNEL}:{current}\n" in text


def test_a_stream_whose_session_ended_says_so_and_closes(settings):
    settings.EVENT_SESSION_RECHECK_SECONDS = 0

    async def signed_out() -> bool:
        return False

    async def scenario() -> list[str]:
        stream = follow(None, still_allowed=signed_out)
        try:
            return [chunk.decode() async for chunk in stream]
        finally:
            await close_hub()

    chunks = asyncio.run(scenario())

    assert "event: stream-error" in chunks[-1]
    assert '"condition": "forbidden"' in chunks[-1]


def test_a_quiet_stream_gets_keep_alives_from_the_hub(settings):
    settings.EVENT_KEEP_ALIVE_SECONDS = 0.2
    settings.EVENT_POLL_SECONDS = 0.05

    async def scenario() -> str:
        stream = follow(None, still_allowed=allowed)
        try:
            await read_until(stream, "stream-open")
            return await read_until(stream, "event: keep-alive")
        finally:
            await stream.aclose()
            await close_hub()

    assert "event: keep-alive\ndata:\n\n" in asyncio.run(scenario())


def test_a_quiet_stream_rechecks_its_session_without_waiting_for_a_keep_alive(settings):
    settings.EVENT_SESSION_RECHECK_SECONDS = 0.3
    settings.EVENT_KEEP_ALIVE_SECONDS = 60
    checks: list[float] = []

    async def signed_out_after_first_check() -> bool:
        checks.append(time.monotonic())
        return len(checks) < 2

    async def scenario() -> list[str]:
        stream = follow(None, still_allowed=signed_out_after_first_check)
        try:
            async with asyncio.timeout(5):
                return [chunk.decode() async for chunk in stream]
        finally:
            await close_hub()

    started = time.monotonic()
    chunks = asyncio.run(scenario())

    assert "event: stream-error" in chunks[-1]
    assert len(checks) == 2
    assert time.monotonic() - started < 2


def test_a_commit_between_a_new_streams_read_and_the_hubs_first_read_is_sent_at_once(
    settings, monkeypatch
):
    """A new stream reads the log itself while the hub has not read yet; an event committed
    just then is below the hub's first position. The hub's first read must wake the stream,
    which then reads it: not leave it to the next keep-alive."""
    settings.EVENT_KEEP_ALIVE_SECONDS = 120.0
    settings.EVENT_SESSION_RECHECK_SECONDS = 120.0
    start = stream_position()
    stream_has_read = threading.Event()
    real_frames_after, real_current_position = hub_module.frames_after, hub_module.current_position

    def frames_after(position, **kwargs):
        frames = real_frames_after(position, **kwargs)
        stream_has_read.set()
        return frames

    def current_position() -> int:
        # The hub's first read: only once the stream has read, and after another process
        # committed an event.
        assert stream_has_read.wait(30), "the stream never read the log"
        commit_events(9, notify=False)
        return real_current_position()

    monkeypatch.setattr(stream_module, "frames_after", frames_after)
    monkeypatch.setattr(hub_module, "current_position", current_position)

    async def scenario() -> str:
        stream = follow(start, still_allowed=allowed)
        try:
            await read_until(stream, "stream-open")
            return await read_until(stream, '"lead_id": 9', seconds=20)
        finally:
            await stream.aclose()
            await close_hub()

    assert lead_ids(asyncio.run(scenario())) == [9]
