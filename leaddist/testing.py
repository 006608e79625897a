"""Helpers for tests that order threads and processes by what the database shows, not sleeps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from django.db import connection


def lock_waiters() -> int:
    """How many other sessions of this database are waiting on a lock right now."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # a fresh view, even in a transaction
        cursor.execute(
            """
            SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND wait_event_type = 'Lock'
            """
        )
        return cursor.fetchone()[0]


def wait_for_lock_waiters(count: int = 1, *, timeout: float = 30) -> None:
    """Return once ``count`` other sessions wait on a lock; fail after ``timeout`` seconds.

    The timeout is generous so that a busy machine, which may take seconds to schedule the
    waiting thread, cannot break a test: a passing test never waits for it.
    """
    deadline = time.monotonic() + timeout
    while lock_waiters() < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {count} session(s) waiting on a lock after {timeout}s")
        time.sleep(0.005)


def storm(jobs: Iterable[Callable[[], object]], threads: int = 8) -> list[Exception]:
    """Run the callables from ``jobs`` on ``threads`` threads started together (a barrier), each
    on its own connection; return the exceptions they raised."""
    errors: list[Exception] = []
    lock = threading.Lock()
    queue = list(jobs)
    barrier = threading.Barrier(threads)

    def worker() -> None:
        barrier.wait()
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    job = queue.pop()
                try:
                    job()
                except Exception as exc:
                    with lock:
                        errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return errors
