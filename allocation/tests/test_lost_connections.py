"""A lead's database connection dies (PostgreSQL restarted, pg_terminate_backend): intake
retries once on a fresh connection, and never stores a lead it answers with an error.

The faults are real: another connection terminates this one's PostgreSQL backend, at the
moment a Django execute wrapper chooses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest
from django.db import connection

from allocation.models import Lead
from allocation.services import Busy, LeadInput, intake_lead
from intake.tests.support import post_lead
from leaddist.tests.asgi_server import database_url_for_tests

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency]


def terminate(pid: int) -> None:
    url = database_url_for_tests("leaddist-test-killer")
    with psycopg.connect(url, autocommit=True) as killer:
        killer.execute("SELECT pg_terminate_backend(%s)", [pid])


def terminate_all() -> int:
    """Terminate every backend of the test database but the killer's; return how many."""
    url = database_url_for_tests("leaddist-test-killer")
    with psycopg.connect(url, autocommit=True) as killer:
        # Each waits (up to 5 s) until the backend has ended and told its client.
        rows = killer.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def backend_pid() -> int:
    connection.ensure_connection()
    return connection.connection.info.backend_pid


@contextmanager
def killed_before(marker: str, *, times: int) -> Iterator[list[str]]:
    """Terminate this connection's backend just before the next ``times`` statements that
    contain ``marker`` run; yield the statements that were cut off."""
    cut: list[str] = []

    def wrapper(execute: Callable, sql: str, params: object, many: bool, context: dict) -> object:
        if marker in sql and len(cut) < times:
            cut.append(sql)
            terminate(context["connection"].connection.info.backend_pid)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield cut


def lead(n: int = 1) -> LeadInput:
    return LeadInput(service_id=1, name="Ada", phone=f"+1555030{n:04d}", city="Paris")


def test_a_connection_killed_mid_transaction_is_retried_on_a_fresh_one(seeded_tx):
    with killed_before("INSERT INTO allocation_lead", times=1) as cut:
        intake = intake_lead(lead())

    assert len(cut) == 1
    assert intake.lead.status == "allocated"
    assert [p.id for p in intake.providers] == [1, 2, 3]
    assert list(Lead.objects.values_list("pk", flat=True)) == [intake.lead.pk]


def test_a_connection_lost_twice_is_busy_and_stores_nothing(seeded_tx):
    with killed_before("INSERT INTO allocation_lead", times=2), pytest.raises(Busy):
        intake_lead(lead())

    assert not Lead.objects.exists()
    assert seeded_tx.provider(1).remaining_quota == 10


def test_a_pool_killed_while_idle_costs_the_next_request_nothing(client, seeded_tx, api_key):
    backend_pid()
    connection.close()  # back to the pool, where every connection now dies
    killed = terminate_all()

    response = post_lead(client, key=api_key)

    assert killed >= 1
    assert response.status_code == 201
    assert Lead.objects.count() == 1


def test_connections_killed_while_idle_in_the_pool_are_never_lent(
    client, seeded_tx, api_key, caplog
):
    pool = connection.pool
    idle = [pool.getconn() for _ in range(4)]
    for conn in idle:
        pool.putconn(conn)
    connection.close()
    killed = terminate_all()

    reads = [client.get("/api/leads", HTTP_AUTHORIZATION=f"Bearer {api_key}") for _ in range(4)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")

    assert killed >= 4
    assert [r.status_code for r in reads] == [200] * 4
    assert "connection lost" not in caplog.text  # no statement ever ran on a dead one


def test_a_read_whose_connection_dies_under_it_is_answered_from_a_fresh_one(
    client, seeded_tx, api_key
):
    stored = post_lead(client, key=api_key).json()["id"]

    with killed_before('FROM "allocation_lead"', times=1) as cut:
        response = client.get("/api/leads", HTTP_AUTHORIZATION=f"Bearer {api_key}")

    assert len(cut) == 1
    assert response.status_code == 200, response.content
    assert [lead["id"] for lead in response.json()["items"]] == [stored]


def test_a_read_whose_connection_dies_twice_answers_503(client, seeded_tx, api_key):
    with killed_before('FROM "allocation_lead"', times=2) as cut:
        response = client.get("/api/leads", HTTP_AUTHORIZATION=f"Bearer {api_key}")

    connection.close()  # died twice: not for the test's teardown (a request's end closes it)
    assert len(cut) == 2
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "busy"


def test_the_api_answers_503_when_the_database_stays_away(client, seeded_tx, api_key):
    with killed_before("INSERT INTO allocation_lead", times=10):
        response = post_lead(client, key=api_key)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "busy"
    assert int(response["Retry-After"]) >= 1
    assert not Lead.objects.exists()


def test_the_form_answers_busy_when_the_database_stays_away(client, seeded_tx):
    data = {"name": "Ada", "phone": "+1 555 030 0001", "city": "Paris", "service": "1"}
    with killed_before("INSERT INTO allocation_lead", times=10):
        response = client.post("/request-service", data)

    assert response.status_code == 503
    assert response["Retry-After"]
    assert not Lead.objects.exists()


@pytest.fixture
def api_key(transactional_db):
    from credentials.services import create_api_key

    return create_api_key(name="source")[1]
