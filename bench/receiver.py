"""The benchmarks' webhook receiver: stands in for the providers' servers, which run elsewhere.

Run: .venv/bin/python bench/receiver.py HANG_SECONDS [--slow SECONDS] [--record FILE]

One process, asyncio, HTTP/1.1 with keep-alive: three listeners on 127.0.0.1 (printed as
"FAST_PORT HANG_PORT SLOW_PORT" on the first line of stdout), the first answering 200 at once,
the second after HANG_SECONDS, the third after --slow seconds (default 1). With --record, every
request's arrival (Unix time), its webhook-id and its path are written to FILE, one per line,
when the process is terminated. As cheap as an HTTP server gets in Python: it shares the
benchmark's two cores with the server under test, and the benchmarks report its CPU apart.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
RECEIPTS: list[tuple[float, bytes, bytes]] = []


class Answer(asyncio.Protocol):
    """Reads each request (head and Content-Length body), answers 200 after ``delay``."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (head_end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            webhook_id = b""
            lines = self.buffer[:head_end].split(b"\r\n")
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"webhook-id":
                    webhook_id = value.strip()
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            path = lines[0].split(b" ")[1] if b" " in lines[0] else b""
            RECEIPTS.append((time.time(), webhook_id, path))
            self.buffer = self.buffer[end:]
            if self.delay:
                asyncio.get_running_loop().call_later(self.delay, self.answer)
            else:
                self.answer()

    def answer(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(ANSWER)


async def main(hang_seconds: float, slow_seconds: float, record: str | None) -> None:
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(lambda d=delay: Answer(d), "127.0.0.1", 0, backlog=1024)
        for delay in (0.0, hang_seconds, slow_seconds)
    ]
    print(*(server.sockets[0].getsockname()[1] for server in servers), flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()  # until the benchmark terminates this process
    if record:
        with open(record, "w") as out:
            for at, webhook_id, path in RECEIPTS:
                out.write(f"{at:.6f} {webhook_id.decode() or '-'} {path.decode() or '-'}\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("hang_seconds", type=float)
    parser.add_argument("--slow", type=float, default=1.0)
    parser.add_argument("--record")
    args = parser.parse_args()
    asyncio.run(main(args.hang_seconds, args.slow, args.record))
