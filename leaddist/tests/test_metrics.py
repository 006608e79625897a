"""GET /metrics: who may scrape, and that every metric moves with what it counts.

Counters are process-wide, so each test compares two scrapes. The last test runs the launcher
(two web workers and a background worker) and sees one total over all of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
from django.conf import settings as django_settings
from django.db import connection
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from allocation.models import Lead
from allocation.services import LeadInput, submit_lead
from allocation.tasks import drain_waiting_leads
from credentials.services import create_api_key
from events import hub
from intake.tests.support import LEAD, post_lead
from leaddist import serve
from leaddist.http import redis_client
from leaddist.tests.asgi_server import database_url_for_tests, free_port
from leaddist.tests.test_serve import PRODUCTION, launch, web_workers
from providers.models import Provider
from webhooks.tests.helpers import SECRET, signed

TOKEN = "metrics-token-for-tests-0123456789"
# Nothing listens there: connections are refused at once.
DEAD_REDIS = "redis://127.0.0.1:1/0"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def token(settings) -> str:
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


@pytest.fixture
def scrape(client, token):
    """Scrape /metrics with the token; return the samples."""

    def read() -> Samples:
        response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200, response.content
        return parse(response.content.decode())

    return read


@pytest.fixture
def api_key(db) -> str:
    _, raw = create_api_key(name="metrics")
    return raw


def lead(n: int, service: int = 1) -> dict:
    return LEAD | {"phone": f"+1555030{n:04d}", "service": service}


# --- Who may scrape ----------------------------------------------------------------------------


def test_the_token_is_accepted_and_the_answer_is_prometheus_text(client, db, token):
    response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert response["Cache-Control"] == "no-store"
    assert b"# TYPE leaddist_leads_total counter" in response.content


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer wrong-token-wrong-token-wrong-token", 401),
        (f"Basic {TOKEN}", 401),
        (f"Bearer {TOKEN}x", 401),
    ],
)
def test_anonymous_callers_and_wrong_tokens_are_refused(client, db, token, authorization, status):
    headers = {"Authorization": authorization} if authorization else {}

    response = client.get("/metrics", headers=headers)

    assert response.status_code == status
    assert response.json()["error"]["code"] == "unauthorized"


def test_an_api_key_is_no_metrics_token(client, token, api_key):
    response = client.get("/metrics", headers={"Authorization": f"Bearer {api_key}"})

    assert response.status_code == 401


def test_without_a_configured_token_no_bearer_is_accepted(client, db, settings):
    settings.METRICS_TOKEN = ""

    response = client.get("/metrics", headers={"Authorization": "Bearer "})

    assert response.status_code == 401


def test_a_staff_session_is_accepted_without_a_token(admin_client, settings):
    settings.METRICS_TOKEN = ""

    response = admin_client.get("/metrics")

    assert response.status_code == 200


def test_a_session_that_is_not_staff_is_forbidden(client, django_user_model, token):
    client.force_login(django_user_model.objects.create_user(username="visitor", password="pw"))

    response = client.get("/metrics")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


# --- What it counts ----------------------------------------------------------------------------


def test_leads_are_counted_by_outcome_and_timed(client, seeded, api_key, scrape):
    before = scrape()

    for n in range(3):
        assert post_lead(client, lead(n), key=api_key).status_code == 201
    assert post_lead(client, lead(0), key=api_key).status_code == 409
    Provider.objects.filter(pk__in=[2, 3, 4]).update(remaining_quota=0)
    assert post_lead(client, lead(10), key=api_key).status_code == 202
    assert post_lead(client, lead(11) | {"phone": "x"}, key=api_key).status_code == 422
    after = scrape()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("leaddist_leads_total", outcome="allocated") == 3
    assert moved("leaddist_leads_total", outcome="duplicate") == 1
    assert moved("leaddist_leads_total", outcome="waiting") == 1
    assert moved("leaddist_leads_total", outcome="invalid") == 1
    assert moved("leaddist_leads_total", outcome="busy") == 0
    # Every lead that reached the engine was timed, the duplicate too; the invalid one not.
    assert moved("leaddist_allocation_seconds_count") == 5
    assert moved("leaddist_allocation_seconds_bucket", le="+Inf") == 5


def test_the_public_form_counts_its_leads_too(client, seeded, scrape):
    before = scrape()

    client.post("/request-service", LEAD)
    after = scrape()

    allocated = ("leaddist_leads_total", (("outcome", "allocated"),))
    assert after[allocated] - before[allocated] == 1


@pytest.mark.django_db(transaction=True)
def test_a_busy_engine_is_counted(client, seeded_tx, settings, scrape):
    from intake.tests.support import cursor_locked

    _, raw = create_api_key(name="busy")
    settings.ALLOCATION_MAX_ATTEMPTS = 1
    before = scrape()

    with cursor_locked(1):
        response = post_lead(client, key=raw)
    after = scrape()

    assert response.status_code == 503
    busy = ("leaddist_leads_total", (("outcome", "busy"),))
    assert after[busy] - before[busy] == 1


def test_intake_gains_no_query_from_its_metrics(client, seeded, api_key, django_assert_num_queries):
    post_lead(client, lead(1), key=api_key)  # the key is verified and cached

    # The key is cached and its last use fresh: the engine's three statements (cursor lock,
    # candidates, writes) inside the test's savepoint and its release, as before metrics.
    with django_assert_num_queries(5):
        response = post_lead(client, lead(2), key=api_key)

    assert response.status_code == 201


def test_the_waiting_gauge_is_the_databases_count_per_service(seeded, scrape):
    Provider.objects.filter(pk__in=[2, 3, 4]).update(status="paused")
    for n in range(3):
        submit_lead(LeadInput(service_id=1, name="Ada", phone=f"+1555020{n:04d}", city="X"))
    submit_lead(LeadInput(service_id=2, name="Ada", phone="+15550209999", city="X"))

    samples = scrape()

    counted = {
        slug: value(samples, "leaddist_leads_waiting", service=slug)
        for slug in ("service-1", "service-2", "service-3")
    }
    in_database = {
        f"service-{pk}": Lead.objects.waiting().filter(service_id=pk).count() for pk in (1, 2, 3)
    }
    assert counted == in_database
    assert counted["service-1"] == 3
    assert value(samples, "leaddist_leads_waiting_oldest_seconds", service="service-1") > 0
    assert value(samples, "leaddist_leads_waiting_oldest_seconds", service="service-3") == 0


def test_webhook_outcomes_are_counted(client, seeded, settings, scrape):
    settings.WEBHOOK_SECRET = SECRET
    body = json.dumps({"eventId": "evt_metrics"}).encode()
    before = scrape()

    for headers in (signed(body, SECRET), signed(body, SECRET), {"webhook-id": "forged"}):
        client.post(
            "/api/webhook/reset-quota", body, content_type="application/json", headers=headers
        )
    after = scrape()

    def moved(outcome: str) -> float:
        key = ("leaddist_webhooks_total", (("outcome", outcome),))
        return after[key] - before[key]

    assert [moved("applied"), moved("duplicate"), moved("bad_signature")] == [1, 1, 1]
    assert moved("invalid") == 0


def test_redis_down_reads_0_while_the_database_reads_1(db, settings, scrape):
    settings.REDIS_URL = DEAD_REDIS

    samples = scrape()

    assert value(samples, "leaddist_redis_up") == 0
    assert value(samples, "leaddist_database_up") == 1


def test_redis_up_reads_1_and_no_redis_configured_leaves_it_out(db, settings, scrape, redis_url):
    settings.REDIS_URL = redis_url
    up = scrape()
    settings.REDIS_URL = ""
    unset = scrape()

    assert value(up, "leaddist_redis_up") == 1
    assert value(unset, "leaddist_redis_up") is None


def test_the_database_down_reads_0_and_the_scrape_still_answers(db, monkeypatch, scrape):
    monkeypatch.setattr("leaddist.scrape.database_ok", lambda: False)

    samples = scrape()

    assert value(samples, "leaddist_database_up") == 0
    assert not any(name == "leaddist_leads_waiting" for name, _ in samples)


@pytest.mark.django_db(transaction=True)
def test_the_database_reads_1_when_its_pooled_connection_was_killed(scrape):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    with psycopg.connect(database_url_for_tests("killer"), autocommit=True) as killer:
        killer.execute("SELECT pg_terminate_backend(%s)", [pid])

    samples = scrape()

    assert value(samples, "leaddist_database_up") == 1
    assert value(samples, "leaddist_delivery_workers") is not None  # read from the database


def test_redis_reads_1_as_soon_as_it_answers_though_the_breaker_is_open(
    db, settings, scrape, redis_url
):
    settings.REDIS_URL = redis_url
    redis_client.breaker.failed(ConnectionError("a call failed a moment ago"))

    samples = scrape()

    assert value(samples, "leaddist_redis_up") == 1
    assert not redis_client.breaker.is_open


def test_a_failed_wake_up_publish_is_counted(db, settings, scrape):
    settings.REDIS_URL = DEAD_REDIS
    before = scrape()  # its Redis check opened the breaker: close it again
    redis_client.breaker.succeeded()

    hub.notify_committed()  # as after a commit, in a process without a hub
    hub.notify_committed()  # the breaker is open now: skipped
    after = scrape()

    def moved(reason: str) -> float:
        key = ("leaddist_event_publish_failures_total", (("reason", reason),))
        return after[key] - before[key]

    assert moved("redis_error") == 1
    assert moved("breaker_open") == 1


@pytest.mark.django_db(transaction=True)
def test_the_background_queue_shows_the_jobs_not_started(seeded_tx, jobs, scrape):
    drain_waiting_leads.defer()

    samples = scrape()

    assert value(samples, "leaddist_background_jobs_todo", queue="drains") == 1


@pytest.mark.django_db(transaction=True)
def test_the_delivery_queue_shows_deliveries_by_status_the_oldest_due_and_the_stranded(
    seeded_tx, scrape
):
    from datetime import timedelta

    from django.utils import timezone

    from delivery.models import Delivery, DeliveryWorker
    from delivery.queue import DEAD_AFTER_SECONDS, claim, register_worker
    from delivery.tests.support import plain_endpoint, submit

    for pid in (1, 2, 3):
        plain_endpoint(pid, url=f"https://p{pid}.example/hook")
    submit(1, 1)
    Delivery.objects.filter(provider_id=3).update(status="failed", next_attempt_at=None)
    Delivery.objects.filter(provider_id=2).update(
        next_attempt_at=timezone.now() - timedelta(seconds=40)
    )
    dead = register_worker()
    Delivery.objects.filter(provider_id=1).update(
        worker_id=dead, next_attempt_at=timezone.now() + timedelta(seconds=20)
    )
    DeliveryWorker.objects.filter(pk=dead).update(
        beat_at=timezone.now() - timedelta(seconds=DEAD_AFTER_SECONDS + 1)
    )
    live = register_worker()
    assert claim(live, take=0).sends == []

    samples = scrape()

    assert value(samples, "leaddist_deliveries", status="pending") == 2
    assert value(samples, "leaddist_deliveries", status="failed") == 1
    assert value(samples, "leaddist_delivery_oldest_due_seconds") >= 40
    assert value(samples, "leaddist_deliveries_stranded") == 1
    assert value(samples, "leaddist_delivery_workers") == 1


# --- Several processes -------------------------------------------------------------------------


def test_production_refuses_a_short_metrics_token():
    short = launch("--workers", "1", **(PRODUCTION | {"METRICS_TOKEN": "short"}))

    assert short.returncode == 2
    assert "METRICS_TOKEN must be at least 24 characters" in short.stderr


def test_the_launcher_empties_a_named_metrics_directory(tmp_path, monkeypatch):
    stale = tmp_path / "counter_12345.db"
    stale.write_bytes(b"from a previous run")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    made = serve.share_metrics(3)

    assert made is None  # not ours to remove
    assert not stale.exists()


def test_the_launcher_makes_a_metrics_directory_for_several_processes_only(monkeypatch):
    # Set first, so that the test's end removes what share_metrics sets.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")

    alone = serve.share_metrics(1)
    made = serve.share_metrics(2)

    assert alone is None
    assert made is not None
    assert made.is_dir()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(made)
    made.rmdir()


def counted_per_process(directory) -> dict[str, float]:
    """Allocated leads counted in each process's file of the metrics directory."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        for family in MultiProcessCollector.merge([str(path)]):
            for sample in family.samples:
                if (
                    sample.name == "leaddist_leads_total"
                    and sample.labels["outcome"] == "allocated"
                ):
                    counts[path.name] = sample.value
    return {name: n for name, n in counts.items() if n}


@pytest.mark.django_db(transaction=True)
def test_the_launchers_processes_are_added_up(seeded_tx, tmp_path, redis_url, jobs):
    """Two web workers and a background worker under leaddist.serve: each counts in its own
    file, and a scrape (whichever worker answers it) reports the total of all of them."""
    _, key = create_api_key(name="multiprocess")
    Provider.objects.update(quota=1000, remaining_quota=1000)
    directory = tmp_path / "metrics"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "WEB_CONCURRENCY")}
    env |= PRODUCTION | {
        "REDIS_URL": redis_url,
        "METRICS_TOKEN": TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "RATE_LIMIT_PER_KEY": "0",
        "DATABASE_URL": database_url_for_tests(f"leaddist-test-metrics-{port}"),
    }
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "leaddist.serve", "--port", str(port), "--workers", "2"],
            cwd=django_settings.BASE_DIR,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while len(web_workers(process.pid)) < 2 or not _answers(url):
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)

            def post(n: int) -> httpx.Response:
                body = lead(n, service=n % 3 + 1)
                headers = {"Authorization": f"Bearer {key}"}
                # A new connection each time, so both workers take some.
                return httpx.post(url + "/api/leads", json=body, headers=headers, timeout=30)

            posted = 0
            with ThreadPoolExecutor(max_workers=8) as pool:
                while len(counted_per_process(directory)) < 2 and posted < 400:
                    answers = list(pool.map(post, range(posted, posted + 40)))
                    assert {a.status_code for a in answers} == {201}, log.read_text()
                    posted += 40

            def scrape() -> Samples:
                return parse(
                    httpx.get(
                        url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
                    ).text
                )

            # The delivery worker has sent its first heartbeat.
            deadline = time.monotonic() + 60
            while value(scrape(), "leaddist_delivery_workers") != 1:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            scrapes = [scrape() for _ in range(4)]
        finally:
            process.terminate()
            process.wait(timeout=40)

    per_process = counted_per_process(directory)
    assert len(per_process) >= 2, per_process
    assert sum(per_process.values()) == posted
    for samples in scrapes:
        assert value(samples, "leaddist_leads_total", outcome="allocated") == posted
        assert value(samples, "leaddist_allocation_seconds_count") == posted
        # --background 1: one worker for drains, one for deliveries
        assert value(samples, "leaddist_delivery_workers") == 1
    assert process.returncode == 0, log.read_text()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
