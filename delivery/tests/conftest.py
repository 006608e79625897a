"""A real HTTP receiver on 127.0.0.1 for delivery tests, and the settings that let it in."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

# A gated hang answers after this long even if its test never opens the gate (it failed first).
GATE_MAX_SECONDS = 120


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    # The same moment on the wall clock, comparable with what the worker records
    # (Attempt.started_at, ``timezone.now()``): both run in the test's process.
    received_at: datetime


@dataclass
class Receiver:
    """Answers POSTs by script: each path has a list of answers, used in turn, the last one
    repeated. An answer is a status code, ("hang", seconds) to say nothing for that long, or
    ("hang", gate) with a gate from :meth:`gate` to say nothing until the test opens it (then
    200): a hang that lasts exactly as long as the test needs, however slow the machine."""

    port: int = 0
    script: dict[str, list[object]] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    # Requests being answered now, and the most there ever were at once, per path (a request
    # whose client gave up counts until its scripted answer is over).
    active: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    gates: list[threading.Event] = field(default_factory=list)

    def gate(self) -> threading.Event:
        """A gate for ("hang", gate): set it to answer. The receiver opens every gate as it
        closes, so no request is left hanging after its test."""
        gate = threading.Event()
        self.gates.append(gate)
        return gate

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def of(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    def answer_for(self, path: str) -> object:
        answers = self.script.get(path, [200])
        seen = len(self.of(path))
        return answers[min(seen - 1, len(answers) - 1)]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver listens with a backlog of 5: a burst's first attempts, connecting together,
    # would overflow it and some fail with a ReadError (then be retried). Providers' servers
    # accept more than that.
    request_queue_size = 128


@pytest.fixture
def receiver():
    state = Receiver()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                state.requests.append(
                    Received(
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                        time.monotonic(),
                        datetime.now(tz=UTC),
                    )
                )
                answer = state.answer_for(self.path)
                state.active[self.path] = state.active.get(self.path, 0) + 1
                state.peak[self.path] = max(state.peak.get(self.path, 0), state.active[self.path])
            try:
                self.answer(answer)
            finally:
                with lock:
                    state.active[self.path] -= 1

        def answer(self, answer: object) -> None:
            if isinstance(answer, tuple):
                hang = answer[1]
                if isinstance(hang, threading.Event):
                    hang.wait(GATE_MAX_SECONDS)
                else:
                    time.sleep(hang)
                answer = 200
            payload = b"x" * 100_000 if answer == 500 else b"ok"
            try:
                self.send_response(int(answer))
                self.send_header("Content-Length", str(len(payload)))
                if 300 <= int(answer) < 400:
                    self.send_header("Location", "http://169.254.169.254/latest/meta-data")
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    # shutdown() waits up to one poll interval (0.5 s by default) for the loop to notice.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    for gate in state.gates:
        gate.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def local_targets(settings):
    """The receiver on 127.0.0.1 allowed (tests only), and retries due at once."""
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = True
    settings.DELIVERY_RETRY_BASE_SECONDS = 0
    settings.DELIVERY_TIMEOUT_SECONDS = 2
    return settings
