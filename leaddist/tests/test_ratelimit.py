"""Intake rate limits: per API key and per client address, 429 with Retry-After."""

from __future__ import annotations

import json
import socket
import threading

import pytest
from django.test import Client, RequestFactory

from allocation.models import Lead
from credentials.models import ApiKey
from credentials.services import create_api_key
from intake.tests.support import LEAD, post_lead, stored_state
from leaddist.http import ratelimit, redis_client
from leaddist.http.ratelimit import Rate, RateLimited, client_ip, exceeded, hit, parse_rate


@pytest.fixture
def api_key(db):
    return create_api_key(name="acme")[1]


def lead(n):
    return {**LEAD, "phone": f"+1555020{n:04d}"}


def form_post(client, n, **extra):
    return client.post("/request-service", {**lead(n), "service": "1"}, **extra)


# --- Per API key ----------------------------------------------------------------------------


def test_key_past_its_limit_gets_429_with_retry_after_and_nothing_changes(
    client, seeded, settings, api_key
):
    settings.RATE_LIMIT_PER_KEY = "2/m"
    accepted = [post_lead(client, lead(n), key=api_key).status_code for n in range(2)]
    before = stored_state()

    response = post_lead(client, lead(3), key=api_key)

    assert accepted == [201, 201]
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 60
    assert stored_state() == before
    assert Lead.objects.count() == 2


def test_limit_is_per_key_and_shared_by_the_alias(client, seeded, settings, api_key):
    settings.RATE_LIMIT_PER_KEY = "1/m"
    other = create_api_key(name="other")[1]

    first = post_lead(client, lead(1), key=api_key, path="/api/request-service")
    second = post_lead(client, lead(2), key=api_key, path="/api/leads")
    other_key = post_lead(client, lead(3), key=other)

    assert [first.status_code, second.status_code, other_key.status_code] == [201, 429, 201]


def test_rejected_requests_count_against_the_limit(client, seeded, settings, api_key):
    settings.RATE_LIMIT_PER_KEY = "2/m"
    post_lead(client, {"name": "no phone"}, key=api_key)
    post_lead(client, "not json", key=api_key)

    response = post_lead(client, lead(1), key=api_key)

    assert response.status_code == 429
    assert Lead.objects.count() == 0


def test_credential_is_checked_before_the_rate_limit(client, seeded, settings, api_key):
    settings.RATE_LIMIT_PER_KEY = "1/m"
    post_lead(client, lead(1), key=api_key)

    wrong_key = post_lead(client, lead(2), key="ld_wrong")

    assert wrong_key.status_code == 401


def test_rate_limit_is_checked_before_the_media_type(client, seeded, settings, api_key):
    settings.RATE_LIMIT_PER_KEY = "1/m"
    post_lead(client, lead(1), key=api_key)

    response = post_lead(client, "x", key=api_key, content_type="text/plain")

    assert response.status_code == 429


def test_zero_disables_the_limit(client, seeded, settings, api_key):
    settings.RATE_LIMIT_PER_KEY = "0"

    statuses = {post_lead(client, lead(n), key=api_key).status_code for n in range(5)}

    assert statuses == {201}


def test_staff_sessions_are_not_limited(admin_client, seeded, settings):
    settings.RATE_LIMIT_PER_KEY = settings.RATE_LIMIT_PER_IP = "1/m"

    statuses = [post_lead(admin_client, lead(n)).status_code for n in range(3)]

    assert statuses == [201, 201, 201]


# --- Per client address (the public form) ---------------------------------------------------


def test_form_past_the_address_limit_gets_429_and_stores_nothing(client, seeded, settings):
    settings.RATE_LIMIT_PER_IP = "1/m"
    first = form_post(client, 1)
    before = stored_state()

    response = form_post(client, 2)

    assert first.status_code == 200
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 60
    assert "too many requests" in response.content.decode()
    assert stored_state() == before


def test_other_addresses_have_their_own_limit(client, seeded, settings):
    settings.RATE_LIMIT_PER_IP = "1/m"
    form_post(client, 1, REMOTE_ADDR="192.0.2.1")

    response = form_post(client, 2, REMOTE_ADDR="192.0.2.2")

    assert response.status_code == 200


def test_forwarded_for_is_ignored_without_a_trusted_proxy(client, seeded, settings):
    settings.RATE_LIMIT_PER_IP = "1/m"
    form_post(client, 1, HTTP_X_FORWARDED_FOR="198.51.100.1")

    response = form_post(client, 2, HTTP_X_FORWARDED_FOR="198.51.100.2")

    assert response.status_code == 429


@pytest.mark.parametrize(
    ("proxies", "forwarded", "expected"),
    [
        (0, "198.51.100.7", "10.0.0.1"),
        (1, "198.51.100.7", "198.51.100.7"),
        (1, "203.0.113.9, 198.51.100.7", "198.51.100.7"),  # the client forged the first hop
        (2, "203.0.113.9, 198.51.100.7, 10.0.0.2", "198.51.100.7"),
        (2, "198.51.100.7", "10.0.0.1"),  # fewer hops than proxies: not through them
        (1, "", "10.0.0.1"),
    ],
)
def test_client_address_comes_from_trusted_hops_only(settings, proxies, forwarded, expected):
    settings.TRUSTED_PROXY_COUNT = proxies
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=forwarded)

    assert client_ip(request) == expected


def test_form_never_counts_against_an_api_key(seeded, settings, api_key):
    settings.RATE_LIMIT_PER_IP = "1/m"
    settings.RATE_LIMIT_PER_KEY = "5/m"
    form_post(Client(), 1)

    response = post_lead(Client(), lead(2), key=api_key)

    assert response.status_code == 201


# --- The counter ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rate"),
    [("0", None), ("120/m", Rate(120, 60)), ("5/s", Rate(5, 1)), ("1000/h", Rate(1000, 3600))],
)
def test_rates_are_parsed(value, rate):
    assert parse_rate(value) == rate


def test_window_resets_at_its_end_and_retry_after_counts_down_to_it():
    rate = Rate(1, 60)
    hit("test:a", rate, now=120.0)
    with pytest.raises(RateLimited) as limited:
        hit("test:a", rate, now=135.5)

    hit("test:a", rate, now=180.0)

    assert limited.value.retry_after == 45


@pytest.mark.concurrency
def test_concurrent_requests_never_exceed_the_limit():
    rate = Rate(5, 60)
    passed, barrier = [], threading.Barrier(20)

    def attempt():
        barrier.wait()
        try:
            hit("test:burst", rate, now=120.0)  # one window, however long the threads take
        except RateLimited:
            return
        passed.append(1)

    threads = [threading.Thread(target=attempt) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(passed) == 5


def test_429_body_is_the_error_shape(client, seeded, settings, api_key):
    settings.RATE_LIMIT_PER_KEY = "1/h"
    post_lead(client, lead(1), key=api_key)

    response = post_lead(client, lead(2), key=api_key)

    assert response["Content-Type"] == "application/json"
    assert set(json.loads(response.content)["error"]) == {"code", "message"}
    assert int(response["Retry-After"]) <= 3600


class SilentRedis:
    """A port that accepts connections and never answers: Redis hung, the worst way for it to
    be unreachable (a refused connection fails at once). It records each connection, and how
    it ended: the client hung up (it gave up on its own timeout), or still open after 30 s."""

    GIVE_UP_SECONDS = 30

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.server.getsockname()[1]}/0"
        self.endings: list[str] = []
        self._handlers: list[threading.Thread] = []
        self._sentinel: tuple | None = None
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            conn, peer = self.server.accept()
            if peer == self._sentinel:
                conn.close()
                return
            handler = threading.Thread(target=self._hold, args=(conn,), daemon=True)
            self._handlers.append(handler)
            handler.start()

    def _hold(self, conn: socket.socket) -> None:
        conn.settimeout(self.GIVE_UP_SECONDS)
        try:
            while conn.recv(4096):
                pass  # read the commands, answer none
            self.endings.append("client hung up")
        except TimeoutError:
            self.endings.append(f"still open after {self.GIVE_UP_SECONDS} s")
        finally:
            conn.close()

    def finish(self) -> list[str]:
        """How every connection made so far ended. A last connection of our own queues behind
        them (accepts are in order), so none still waiting to be accepted is missed."""
        with socket.socket() as sentinel:
            sentinel.bind(("127.0.0.1", 0))
            self._sentinel = sentinel.getsockname()
            sentinel.connect(self.server.getsockname())
            self._acceptor.join(self.GIVE_UP_SECONDS)
        for handler in self._handlers:
            handler.join(self.GIVE_UP_SECONDS + 5)
        self.server.close()
        return sorted(self.endings)


def test_an_unreachable_redis_costs_intake_one_timeout_and_limits_per_process(
    client, seeded, settings, api_key, caplog, monkeypatch
):
    """What Redis being away may cost intake: one call, ended by the client's own
    REDIS_TIMEOUT_SECONDS and not retried, then nothing while the breaker is open (here longer
    than the test). Counted at the silent port, so load cannot move it; a request that waited
    on Redis each time, or retried a timeout, makes more than one connection."""
    settings.RATE_LIMIT_PER_KEY = "2/m"
    silent = SilentRedis()
    settings.REDIS_URL = silent.url
    monkeypatch.setattr(redis_client.breaker, "seconds", 600.0)

    statuses = [post_lead(client, lead(n), key=api_key).status_code for n in range(3)]
    endings = silent.finish()

    assert statuses == [201, 201, 429]  # still limited, by this process's own count
    assert endings == ["client hung up"]  # one try, given up by the client, never again
    assert "Redis unavailable" in caplog.text


def test_a_refused_redis_connection_limits_per_process(client, seeded, settings, api_key, caplog):
    settings.RATE_LIMIT_PER_KEY = "2/m"
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1

    statuses = [post_lead(client, lead(n), key=api_key).status_code for n in range(3)]

    assert statuses == [201, 201, 429]
    assert "Redis unavailable" in caplog.text


def test_processes_share_their_windows_through_redis(settings, redis_url):
    settings.REDIS_URL = redis_url
    redis_client.sync_client().flushdb()
    rate = Rate(3, 60)
    for _ in range(3):
        hit("test:shared", rate)
    ratelimit.counters.clear()  # another process would not have these counts

    with pytest.raises(RateLimited):
        hit("test:shared", rate)


def test_each_key_can_have_its_own_limit(client, seeded, settings):
    settings.RATE_LIMIT_PER_KEY = "1/m"
    bulk, raw_bulk = create_api_key(name="marketplace")
    ApiKey.objects.filter(pk=bulk.pk).update(rate_limit="3/m")
    unlimited, raw_unlimited = create_api_key(name="trusted")
    ApiKey.objects.filter(pk=unlimited.pk).update(rate_limit="0")

    bulk_statuses = [post_lead(client, lead(n), key=raw_bulk).status_code for n in range(4)]
    free_statuses = [
        post_lead(client, lead(10 + n), key=raw_unlimited).status_code for n in range(5)
    ]

    assert bulk_statuses == [201, 201, 201, 429]
    assert set(free_statuses) == {201}


def test_processes_exchange_counts_with_redis_in_batches(settings, redis_url, monkeypatch):
    settings.REDIS_URL = redis_url
    redis_client.sync_client().flushdb()
    exchanges = []
    real = ratelimit.Counters._exchange

    def counted(client, key, amount, ttl):
        exchanges.append(amount)
        return real(client, key, amount, ttl)

    monkeypatch.setattr(ratelimit.Counters, "_exchange", staticmethod(counted))
    rate = Rate(1000, 60)

    for _ in range(200):
        hit("test:batched", rate, now=120.0)

    assert sum(exchanges) <= 200
    assert len(exchanges) <= 3  # a tenth of the limit (100) per exchange, not one per request


def test_all_processes_together_overshoot_by_at_most_a_tenth_of_the_limit_each(settings, redis_url):
    settings.REDIS_URL = redis_url
    redis_client.sync_client().flushdb()
    rate = Rate(100, 60)
    processes = [ratelimit.Counters(), ratelimit.Counters()]
    passed = 0

    for n in range(300):
        counters = processes[n % 2]
        count = counters.count("ratelimit:test:two", limit=rate.count, ttl=61, now=120.0 + n / 1e4)
        passed += count <= rate.count

    assert rate.count <= passed <= rate.count + 2 * rate.count // 10


def test_exceeded_reads_a_window_without_counting(settings):
    rate = Rate(2, 60)

    assert exceeded("test:peek", rate) is None
    assert exceeded("test:peek", rate) is None  # reading counted nothing
    hit("test:peek", rate)
    assert exceeded("test:peek", rate) is None
    hit("test:peek", rate)

    limited = exceeded("test:peek", rate)
    assert isinstance(limited, RateLimited)
    assert 1 <= limited.retry_after <= 60
    assert exceeded("test:peek", None) is None


def test_exceeded_sees_the_counts_of_other_processes_through_redis(settings, redis_url):
    settings.REDIS_URL = redis_url
    redis_client.sync_client().flushdb()
    rate = Rate(3, 60)
    for _ in range(3):
        hit("test:peek-shared", rate)
    ratelimit.counters.clear()  # another process would not have these counts

    assert isinstance(exceeded("test:peek-shared", rate), RateLimited)
