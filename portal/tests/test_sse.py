"""GET /portal/api/events: the signed-in provider's events only, reshaped, and the session
re-checked as the staff stream does (SPEC §9)."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync
from django.db import transaction
from django.test import AsyncClient, Client

from events.hub import running_hub, stream_id
from events.services import record_event
from events.tests.support import stream_position
from events.types import (
    DELIVERY_UPDATED,
    LEAD_ALLOCATED,
    LEAD_RETURNED,
    LEAD_WAITING,
    PROVIDER_UPDATED,
    QUOTA_RESET,
)
from portal.sse import scoped_data

pytestmark = pytest.mark.django_db(transaction=True)  # the view reads in a worker thread


def test_scoping_keeps_only_this_providers_part_of_each_event():
    allocated = {"lead_id": 7, "service_id": 1, "provider_ids": [1, 2, 3], "status": "allocated"}

    assert scoped_data(2, LEAD_ALLOCATED, allocated) == {"lead_id": 7}
    assert scoped_data(5, LEAD_ALLOCATED, allocated) is None
    assert scoped_data(2, LEAD_WAITING, {"lead_id": 8, "service_id": 1}) is None
    assert scoped_data(2, QUOTA_RESET, {"event_id": "e", "provider_ids": None}) == {}
    assert scoped_data(2, QUOTA_RESET, {"event_id": "e", "provider_ids": [2]}) == {}
    assert scoped_data(2, QUOTA_RESET, {"event_id": "e", "provider_ids": [1, 3]}) is None
    updated = {"provider_id": 3, "status": "paused", "quota": 10, "remaining_quota": 4}
    assert scoped_data(2, PROVIDER_UPDATED, updated) is None
    assert scoped_data(3, PROVIDER_UPDATED, updated) == updated
    delivery = {
        "delivery_id": 4,
        "lead_id": 7,
        "provider_id": 2,
        "channel": "webhook",
        "status": "delivered",
        "attempts": 1,
    }
    assert scoped_data(2, DELIVERY_UPDATED, delivery) == {
        "delivery_id": 4,
        "lead_id": 7,
        "channel": "webhook",
        "status": "delivered",
        "attempts": 1,
    }
    assert scoped_data(1, DELIVERY_UPDATED, delivery) is None
    assert scoped_data(2, LEAD_RETURNED, {"provider_id": 3, "lead_id": 7}) is None
    assert scoped_data(2, "lead.allocated", "not a dict") is None


def publish(event_type: str, data: dict) -> None:
    with transaction.atomic():
        record_event(event_type, data)


async def _first_chunk(user, **query) -> tuple[int, str]:
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.get("/portal/api/events", query)
    chunks = aiter(response.streaming_content)
    try:
        return response.status_code, (await anext(chunks)).decode()
    finally:
        await chunks.aclose()
        hub = running_hub()
        if hub is not None:
            await hub.close()


def test_the_stream_replays_only_this_providers_events(provider_account):
    start = stream_id(stream_position())
    publish(LEAD_ALLOCATED, {"lead_id": 1, "service_id": 1, "provider_ids": [1, 3, 4]})
    publish(LEAD_ALLOCATED, {"lead_id": 2, "service_id": 1, "provider_ids": [1, 2, 3]})
    publish(PROVIDER_UPDATED, {"provider_id": 3, "status": "paused", "quota": 10})
    publish(PROVIDER_UPDATED, {"provider_id": 2, "status": "paused", "quota": 10})
    publish(QUOTA_RESET, {"event_id": "r1", "provider_ids": [5]})
    publish(LEAD_WAITING, {"lead_id": 3, "service_id": 1})
    publish(LEAD_RETURNED, {"return_id": 9, "lead_id": 2, "provider_id": 2, "reason": "spam"})
    last = stream_id(stream_position())

    status, body = async_to_sync(_first_chunk)(provider_account.user, lastEventId=start)

    assert status == 200
    events = [block for block in body.split("\n\n") if block.startswith("event: ")]
    events = [block for block in events if not block.startswith("event: stream-open")]
    assert [block.splitlines()[0] for block in events] == [
        "event: lead.allocated",
        "event: provider.updated",
        "event: lead.returned",
    ]
    assert 'data: {"lead_id": 2}' in events[0]
    assert "provider_ids" not in body
    assert '"lead_id": 1' not in body
    assert '"provider_id": 3' not in body
    assert f"id: {last}" in events[-1]


def test_anonymous_and_other_accounts_get_real_refusals(staff_user, plain_user, seeded_tx):
    anonymous = Client().get("/portal/api/events")
    staff = Client()
    staff.force_login(staff_user)

    assert anonymous.status_code == 401
    assert staff.get("/portal/api/events").status_code == 403
    assert staff.post("/portal/api/events").status_code == 405


def test_a_stream_ends_once_its_account_is_deactivated(provider_account, settings):
    settings.EVENT_SESSION_RECHECK_SECONDS = 0.2
    user = provider_account.user

    async def scenario() -> str:
        client = AsyncClient()
        await client.aforce_login(user)
        response = await client.get("/portal/api/events")
        chunks = aiter(response.streaming_content)
        text = (await anext(chunks)).decode()
        await asyncio.to_thread(deactivate)
        try:
            async with asyncio.timeout(10):
                async for chunk in chunks:
                    text += chunk.decode()
        finally:
            await chunks.aclose()
            hub = running_hub()
            if hub is not None:
                await hub.close()
        return text

    def deactivate() -> None:
        from django.db import connection

        type(user).objects.filter(pk=user.pk).update(is_active=False)
        connection.close()

    text = async_to_sync(scenario)()

    assert "event: stream-error" in text
