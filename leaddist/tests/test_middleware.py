"""The 64 KiB body limit (leaddist.http.middleware) as the intake routes see it."""

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync

from allocation.models import Lead
from credentials.services import create_api_key
from intake.tests.support import LEAD, post_lead, stored_state
from leaddist.http.middleware import AsgiBodySizeLimit

LIMIT = 64 * 1024


def padded_lead(size):
    """A valid lead's JSON, padded with whitespace to exactly ``size`` bytes."""
    text = json.dumps(LEAD)
    return text + " " * (size - len(text))


def http_scope(path="/api/leads", method="POST", headers=()):
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


def body_chunks(total, *, pieces=4):
    size = total // pieces + 1
    data = b" " * total
    chunks = [data[i : i + size] for i in range(0, total, size)]
    return [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]


def call_asgi(app, scope, messages):
    """Run an ASGI app to completion; return what it sent and how many messages it read."""
    pending = list(messages)
    sent = []
    read = 0

    async def receive():
        nonlocal read
        if pending:
            read += 1
            return pending.pop(0)
        await asyncio.sleep(3600)  # the client stays connected; cancelled when the app is done

    async def send(message):
        sent.append(message)

    async_to_sync(app)(scope, receive, send)
    return sent, read


class RecordingApp:
    def __init__(self):
        self.bodies = []

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def status_and_body(sent):
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body


# --- Through Django (WSGI test client) ---------------------------------------------------------


def test_api_body_over_64_kib_is_413_and_stores_nothing(client, seeded):
    _, raw = create_api_key(name="acme")
    before = stored_state()

    response = post_lead(client, padded_lead(LIMIT + 1), key=raw)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert stored_state() == before


def test_api_body_of_exactly_64_kib_is_accepted(client, seeded):
    _, raw = create_api_key(name="acme")

    response = post_lead(client, padded_lead(LIMIT), key=raw)

    assert response.status_code == 201


def test_alias_body_over_64_kib_is_413(client, seeded):
    response = post_lead(client, padded_lead(LIMIT + 1), path="/api/request-service")

    assert response.status_code == 413


def test_public_form_body_over_64_kib_is_413(client, seeded):
    response = client.post("/request-service", {**LEAD, "description": "x" * LIMIT})

    assert response.status_code == 413
    assert Lead.objects.count() == 0


# --- ASGI: the body is counted while it streams in --------------------------------------------


def test_asgi_chunked_body_over_the_limit_is_413_before_the_app_runs():
    app = RecordingApp()

    sent, _ = call_asgi(AsgiBodySizeLimit(app), http_scope(), body_chunks(LIMIT + 1))

    status, body = status_and_body(sent)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert app.bodies == []


def test_asgi_declared_length_over_the_limit_is_413_without_reading_the_body():
    app = RecordingApp()
    scope = http_scope(headers=[(b"content-length", str(LIMIT + 1).encode())])

    sent, read = call_asgi(AsgiBodySizeLimit(app), scope, body_chunks(LIMIT + 1))

    assert status_and_body(sent)[0] == 413
    assert read == 0
    assert app.bodies == []


def test_asgi_lying_small_content_length_does_not_get_a_large_body_through():
    app = RecordingApp()
    scope = http_scope(headers=[(b"content-length", b"10")])

    sent, _ = call_asgi(AsgiBodySizeLimit(app), scope, body_chunks(3 * LIMIT))

    assert status_and_body(sent)[0] == 413
    assert app.bodies == []


def test_asgi_chunked_body_within_the_limit_reaches_the_app_whole():
    app = RecordingApp()

    sent, _ = call_asgi(AsgiBodySizeLimit(app), http_scope(), body_chunks(LIMIT))

    assert status_and_body(sent)[0] == 204
    assert app.bodies == [b" " * LIMIT]


def test_asgi_unlimited_routes_are_passed_through_untouched():
    app = RecordingApp()
    scope = http_scope(path="/admin/login/")

    sent, _ = call_asgi(AsgiBodySizeLimit(app), scope, body_chunks(LIMIT + 1))

    assert status_and_body(sent)[0] == 204
    assert app.bodies == [b" " * (LIMIT + 1)]


def test_production_asgi_application_refuses_a_large_body_with_a_lying_length():
    from leaddist.asgi import application

    scope = http_scope(headers=[(b"content-length", b"10"), (b"content-type", b"application/json")])

    sent, _ = call_asgi(application, scope, body_chunks(2 * LIMIT))

    status, body = status_and_body(sent)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"


# The ASGI handler closes and reopens the connection, which a test transaction forbids.
@pytest.mark.django_db(transaction=True)
def test_production_asgi_application_serves_a_chunked_body_within_the_limit(seeded_tx):
    from leaddist.asgi import application

    _, raw = create_api_key(name="acme")
    body = padded_lead(LIMIT).encode()
    scope = http_scope(
        headers=[
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {raw}".encode()),
        ]
    )
    chunks = [
        {"type": "http.request", "body": body[:1000], "more_body": True},
        {"type": "http.request", "body": body[1000:], "more_body": False},
    ]

    sent, _ = call_asgi(application, scope, chunks)

    status, payload = status_and_body(sent)
    assert status == 201
    assert json.loads(payload)["id"] == Lead.objects.get().pk
