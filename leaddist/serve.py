"""Serve leaddist in production: uvicorn, one worker process per core, DEBUG off.

    python -m leaddist.serve [--host 0.0.0.0] [--port 8000] [--workers N]

This is what `make serve` and the Dockerfile run. ``--port`` defaults to PORT (else 8000),
``--workers`` to WEB_CONCURRENCY (else the machine's cores): one Python process runs Python on
one core at a time, so a core per worker. All workers share PostgreSQL, whose row locks keep
the engine correct across processes and hosts.

Before handing over to uvicorn it loads the production settings, so a missing SECRET_KEY or
WEBHOOK_SECRET (or any other refused setting) stops it with the reason, and it refuses several
workers without REDIS_URL: live events would then reach the other workers' dashboards only at
their next poll, and each worker would count rate limits alone.

uvicorn (uvloop, httptools) was chosen by measurement against granian and daphne; the figures
are in docs/PERFORMANCE.md. Its supervisor restarts a worker that dies. It runs without
lifespan events (Django has none) and without its own X-Forwarded-For handling: which proxy
headers to trust is the app's decision (TRUSTED_PROXY_COUNT), never the server's.
"""

from __future__ import annotations

import argparse
import os
import sys

APPLICATION = "leaddist.asgi:application"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("HOST") or "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WEB_CONCURRENCY") or os.cpu_count() or 1),
    )
    return parser.parse_args(argv)


def refusal(workers: int) -> str | None:
    """Why the production configuration cannot start, or None."""
    if workers < 1:
        return "--workers must be at least 1."
    os.environ["DEBUG"] = "false"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaddist.settings")
    import django
    from django.core.exceptions import ImproperlyConfigured

    try:
        django.setup()
    except ImproperlyConfigured as exc:
        return f"Refusing to start: {exc}"
    from django.conf import settings

    if workers > 1 and not settings.REDIS_URL:
        return (
            "Several workers need REDIS_URL: without it a live event reaches the dashboards of "
            "the other workers only at their next poll, and each worker counts rate limits "
            "alone. Set REDIS_URL, or use --workers 1."
        )
    return None


def server_command(args: argparse.Namespace) -> list[str]:
    return [
        *(sys.executable, "-m", "uvicorn", APPLICATION),
        *("--host", args.host, "--port", str(args.port), "--workers", str(args.workers)),
        *("--loop", "uvloop", "--http", "httptools", "--lifespan", "off"),
        *("--no-proxy-headers", "--no-access-log", "--no-server-header", "--backlog", "2048"),
        *("--timeout-graceful-shutdown", "30", "--log-level", "warning"),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = refusal(args.workers)
    if reason:
        print(reason, file=sys.stderr)
        return 2
    command = server_command(args)
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
