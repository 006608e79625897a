"""A real ASGI server on the committed test database, for tests that need HTTP or streaming.

pytest-django's live_server is WSGI, which cannot stream SSE. Tests that use these fixtures
run with committed data (transactional_db): the server is another process with its own
connections.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from argparse import Namespace
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from django.conf import settings
from django.db import connection

from leaddist.serve import server_command

BASE_DIR = Path(settings.BASE_DIR)
ARTIFACTS = BASE_DIR / "test-artifacts"
STARTUP_SECONDS = 60


@dataclass(frozen=True)
class AsgiServer:
    url: str
    log: Path
    process: subprocess.Popen  # the supervisor, leader of its own process group

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """Stop at once, workers and all, as a crash or a lost host would: open connections
        are cut, nothing is finished."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def database_url_for_tests(application_name: str) -> str:
    """A DATABASE_URL for the test database this process is using (TCP or Unix socket)."""
    db = connection.settings_dict
    user = quote(db.get("USER") or "", safe="")
    password = quote(str(db.get("PASSWORD") or ""), safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    name = quote(db["NAME"], safe="")
    options = db.get("OPTIONS", {})
    host = db.get("HOST") or options.get("host") or ""
    port = str(db.get("PORT") or options.get("port") or "")
    if host.startswith("/"):
        # A socket directory (the embedded server): psycopg takes it as the host option.
        query = f"?host={quote(host, safe='')}" + (f"&port={port}" if port else "")
        return f"postgres://{auth}/{name}{query}&application_name={application_name}"
    address = f"{host or 'localhost'}{':' + port if port else ''}"
    return f"postgres://{auth}{address}/{name}?application_name={application_name}"


def wait_for_disconnect(application_name: str) -> None:
    """Until the server's sessions are gone: the test database cannot be flushed or dropped
    while PostgreSQL still finishes them."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                [application_name],
            )
            if cursor.fetchone()[0] == 0:
                return
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def run_server(
    log: Path, *, workers: int = 1, port: int | None = None, **environment: str
) -> Iterator[AsgiServer]:
    """Serve leaddist.asgi on ``port`` (default: a free one) until the block ends.

    It runs the server exactly as ``python -m leaddist.serve`` does (one process, or
    ``workers`` of them on one port), but with DEBUG on, so that static files come from the
    source tree. A server started again on the port of one that was killed is, for its
    clients, the same server come back.
    """
    port = port or free_port()
    application_name = f"leaddist-test-server-{port}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_tests(application_name),
        "DEBUG": "1",  # static files through WhiteNoise's finders, no collectstatic needed
        "LOG_LEVEL": "WARNING",
        **environment,
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            server_command(Namespace(host="127.0.0.1", port=port, workers=workers)),
            cwd=BASE_DIR,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so a test can kill it, workers and all, as a group
        )
        server = AsgiServer(url=f"http://127.0.0.1:{port}", log=log, process=process)
        try:
            _wait_until_up(server, process)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            wait_for_disconnect(application_name)


def _wait_until_up(server: AsgiServer, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{server.output()}")
        try:
            if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the server did not answer within {STARTUP_SECONDS}s:\n{server.output()}")


@pytest.fixture
def asgi_server_factory(transactional_db, tmp_path) -> Iterator[Callable[..., AsgiServer]]:
    """Start servers with extra environment; all are stopped after the test."""
    stack: list = []

    def start(*, workers: int = 1, port: int | None = None, **environment: str) -> AsgiServer:
        log = tmp_path / f"server-{len(stack)}.log"
        manager = run_server(log, workers=workers, port=port, **environment)
        server = manager.__enter__()
        stack.append(manager)
        return server

    yield start
    for manager in reversed(stack):
        manager.__exit__(None, None, None)
