"""SPEC §6: the dashboard's events, published after commit, and GET /api/events."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.db import transaction
from django.test import AsyncClient, Client

from allocation.models import Lead
from allocation.services import submit_lead
from credentials.services import create_api_key
from dashboard.tests.support import lead_input, published_since, stream_position
from events import hub
from events.models import Event
from events.services import record_event
from events.types import CHANNEL, LEAD_WAITING
from providers.models import Provider
from providers.services import pause_provider, update_provider
from webhooks.services import apply_quota_reset, canonical_body_sha256


def reset(event_id: str) -> None:
    body = {"eventId": event_id}
    apply_quota_reset(event_id=event_id, body_sha256=canonical_body_sha256(body), provider_ids=None)


# --- Publishing ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_committed_allocation_publishes_lead_allocated(seeded, django_capture_on_commit_callbacks):
    start = stream_position()

    with django_capture_on_commit_callbacks(execute=True):
        lead = submit_lead(lead_input(service_id=1))

    assert published_since(start) == [
        (
            "lead.allocated",
            {"lead_id": lead.pk, "service_id": 1, "provider_ids": [1, 2, 3], "status": "allocated"},
        )
    ]


@pytest.mark.django_db
def test_an_event_has_no_stream_position_before_its_commit(
    seeded, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        submit_lead(lead_input(service_id=1))

    assert len(callbacks) == 1  # the streams are woken after the commit, not before
    assert Event.objects.filter(type="lead.allocated", seq__isnull=True).count() == 1
    assert not Event.objects.published().exists()  # streams read only numbered events


@pytest.mark.django_db
def test_waiting_lead_publishes_lead_waiting(seeded, django_capture_on_commit_callbacks):
    Provider.objects.update(remaining_quota=0)
    start = stream_position()

    with django_capture_on_commit_callbacks(execute=True):
        lead = submit_lead(lead_input(service_id=2))

    assert published_since(start) == [("lead.waiting", {"lead_id": lead.pk, "service_id": 2})]


@pytest.mark.django_db(transaction=True)
def test_rolled_back_allocation_publishes_nothing(seeded_tx):
    start = stream_position()

    def allocate_then_fail() -> None:
        with transaction.atomic():
            submit_lead(lead_input(service_id=1))
            raise RuntimeError("the caller's transaction fails after the allocation")

    with pytest.raises(RuntimeError):
        allocate_then_fail()

    assert not Lead.objects.exists()
    assert published_since(start) == []


@pytest.mark.django_db(transaction=True)
def test_committed_allocation_is_published_without_a_surrounding_transaction(seeded_tx):
    start = stream_position()

    lead = submit_lead(lead_input(service_id=3))

    assert published_since(start) == [
        (
            "lead.allocated",
            {"lead_id": lead.pk, "service_id": 3, "provider_ids": [1, 4, 2], "status": "allocated"},
        )
    ]


@pytest.mark.django_db(transaction=True)
def test_failure_to_wake_the_streams_never_fails_or_loses_a_committed_lead(
    seeded_tx, monkeypatch, caplog
):
    def broken(*args, **kwargs):
        raise ConnectionError("wake-up channel unavailable")

    monkeypatch.setattr(hub, "notify_committed", broken)
    _, raw_key = create_api_key(name="source")
    start = stream_position()

    response = Client().post(
        "/api/leads",
        {"name": "Ada", "phone": "+15550000009", "city": "Paris", "service": 1},
        content_type="application/json",
        headers={"Authorization": f"Bearer {raw_key}"},
    )

    assert response.status_code == 201
    lead_id = response.json()["id"]
    assert Lead.objects.get(pk=lead_id).status == "allocated"
    assert "wake-up channel unavailable" in caplog.text
    # The event committed with the lead: every stream still gets it from the log.
    assert [data["lead_id"] for _, data in published_since(start)] == [lead_id]


@pytest.mark.django_db
def test_drained_leads_and_the_reset_are_published_after_the_drain(
    seeded, django_capture_on_commit_callbacks
):
    Provider.objects.update(remaining_quota=0)
    waiting = submit_lead(lead_input(service_id=1))
    start = stream_position()

    with django_capture_on_commit_callbacks(execute=True):
        reset("evt_1")

    assert published_since(start) == [
        (
            "lead.allocated",
            {
                "lead_id": waiting.pk,
                "service_id": 1,
                "provider_ids": [1, 2, 3],
                "status": "allocated",
            },
        ),
        ("quota.reset", {"event_id": "evt_1", "provider_ids": None, "leads_allocated": 1}),
    ]


@pytest.mark.django_db
def test_duplicate_webhook_delivery_publishes_nothing(seeded, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        reset("evt_1")
    start = stream_position()

    with django_capture_on_commit_callbacks(execute=True):
        reset("evt_1")

    assert published_since(start) == []


@pytest.mark.django_db
def test_provider_change_publishes_provider_updated(seeded, django_capture_on_commit_callbacks):
    start = stream_position()

    with django_capture_on_commit_callbacks(execute=True):
        pause_provider(seeded.provider(4))
        update_provider(seeded.provider(5), quota=12)

    assert published_since(start) == [
        (
            "provider.updated",
            {"provider_id": 4, "status": "paused", "quota": 10, "remaining_quota": 10},
        ),
        (
            "provider.updated",
            {"provider_id": 5, "status": "active", "quota": 12, "remaining_quota": 12},
        ),
    ]


# --- GET /api/events -------------------------------------------------------------------------


@pytest.mark.django_db
def test_anonymous_client_gets_a_real_401():
    response = Client().get("/api/events")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.django_db(transaction=True)  # the view reads the session in a worker thread
def test_non_staff_client_gets_a_real_403(plain_client):
    response = plain_client.get("/api/events")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


@pytest.mark.django_db(transaction=True)  # the view reads the session in a worker thread
def test_unusable_last_event_id_is_a_400(staff_client):
    response = staff_client.get("/api/events", headers={"Last-Event-ID": "error"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


@pytest.mark.django_db(transaction=True)  # the view reads the session in a worker thread
def test_stream_only_answers_get(staff_client):
    response = staff_client.post("/api/events")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


async def _first_chunk(user, **headers) -> tuple[int, str, str]:
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.get("/api/events", headers=headers)
    chunks = aiter(response.streaming_content)
    try:
        first = await anext(chunks)
    finally:
        await chunks.aclose()
    return response.status_code, response["Content-Type"], first.decode()


def publish(event_type: str, data: dict) -> None:
    with transaction.atomic():
        record_event(event_type, data)


@pytest.mark.django_db(transaction=True)
def test_reconnecting_with_last_event_id_replays_the_missed_events(staff_user):
    for lead_id in (1, 2, 3):
        publish(LEAD_WAITING, {"lead_id": lead_id, "service_id": 1})
    seen = f"{CHANNEL}:{stream_position() - 2}"

    status, content_type, body = async_to_sync(_first_chunk)(staff_user, **{"Last-Event-ID": seen})

    assert status == 200
    assert content_type.startswith("text/event-stream")
    assert "event: stream-open" in body
    assert f"id: {seen}\n" not in body
    replayed = body.split("event: lead.waiting\n")[1:]
    assert [chunk.splitlines()[:2] for chunk in replayed] == [
        [f"id: {CHANNEL}:{stream_position() - 1}", 'data: {"lead_id": 2, "service_id": 1}'],
        [f"id: {CHANNEL}:{stream_position()}", 'data: {"lead_id": 3, "service_id": 1}'],
    ]


@pytest.mark.django_db(transaction=True)
def test_connecting_from_the_rendered_position_with_last_event_id_query(staff_user):
    publish(LEAD_WAITING, {"lead_id": 1, "service_id": 1})
    rendered = hub.stream_id(stream_position())
    publish(LEAD_WAITING, {"lead_id": 2, "service_id": 1})

    async def first_chunk() -> str:
        client = AsyncClient()
        await client.aforce_login(staff_user)
        response = await client.get("/api/events", {"lastEventId": rendered})
        chunks = aiter(response.streaming_content)
        try:
            return (await anext(chunks)).decode()
        finally:
            await chunks.aclose()

    body = async_to_sync(first_chunk)()

    assert '"lead_id": 1' not in body
    assert 'data: {"lead_id": 2, "service_id": 1}' in body


# --- Connections, against a real ASGI server ---------------------------------------------------


def _session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def _open_stream(url: str, session: str) -> socket.socket:
    """A raw SSE request: every stream is asked for before any is answered, as browsers do."""
    address = httpx.URL(url)
    sock = socket.create_connection((address.host, address.port), timeout=10)
    sock.sendall(
        f"GET /api/events HTTP/1.1\r\nHost: {address.host}:{address.port}\r\n"
        f"Cookie: sessionid={session}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    return sock


def _read_until(sock: socket.socket, marker: bytes, *, seconds: float) -> bytes:
    received = b""
    deadline = time.monotonic() + seconds
    while marker not in received and time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        received += chunk
    return received


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_open_streams_hold_no_database_connection(asgi_server_factory, staff_user):
    # A pool of 2 connections and 6 open dashboards: a stream that kept its connection while
    # waiting would leave the others, and every other request, without one. Such a request
    # would wait the pool's whole timeout (20 s) and fail; a loaded machine is far quicker.
    server = asgi_server_factory(DB_POOL_MIN_SIZE="1", DB_POOL_MAX_SIZE="2", DB_POOL_TIMEOUT="20")
    session = _session_cookie(staff_user)

    streams = [_open_stream(server.url, session) for _ in range(6)]
    try:
        opened = [_read_until(sock, b"event: stream-open", seconds=30) for sock in streams]
        started = time.monotonic()
        health = httpx.get(server.url + "/healthz", timeout=30)
        fragments = httpx.get(
            server.url + "/dashboard/fragments",
            params={"summary": "1"},
            cookies={"sessionid": session},
            timeout=30,
        )
        elapsed = time.monotonic() - started
    finally:
        for sock in streams:
            sock.close()

    assert all(b"200 OK" in head and b"event: stream-open" in head for head in opened), (
        server.output()
    )
    assert health.status_code == 200
    assert fragments.status_code == 200
    assert elapsed < 10, "requests waited for a pooled connection held by a stream"
