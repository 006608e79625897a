"""Several processes: the launcher, and live events crossing processes through Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from allocation.models import Lead
from allocation.services import create_api_key
from allocation.tests.asgi_server import free_port
from allocation.tests.test_concurrency import assert_invariants
from allocation.tests.test_sse import _open_stream, _read_until, _session_cookie


@pytest.fixture
def staff_user(transactional_db):
    return get_user_model().objects.create_user(username="watcher", password="x", is_staff=True)


def test_several_workers_refuse_to_start_without_redis():
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}

    result = subprocess.run(
        [sys.executable, "-m", "leaddist.serve", "--workers", "2", "--port", str(free_port())],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode != 0
    assert "Several workers need REDIS_URL" in result.stderr


@pytest.mark.django_db(transaction=True)
def test_two_workers_on_one_port_take_a_storm_of_leads_and_keep_the_invariants(
    seeded_tx, asgi_server_factory, redis_url
):
    """210 leads through the real HTTP API, 8 clients at once, two daphne processes, seed
    quotas running out mid-storm: every request answered, and the invariants hold."""
    _, key = create_api_key(name="storm")
    server = asgi_server_factory(workers=2, REDIS_URL=redis_url, RATE_LIMIT_PER_KEY="0")

    def post(n: int) -> int:
        body = {"name": "Ada", "phone": f"+1555{n:07d}", "city": "Paris", "service": n % 3 + 1}
        headers = {"Authorization": f"Bearer {key}"}
        answer = httpx.post(server.url + "/api/leads", json=body, headers=headers, timeout=60)
        return answer.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = Counter(pool.map(post, range(210)))

    assert set(statuses) <= {201, 202}, (statuses, server.output())
    assert Lead.objects.count() == 210
    assert Lead.objects.allocated().count() == statuses[201]
    assert 0 < statuses[201] <= 26  # 80 units of quota, 3 per lead
    assert_invariants()


@pytest.mark.django_db(transaction=True)
def test_an_event_from_one_process_reaches_a_dashboard_on_another(
    seeded_tx, asgi_server_factory, staff_user, redis_url
):
    watched = asgi_server_factory(REDIS_URL=redis_url)
    other = asgi_server_factory(REDIS_URL=redis_url)
    _, key = create_api_key(name="fan-out")
    stream = _open_stream(watched.url, _session_cookie(staff_user))
    try:
        assert b"event: stream-open" in _read_until(stream, b"event: stream-open", seconds=8)

        answer = httpx.post(
            other.url + "/api/leads",
            json={"name": "Ada", "phone": "+15550100100", "city": "Paris", "service": 1},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        lead_id = answer.json()["id"]
        received = _read_until(stream, f'"lead_id": {lead_id}'.encode(), seconds=2)
    finally:
        stream.close()

    assert answer.status_code == 201
    assert b"event: lead.allocated" in received, (watched.output(), other.output())
    assert f'"lead_id": {lead_id}'.encode() in received
