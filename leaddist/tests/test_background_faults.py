"""The background worker (drains, housekeeping) under database faults, as production runs it: a
process of its own (leaddist.serve's background command) on the test database, its connections
terminated by PostgreSQL, and the outcome read from the database.

- A drain started right after its connections were terminated succeeds.
- A drain that fails (here: a lock it may not wait for) runs again within seconds.
- Connections terminated again and again for seconds do not stop the worker, and it drains
  within seconds once the kills stop.
- PostgreSQL unreachable for seconds (a proxy between them cuts every connection and refuses
  new ones): the worker waits, says so once, and drains within seconds of its return.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from allocation.models import Lead
from allocation.services import LeadInput, submit_lead
from allocation.tasks import drain_waiting_leads
from leaddist import serve
from leaddist.tests.asgi_server import database_url_for_tests, wait_for_disconnect
from leaddist.tests.test_faults import terminate_backends
from providers.models import Provider

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency]


@contextmanager
def background_worker(database_url: str = "", **environment: str) -> Iterator[SimpleNamespace]:
    """The background worker, started as leaddist.serve starts it; stopped on exit."""
    name = f"leaddist-test-background-{os.getpid()}"
    env = os.environ | {
        "DATABASE_URL": database_url or database_url_for_tests(name),
        "DEBUG": "true",
        "LOG_LEVEL": "WARNING",
        **environment,
    }
    with tempfile.TemporaryDirectory() as directory:
        log = Path(directory) / "worker.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                serve.background_command(),
                cwd=settings.BASE_DIR,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        worker = SimpleNamespace(
            process=process, name=name, output=lambda: log.read_text(errors="replace")
        )
        try:
            yield worker
        finally:
            if process.poll() is None:
                process.terminate()
            process.wait(timeout=40)
            wait_for_disconnect(name)


def wait_until(condition: Callable[[], bool], *, seconds: float, what: str, worker) -> float:
    """Poll ``condition`` until it holds; return how long that took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"{what}:\n{worker.output()}"
        assert worker.process.poll() is None, f"the worker exited:\n{worker.output()}"
        time.sleep(0.05)
    return time.monotonic() - started


def drains() -> list[tuple[str, int]]:
    """(status, attempts) of every drain_waiting_leads job, oldest first (procrastinate's API)."""
    from procrastinate.contrib.django import app

    jobs = sorted(app.job_manager.list_jobs(task="drain_waiting_leads"), key=lambda job: job.id)
    return [(job.status, job.attempts) for job in jobs]


def waiting_leads(count: int) -> None:
    """``count`` leads left waiting (no provider had quota), then quota for all of them back,
    without the drain that adding capacity would start."""
    Provider.objects.update(remaining_quota=0)
    for n in range(count):
        submit_lead(LeadInput(service_id=1, name="Ada", phone=f"+1555070{n:04d}", city="Paris"))
    Provider.objects.update(remaining_quota=10)


def none_waiting() -> bool:
    return not Lead.objects.waiting().exists()


def warmed_up(worker) -> None:
    """A first drain has run: the worker is up, and its pools hold connections."""
    drain_waiting_leads.defer()
    wait_until(
        lambda: drains() == [("succeeded", 1)], seconds=60, what="the first drain", worker=worker
    )


def test_a_drain_right_after_the_workers_connections_were_killed_succeeds(seeded_tx, jobs):
    with background_worker() as worker:
        warmed_up(worker)
        waiting_leads(3)
        killed = terminate_backends(worker.name)

        drain_waiting_leads.defer()
        took = wait_until(none_waiting, seconds=10, what="the leads drained", worker=worker)

    # Succeeded within seconds, at its first attempt or (a connection lost in flight) a retry.
    assert killed >= 2, killed
    assert [status for status, _ in drains()] == ["succeeded", "succeeded"]
    assert Lead.objects.filter(status="allocated").count() == 3
    print(f"\ndrained {took:.2f} s after the kill, attempts {drains()[-1][1]}")


def test_a_drain_that_fails_runs_again_within_seconds(seeded_tx, jobs):
    with background_worker(DB_LOCK_TIMEOUT_MS="100") as worker:
        warmed_up(worker)
        waiting_leads(2)
        blocker = psycopg.connect(database_url_for_tests("leaddist-test-blocker"))
        try:
            # The drain's first read waits for this lock, past its lock_timeout: it fails.
            blocker.execute(f"LOCK TABLE {Lead._meta.db_table} IN ACCESS EXCLUSIVE MODE")
            drain_waiting_leads.defer()
            wait_until(
                lambda: drains()[-1][1] >= 1, seconds=10, what="the drain failing", worker=worker
            )
            failed = drains()[-1]
        finally:
            blocker.close()  # the lock goes with it
        took = wait_until(none_waiting, seconds=10, what="the retried drain", worker=worker)

    assert failed == ("todo", 1)  # failed once, and scheduled again
    assert drains()[-1] == ("succeeded", 2)
    print(f"\nthe retried drain finished {took:.2f} s after the lock was released")


def test_connections_killed_again_and_again_never_stop_the_worker(seeded_tx, jobs):
    with background_worker() as worker:
        warmed_up(worker)
        kills = 0
        stop_at = time.monotonic() + 3
        while time.monotonic() < stop_at:
            kills += terminate_backends(worker.name)
            time.sleep(0.05)
        waiting_leads(3)

        drain_waiting_leads.defer()
        took = wait_until(none_waiting, seconds=10, what="a drain after the kills", worker=worker)
        alive = worker.process.poll() is None

    assert kills >= 10, kills
    assert alive, worker.output()
    assert drains()[-1][0] == "succeeded"
    print(f"\n{kills} connections killed in 3 s; drained {took:.2f} s after the last kill")


class Outage:
    """A proxy in front of PostgreSQL (TCP, or the embedded server's Unix socket) that can cut
    every connection and refuse new ones (PostgreSQL unreachable), then accept them again."""

    def __init__(self, listen: str | tuple[str, int], upstream: str | tuple[str, int]) -> None:
        self.family = socket.AF_UNIX if isinstance(upstream, str) else socket.AF_INET
        self.address = listen
        self.upstream = upstream
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.start()

    def start(self) -> None:
        listener = socket.socket(self.family)
        if self.family == socket.AF_UNIX:
            with suppress(FileNotFoundError):
                os.unlink(self.address)
        else:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(self.address)
        listener.listen(64)
        self.address = listener.getsockname()  # the port chosen, for TCP
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: the outage began
            try:
                server = socket.socket(self.family)
                server.connect(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        for end in (source, target):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def begin(self) -> None:
        assert self.listener is not None
        self.listener.close()
        with self.lock:
            for end in self.sockets:
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
            self.sockets.clear()

    def end(self) -> None:
        self.start()


def proxied(directory: str) -> tuple[Outage, str]:
    """A proxy to the test database, and the DATABASE_URL that goes through it."""
    db = connection.settings_dict
    host = str(db.get("HOST") or db["OPTIONS"].get("host") or "127.0.0.1")
    port = int(db.get("PORT") or db["OPTIONS"].get("port") or 5432)
    direct = database_url_for_tests(f"leaddist-test-background-{os.getpid()}")
    if host.startswith("/"):  # the embedded PostgreSQL: a Unix socket in that directory
        name = f".s.PGSQL.{port}"
        proxy = Outage(os.path.join(directory, name), os.path.join(host, name))
        through = direct.replace(
            f"host={quote(host, safe='')}", f"host={quote(directory, safe='')}", 1
        )
    else:
        proxy = Outage(("127.0.0.1", 0), (host, port))
        through = direct.replace(f"{host}:{port}", f"127.0.0.1:{proxy.address[1]}", 1)
    assert through != direct
    return proxy, through


def test_the_worker_waits_out_an_unreachable_database_and_says_so_once(seeded_tx, jobs, tmp_path):
    proxy, through_proxy = proxied(str(tmp_path))

    # An outage shorter than DB_POOL_TIMEOUT is ridden out by waiting for a connection; with
    # 1 s, the worker's next poll for jobs (each second) fails for sure within the 3 s.
    with background_worker(through_proxy, DB_POOL_TIMEOUT="1") as worker:
        warmed_up(worker)
        proxy.begin()
        time.sleep(3)  # PostgreSQL unreachable for 3 s
        alive_during = worker.process.poll() is None
        waiting_leads(3)
        drain_waiting_leads.defer()
        proxy.end()
        took = wait_until(none_waiting, seconds=15, what="a drain after the outage", worker=worker)
        output = worker.output()

    assert alive_during, output
    assert output.count("background worker stopped on a database error") == 1, output
    assert output.count("background worker started again") == 1, output
    assert drains()[-1][0] == "succeeded"
    print(f"\ndrained {took:.2f} s after the database came back")
