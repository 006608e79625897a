"""Serve leaddist with several daphne processes sharing one listening socket.

One Python process runs Python on one core at a time (the GIL), so a single daphne process
tops out at one core however many requests it holds. This launcher binds the port once and
starts ``--workers`` daphne processes on that socket (``daphne --fd``); the kernel spreads the
connections between them. All of them share PostgreSQL, whose row locks keep the engine
correct across processes.

    python -m leaddist.serve --host 0.0.0.0 --port 8000 --workers 2

``--workers`` defaults to WEB_CONCURRENCY, else 1. Several workers need REDIS_URL, so that a
live event reaches the dashboards connected to every process (SPEC §6); without it the
launcher refuses to start. It stops all workers on SIGTERM or Ctrl-C, and stops the others
(exiting non-zero) if one dies, so the supervisor can restart the whole set.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

APPLICATION = "leaddist.asgi:application"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY") or 1))
    return parser.parse_args(argv)


def daphne_command(*bind: str) -> list[str]:
    return [sys.executable, "-m", "daphne", *bind, APPLICATION]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workers < 1:
        sys.exit("--workers must be at least 1.")
    if args.workers == 1:
        os.execv(sys.executable, daphne_command("-b", args.host, "-p", str(args.port)))
    if not os.environ.get("REDIS_URL"):
        sys.exit(
            "Several workers need REDIS_URL: without it a live event reaches only the dashboards "
            "connected to the process that sent it. Set REDIS_URL or use --workers 1."
        )

    listener = socket.create_server((args.host, args.port), backlog=1024)
    listener.set_inheritable(True)
    fd = str(listener.fileno())
    workers = [
        subprocess.Popen(daphne_command("--fd", fd), pass_fds=[listener.fileno()])
        for _ in range(args.workers)
    ]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = 0
    while not stopping:
        if any(worker.poll() is not None for worker in workers):
            status = 1
            break
        time.sleep(0.2)
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
    listener.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
