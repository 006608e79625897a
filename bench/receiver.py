"""The benchmarks' webhook receiver: stands in for the providers' servers, which run elsewhere.

Run: .venv/bin/python bench/receiver.py HANG_SECONDS

One process, asyncio, HTTP/1.1 with keep-alive: two listeners on 127.0.0.1 (printed as
"FAST_PORT HANG_PORT" on the first line of stdout), the first answering 200 at once, the second
after HANG_SECONDS. As cheap as an HTTP server gets in Python: it shares the benchmark's two
cores with the server under test, and bench_http.py reports its CPU apart.
"""

from __future__ import annotations

import asyncio
import sys

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


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
            for line in self.buffer[:head_end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            self.buffer = self.buffer[end:]
            if self.delay:
                asyncio.get_running_loop().call_later(self.delay, self.answer)
            else:
                self.answer()

    def answer(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(ANSWER)


async def main(hang_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    fast = await loop.create_server(lambda: Answer(0.0), "127.0.0.1", 0, backlog=1024)
    hang = await loop.create_server(lambda: Answer(hang_seconds), "127.0.0.1", 0, backlog=1024)
    ports = [server.sockets[0].getsockname()[1] for server in (fast, hang)]
    print(*ports, flush=True)
    await asyncio.Event().wait()  # until the benchmark terminates this process


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1])))
