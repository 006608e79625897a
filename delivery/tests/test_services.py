"""Attempts one at a time: the retry schedule, what a failure records, and all of it in one
statement."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.core.mail.backends.base import BaseEmailBackend
from django.db import DatabaseError, connection
from django.utils import timezone

from delivery.attempts import Record, record_attempts
from delivery.models import Attempt, Delivery, Endpoint
from delivery.sending import Outcome
from delivery.sql import RETRY_DELAY
from delivery.tests.support import attempt_now, plain_endpoint, submit
from events.models import Event
from events.types import DELIVERY_UPDATED


def retry_delays(attempts: int, *, times: int) -> list[float]:
    """RETRY_DELAY's waits after ``attempts`` failures, as the record statement draws them."""
    params = {
        "retry_base": settings.DELIVERY_RETRY_BASE_SECONDS,
        "retry_max": settings.DELIVERY_RETRY_MAX_SECONDS,
        "attempts": attempts,
    }
    sql = RETRY_DELAY.format(failures="%(attempts)s - 1")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {sql} FROM generate_series(1, {times})", params)
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.django_db
def test_retries_double_from_the_base_up_to_the_cap_with_half_of_each_wait_random(settings):
    settings.DELIVERY_RETRY_BASE_SECONDS = 30
    settings.DELIVERY_RETRY_MAX_SECONDS = 3600

    waits = {n: retry_delays(n, times=200) for n in (1, 2, 3, 7, 8, 30, 5000)}

    for n, nominal in {1: 30, 2: 60, 3: 120, 7: 1920, 8: 3600, 30: 3600, 5000: 3600}.items():
        assert nominal / 2 <= min(waits[n])
        assert max(waits[n]) <= nominal
        assert max(waits[n]) - min(waits[n]) > nominal / 10  # jittered, not fixed


class RefusingBackend(BaseEmailBackend):
    def send_messages(self, messages):
        raise ConnectionRefusedError("SMTP server refused the connection")


def test_an_email_the_backend_refuses_is_retried(transactional_db, seeded_tx, settings):
    settings.EMAIL_BACKEND = f"{__name__}.RefusingBackend"
    settings.DELIVERY_RETRY_BASE_SECONDS = 60
    plain_endpoint(2, email="two@example.com")
    row = Delivery.objects.get(lead=submit(1, 1))

    status = attempt_now(row.pk)

    row.refresh_from_db()
    assert status == "retrying"
    assert (row.attempts, row.last_status_code) == (1, None)
    assert row.last_error == "ConnectionRefusedError: SMTP server refused the connection"


def test_a_delivery_whose_endpoint_was_removed_fails_at_once(transactional_db, seeded_tx):
    plain_endpoint(1, url="https://p1.example/hook")
    row = Delivery.objects.get(lead=submit(1, 1))
    Endpoint.objects.all().delete()

    status = attempt_now(row.pk)

    assert status == "failed"
    assert Attempt.objects.get().error == "the provider has no webhook endpoint any more"


REFUSE_EVENTS = """
CREATE FUNCTION test_refuse_event() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'the event log refuses'; END $$ LANGUAGE plpgsql;
CREATE TRIGGER test_refuse_event BEFORE INSERT ON events_event
FOR EACH ROW EXECUTE FUNCTION test_refuse_event();
"""
ACCEPT_EVENTS = """
DROP TRIGGER test_refuse_event ON events_event; DROP FUNCTION test_refuse_event();
"""


def test_an_attempt_is_recorded_with_its_event_or_not_at_all(transactional_db, seeded_tx, settings):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = False
    plain_endpoint(1, url="https://10.0.0.1/hook")  # refused at send time: a failed attempt
    row = Delivery.objects.get(lead=submit(1, 1))

    # The event cannot be written: the statement fails after the delivery row and the attempt
    # were written, and must take them all back with it.
    with connection.cursor() as cursor:
        cursor.execute(REFUSE_EVENTS)
    try:
        with pytest.raises(DatabaseError, match="the event log refuses"):
            attempt_now(row.pk)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(ACCEPT_EVENTS)

    row.refresh_from_db()
    assert (row.status, row.attempts, row.last_error) == ("pending", 0, "")
    assert row.worker_id is not None  # still claimed: it goes back when the claim runs out
    assert not Attempt.objects.exists()
    assert not Event.objects.filter(type=DELIVERY_UPDATED).exists()


def test_a_refused_connection_is_a_failed_attempt_retried(transactional_db, seeded_tx, settings):
    import socket

    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = True
    settings.DELIVERY_RETRY_BASE_SECONDS = 60
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens there once closed
    plain_endpoint(1, url=f"http://127.0.0.1:{port}/hook")
    row = Delivery.objects.get(lead=submit(1, 1))

    status = attempt_now(row.pk)

    row.refresh_from_db()
    assert status == "retrying"
    assert row.last_error.startswith("ClientConnectorError")


def test_a_delivery_that_keeps_failing_is_announced_on_each_change_and_every_tenth_attempt(
    transactional_db, seeded_tx, settings
):
    settings.DELIVERY_RETRY_BASE_SECONDS = 60
    plain_endpoint(1, url="https://p1.example/hook")
    row = Delivery.objects.get(lead=submit(1, 1))

    def attempt(outcome: Outcome) -> None:
        record_attempts([Record(row.pk, 0, outcome, timezone.now())])

    for _ in range(21):
        attempt(Outcome(False, 5, status_code=503))
    attempt(Outcome(True, 5, status_code=200))

    events = [e.data for e in Event.objects.filter(type=DELIVERY_UPDATED).order_by("pk")]
    assert [(e["status"], e["attempts"]) for e in events] == [
        ("retrying", 1),
        ("retrying", 2),
        ("retrying", 3),
        ("retrying", 10),
        ("retrying", 20),
        ("delivered", 22),
    ]
    assert Attempt.objects.filter(delivery=row).count() == 22
