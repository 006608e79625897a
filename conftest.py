"""Shared fixtures. Tests run on real PostgreSQL: the embedded one, or DATABASE_URL."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from providers.models import PoolCursor, Provider, Service
from providers.services import seed_catalogue

# Users, clients and the real ASGI server, for the tests of every app.
pytest_plugins = ["leaddist.tests.fixtures"]


@pytest.fixture(autouse=True, scope="session")
def fast_password_hashing():
    """Passwords hashed with one PBKDF2 iteration in this process (leaddist/tests/hashers.py):
    creating or signing in a user no longer costs 0.35 s of CPU. Tests that set their own
    PASSWORD_HASHERS still do."""
    from django.test import override_settings

    with override_settings(PASSWORD_HASHERS=["leaddist.tests.hashers.FastPBKDF2PasswordHasher"]):
        yield


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """The test database, migrated as usual, then set to commit without waiting for its WAL to
    reach the disk (``synchronous_commit = off``, for every session on it: this process's, and
    the servers' and workers' the tests start). What a commit makes visible, and when, is
    unchanged: only a crash of PostgreSQL itself could lose the last commits, which no test
    does. Each commit then saves a disk flush; the suite commits tens of thousands of times."""
    from django.db import connection

    with django_db_blocker.unblock():
        name = connection.ops.quote_name(connection.settings_dict["NAME"])
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER DATABASE {name} SET synchronous_commit = off")
        # The setting applies to new sessions: none opened before it may stay in the pool.
        connection.close()
        connection.close_pool()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With CI_NO_SKIPS=1 (set by .ci/run) a skipped test fails: in CI every test must run,
    so a route, a browser or a server that went missing cannot pass unnoticed."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI_NO_SKIPS") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"CI_NO_SKIPS=1: a skip is a failure in CI ({reason})"


@pytest.fixture(autouse=True)
def fresh_counters(settings):
    """Each test counts rate limits afresh, in-process: windows never carry over, and a
    REDIS_URL in the environment is never written to (tests that want Redis set it). Nor do
    cached services and API keys outlive the test's data."""
    from credentials.auth import verified_keys
    from leaddist.http import ratelimit, redis_client
    from providers.selectors import active_services

    settings.REDIS_URL = ""
    ratelimit.counters.clear()
    active_services.clear()
    verified_keys.clear()
    redis_client.breaker.succeeded()
    yield
    redis_client.breaker.succeeded()


@dataclass
class Seeded:
    """Handles on SPEC §1's seed catalogue."""

    def service(self, pk: int) -> Service:
        return Service.objects.get(pk=pk)

    def provider(self, pk: int) -> Provider:
        return Provider.objects.get(pk=pk)

    def providers(self, *pks: int):
        return Provider.objects.filter(pk__in=pks)

    def cursor(self, service_id: int) -> int | None:
        return PoolCursor.objects.get(service_id=service_id).position


@pytest.fixture
def seeded(db) -> Seeded:
    seed_catalogue()
    return Seeded()


@pytest.fixture
def seeded_tx(transactional_db) -> Seeded:
    """The seed catalogue, committed, for tests with real threads."""
    seed_catalogue()
    return Seeded()


TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def redis_url() -> str:
    """A reachable Redis (database 15 by default), or a skip: a failure with REQUIRE_REDIS=1,
    as in CI."""
    import redis

    try:
        redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail(f"REQUIRE_REDIS=1 but Redis at {TEST_REDIS_URL} does not answer: {exc}")
        pytest.skip(f"no Redis at {TEST_REDIS_URL}")
    return TEST_REDIS_URL


class Jobs:
    """The procrastinate job queue, emptied for the test (its tables outlive transactional
    tests' flushes), and a worker that runs what is due, as `make worker` would. Through
    procrastinate's own API only (its tables are its own)."""

    @property
    def manager(self):
        from procrastinate.contrib.django import app

        return app.job_manager

    def clear(self) -> None:
        from asgiref.sync import async_to_sync
        from procrastinate.jobs import Status

        for job in self.manager.list_jobs():
            if job.status in (Status.TODO.value, Status.DOING.value):
                async_to_sync(self.manager.finish_job_by_id_async)(
                    job.id, status=Status.FAILED, delete_job=True
                )
        async_to_sync(self.manager.delete_old_jobs)(
            nb_hours=0, include_failed=True, include_cancelled=True, include_aborted=True
        )

    def of(self, task_name: str) -> list[tuple[str, dict]]:
        """(status, args) of the task's jobs, oldest first."""
        jobs = sorted(self.manager.list_jobs(task=task_name), key=lambda job: job.id)
        return [(job.status, job.task_kwargs) for job in jobs]

    def due(self) -> int:
        """Jobs waiting to run now (not those scheduled later)."""
        from django.utils import timezone

        now = timezone.now()
        return sum(
            1
            for job in self.manager.list_jobs(status="todo")
            if job.scheduled_at is None or job.scheduled_at <= now
        )

    def run(self, *, concurrency: int = 1, queues: list[str] | None = None) -> None:
        """Run every job that is due, on the worker's own connections, then return.

        A worker with wait=False stops fetching once the queue is empty, even while a running
        job is about to defer more: so run again until nothing is due, as a waiting worker
        would have.
        """
        from procrastinate.contrib.django import app

        for _ in range(10):
            with app.replace_connector(app.connector.get_worker_connector()):
                app.run_worker(
                    queues=queues,
                    concurrency=concurrency,
                    wait=False,
                    install_signal_handlers=False,
                    listen_notify=False,
                )
            if not self.due():
                return


@pytest.fixture
def jobs(transactional_db) -> Jobs:
    queue = Jobs()
    queue.clear()
    yield queue
    queue.clear()
