"""SSE fan-out: a burst of leads while many dashboards follow GET /api/events.

Run: .venv/bin/python bench/bench_sse.py [--streams 500] [--leads 300] [--concurrency 32]
         [--server serve] [--workers 2] [--quiet 3] [--max-wait 300]

It makes a throw-away database (<DATABASE_URL's name>_sse, default leaddist_bench_sse, dropped
and recreated each run: migrated, seeded, ample quotas), an API key, and a staff user with a
session made directly in the session store (its key is the sessionid cookie). It starts the
server (an entry of SERVERS in bench/common.py, default serve with 2 workers and REDIS_URL,
DEBUG off) and then:

1. a burst of --leads POST /api/leads at --concurrency with no stream open (the baseline);
2. opens --streams streams with the staff cookie (raw asyncio sockets in this process, the
   file-descriptor limit raised) and waits until each has received `event: stream-open`;
3. the same burst again, while every stream records when each `event: lead.allocated` (its
   data's lead_id) arrives; streams stay open until no event came for --quiet seconds.

The bursts run in a child process (an asyncio client on raw sockets, keep-alive connections),
which records the monotonic time each 201 arrived; the clock is shared by the processes of the
machine. Latency is event arrival on a stream minus the 201's arrival, over every (stream,
allocated lead) pair (negative when the event beats the response). Reported: streams
connected, events expected (allocated leads x streams) and received, duplicates (an event a
stream got more than once), latency p50/p99/max, how long events kept arriving after the
burst, intake leads/s and server/PostgreSQL CPU per lead with the streams open and without,
and their ratio. Then the invariants of bench/common.py; exit 1 if one fails or an event is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Coroutine
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import common

T = TypeVar("T")
# A lead.allocated event's lead id, found in a run of complete events in one pass.
ALLOCATED = re.compile(rb'event: lead\.allocated\n(?:id: [^\n]*\n)?data: [^\n]*"lead_id":\s*(\d+)')


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# --- A minimal HTTP/1.1 client on asyncio streams -----------------------------------------
class ChunkedDecoder:
    """Incremental decoder of a chunked transfer-encoded body."""

    def __init__(self) -> None:
        self.buffer = b""
        self.remaining = 0  # bytes left in the current chunk, then its CRLF
        self.trailer = False
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = []
        while self.buffer and not self.finished:
            if self.remaining:
                piece = self.buffer[: self.remaining]
                out.append(piece)
                self.remaining -= len(piece)
                self.buffer = self.buffer[len(piece) :]
                if not self.remaining:
                    self.trailer = True
            elif self.trailer:
                if len(self.buffer) < 2:
                    break
                self.buffer = self.buffer[2:]
                self.trailer = False
            else:
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    break
                size = int(self.buffer[:end].split(b";")[0], 16)
                self.buffer = self.buffer[end + 2 :]
                if size == 0:
                    self.finished = True
                self.remaining = size
        return b"".join(out)


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if "chunked" in headers.get("transfer-encoding", "").lower():
        decoder, out = ChunkedDecoder(), []
        while not decoder.finished:
            data = await reader.read(65536)
            if not data:
                break
            out.append(decoder.feed(data))
        return b"".join(out)
    return await reader.read()


# --- The intake burst, in a child process ---------------------------------------------------
def intake_burst(port: int, key: str, leads: int, concurrency: int, prefix: int) -> dict:
    """POST ``leads`` leads at ``concurrency``; each result is (status, lead id, 201 time)."""
    return run_async(_burst(port, key, leads, concurrency, prefix))


async def _burst(port: int, key: str, leads: int, concurrency: int, prefix: int) -> dict:
    numbers = iter(range(leads))
    results: list[tuple[int, int | None, float]] = []

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for n in numbers:
                body = json.dumps(
                    {
                        "name": "Bench",
                        "phone": f"+1{prefix:03d}{n:08d}",
                        "city": "Benchville",
                        "service": n % 3 + 1,
                    }
                ).encode()
                writer.write(
                    f"POST /api/leads HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                status, headers = await read_head(reader)
                payload = await read_body(reader, headers)
                done = time.monotonic()
                lead_id = None
                if status in (201, 202):
                    lead_id = json.loads(payload)["id"]
                results.append((status, lead_id, done))
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {"results": results, "started": started, "ended": time.monotonic()}


# --- The streams ----------------------------------------------------------------------------
@dataclass
class Stream:
    status: int | None = None
    opened: float | None = None
    error: str | None = None
    events: dict[int, float] = field(default_factory=dict)
    duplicates: int = 0


@dataclass
class Streams:
    port: int
    cookie: str
    items: list[Stream] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    last_event: float = 0.0
    opened: int = 0
    all_open: asyncio.Event = field(default_factory=asyncio.Event)

    def open(self, count: int) -> None:
        for _ in range(count):
            stream = Stream()
            self.items.append(stream)
            self.tasks.append(asyncio.create_task(self.follow(stream)))

    def _closed(self) -> None:
        if all(s.opened or s.error for s in self.items):
            self.all_open.set()

    async def follow(self, stream: Stream) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=2**20)
            self.writers.append(writer)
            writer.write(
                f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Cookie: sessionid={self.cookie}\r\nAccept: text/event-stream\r\n\r\n".encode()
            )
            stream.status, headers = await read_head(reader)
            if stream.status != 200:
                stream.error = f"HTTP {stream.status}"
                self._closed()
                return
            decoder = (
                ChunkedDecoder()
                if "chunked" in headers.get("transfer-encoding", "").lower()
                else None
            )
            buffer = b""
            while True:
                data = await reader.read(65536)
                if not data:
                    stream.error = stream.error or "closed by the server"
                    break
                now = time.monotonic()
                buffer += decoder.feed(data) if decoder else data
                # Whole events only: the bytes after the last blank line wait for the rest.
                cut = buffer.rfind(b"\n\n")
                if cut >= 0:
                    self.handle(stream, buffer[:cut], now)
                    buffer = buffer[cut + 2 :]
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            stream.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._closed()

    def handle(self, stream: Stream, events: bytes, now: float) -> None:
        """Record the allocated leads in a run of whole events, read at ``now``; one regex
        pass per read keeps this client's CPU small next to the server's."""
        for match in ALLOCATED.finditer(events):
            lead_id = int(match.group(1))
            if lead_id in stream.events:
                stream.duplicates += 1
            else:
                stream.events[lead_id] = now
            self.last_event = now
        if stream.opened is None and b"event: stream-open" in events:
            stream.opened = now
            self.opened += 1
            self._closed()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in self.writers:
            writer.close()


# --- The run --------------------------------------------------------------------------------
async def burst(
    pool: ProcessPoolExecutor,
    server: common.Server,
    db_url: str,
    key: str,
    args: argparse.Namespace,
    prefix: int,
    then: Awaitable[object] | None = None,
) -> dict:
    """One intake burst in the child process, with the CPU it cost until ``then`` is done
    (if given: the fan-out of its events goes on after the last answer)."""
    loop = asyncio.get_running_loop()
    leads_before = common.count_leads(db_url)
    with common.CpuMeter(server.process.pid, common.database_name(db_url)) as cpu:
        result = await loop.run_in_executor(
            pool, intake_burst, server.port, key, args.leads, args.concurrency, prefix
        )
        result["stored"] = common.count_leads(db_url) - leads_before
        if then is not None:
            result["then"] = await then
    result["cpu"] = cpu
    return result


def intake_row(name: str, result: dict) -> list[object]:
    statuses = [status for status, _, _ in result["results"]]
    ok = sum(status in (201, 202) for status in statuses)
    seconds = result["ended"] - result["started"]
    stored = result["stored"] or 1
    result["leads_s"] = ok / seconds if seconds else 0.0
    others = len(statuses) - ok
    return [
        name,
        len(statuses),
        statuses.count(201),
        statuses.count(202),
        others,
        common.fmt(seconds, 2),
        common.fmt(result["leads_s"], 0),
        common.fmt(result["cpu"].server * 1000 / stored, 2),
        common.fmt(result["cpu"].postgres * 1000 / stored, 2),
    ]


async def wait_quiet(streams: Streams, args: argparse.Namespace) -> bool:
    """From now until no event arrived for --quiet seconds; False if --max-wait passed first."""
    since = time.monotonic()
    deadline = since + args.max_wait
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if time.monotonic() - max(streams.last_event, since) >= args.quiet:
            return True
    return False


async def run(args: argparse.Namespace) -> int:
    limit = common.raise_fd_limit(args.streams * 2 + 256)
    if limit < args.streams + 64:
        sys.exit(f"RLIMIT_NOFILE is {limit}: too low for {args.streams} streams.")
    db_url = common.database_url(common.database_name(common.base_database_url()) + "_sse")
    key = common.prepare_app_database(db_url)
    cookie = common.staff_session(db_url)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="leaddist-bench-sse-"))
    spawn = multiprocessing.get_context("spawn")
    failures = 0
    with (
        ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool,
        common.run_server(
            args.server,
            url=db_url,
            workers=args.workers,
            redis_url=args.redis_url,
            log_dir=log_dir,
        ) as server,
    ):
        loop = asyncio.get_running_loop()
        common.log("warm-up burst")
        await loop.run_in_executor(pool, intake_burst, server.port, key, 60, 4, 100)
        common.log(f"burst of {args.leads} leads, no stream open")
        baseline = await burst(pool, server, db_url, key, args, prefix=200)

        common.log(f"opening {args.streams} streams")
        streams = Streams(server.port, cookie)
        started = time.monotonic()
        streams.open(args.streams)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(streams.all_open.wait(), timeout=args.connect_timeout)
        connect_seconds = time.monotonic() - started
        common.log(f"{streams.opened} streams open after {connect_seconds:.1f}s")

        common.log(f"burst of {args.leads} leads, {streams.opened} streams open")
        reader_cpu = time.process_time()
        loaded = await burst(
            pool, server, db_url, key, args, prefix=300, then=wait_quiet(streams, args)
        )
        quiet = loaded["then"]
        reader_cpu = time.process_time() - reader_cpu
        drain = max(streams.last_event - loaded["ended"], 0.0)
        await streams.close()

    open_streams = [s for s in streams.items if s.opened is not None]
    allocated = {lead_id: t for status, lead_id, t in loaded["results"] if status == 201}
    expected = len(allocated) * len(open_streams)
    latencies = []
    duplicates = 0
    for stream in open_streams:
        duplicates += stream.duplicates
        for lead_id, at in stream.events.items():
            if lead_id in allocated:
                latencies.append((at - allocated[lead_id]) * 1000)
    received = len(latencies)
    complete = sum(all(lead in s.events for lead in allocated) for s in open_streams)
    errors = sorted({s.error for s in streams.items if s.error and s.opened is None})
    # Closed before we closed them: the server ended the stream or dropped the connection.
    ended_early = sum(1 for s in open_streams if s.error)

    print(
        common.markdown_table(
            [
                "streams",
                "open",
                "connect s",
                "leads 201",
                "events expected",
                "received",
                "missing",
                "duplicates",
                "streams complete",
                "p50 ms",
                "p99 ms",
                "max ms",
                "events after burst s",
            ],
            [
                [
                    args.streams,
                    len(open_streams),
                    common.fmt(connect_seconds, 1),
                    len(allocated),
                    expected,
                    received,
                    expected - received,
                    duplicates,
                    complete,
                    common.fmt(common.percentile(latencies, 50), 0),
                    common.fmt(common.percentile(latencies, 99), 0),
                    common.fmt(max(latencies) if latencies else None, 0),
                    common.fmt(drain, 1) + ("" if quiet else " (max-wait hit)"),
                ]
            ],
        )
    )
    print()
    rows = [intake_row("no stream", baseline), intake_row(f"{len(open_streams)} streams", loaded)]
    ratio = loaded["leads_s"] / baseline["leads_s"] if baseline["leads_s"] else 0.0
    rows[1].append(f"{ratio:.2f}x")
    rows[0].append("1.00x")
    print(
        common.markdown_table(
            [
                "intake burst",
                "requests",
                "201",
                "202",
                "other",
                "seconds",
                "leads/s",
                "server CPU ms/lead",
                "PG CPU ms/lead",
                "vs no stream",
            ],
            rows,
        )
    )
    print(
        f"\nServer: {args.server}, {server.workers} workers; concurrency {args.concurrency}; "
        f"stream reader (this process) CPU during the burst: {reader_cpu:.1f} s; "
        f"server logs: {log_dir}"
    )
    if errors:
        print(f"Streams that did not open: {'; '.join(errors)[:500]}")
    if ended_early:
        print(f"Streams the server closed before the end: {ended_early}")
    if not open_streams or received < expected:
        failures += 1
        print("FAIL: events missing" if open_streams else "FAIL: no stream opened")
    if not common.report_invariants(common.check_invariants(db_url, "sse")):
        failures += 1
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--leads", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--server", default="serve", choices=list(common.SERVERS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quiet", type=float, default=3.0, help="seconds without an event")
    parser.add_argument("--max-wait", type=float, default=300.0, help="seconds after the burst")
    parser.add_argument("--connect-timeout", type=float, default=120.0)
    parser.add_argument("--redis-url", default=common.DEFAULT_REDIS_URL)
    parser.add_argument("--log-dir", type=Path, help="server logs (default: a temp dir)")
    args = parser.parse_args()
    sys.exit(run_async(run(args)))


if __name__ == "__main__":
    main()
