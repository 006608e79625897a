"""ASGI entry point: Django, with three changes that keep a request's cost down.

1. AsgiBodySizeLimit refuses an oversized body while it streams in (leaddist.http.middleware).
2. Handler loads the async-native twins of Django's middleware (leaddist.http.middleware), so a
   request crosses no thread boundary until its view needs one.
3. RequestThreads gives each request a worker thread from a fixed set. Django's ASGI handler
   otherwise starts a new thread for every request (its sync code, and every database access,
   must stay on one thread per request), which costs more than the allocation itself on a
   small machine. The set also bounds how many requests touch the database at once, like a
   WSGI server's thread pool. Long-lived streams do not take one: they wait on the event loop
   and do their few reads in short-lived worker calls (events.streams).

Django's request_started receivers would cost every request a thread hop of its own, so they
are not connected here: closing the previous request's connections is request_finished's job,
done on the thread that used them, so none is left open when the next request starts; and
with DEBUG the query log is not emptied per request (it keeps the latest 9,000 queries).
"""

import asyncio
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaddist.settings")
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402
from django.core import signals  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.db import close_old_connections, reset_queries  # noqa: E402

from events.hub import start_hub  # noqa: E402
from leaddist.http.middleware import ASYNC_TWINS, AsgiBodySizeLimit  # noqa: E402

Scope = dict[str, Any]
App = Callable[[Scope, Any, Any], Awaitable[None]]

# Paths whose responses stay open for minutes or hours (the dashboard's event stream).
STREAMING_PATHS = ("/api/events",)

signals.request_started.disconnect(close_old_connections)
signals.request_started.disconnect(reset_queries)


class Handler(ASGIHandler):
    """Django's ASGI handler, with the async-native twin of each middleware that has one."""

    def load_middleware(self, is_async: bool = False) -> None:
        declared = settings.MIDDLEWARE
        twins = [ASYNC_TWINS.get(path) for path in declared]
        # Django reads settings.MIDDLEWARE here and only here, once, at start-up.
        settings.MIDDLEWARE = [
            f"{twin.__module__}.{twin.__qualname__}" if twin else path
            for path, twin in zip(declared, twins, strict=True)
        ]
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = declared


django_application = Handler()


class RequestThreads:
    """Run each request's thread-sensitive work on one of ``size`` long-lived threads."""

    def __init__(self, app: App, *, size: int) -> None:
        self.app = app
        self.threads = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"request-{n}")
            for n in range(size)
        ]
        self._free: asyncio.Queue[ThreadPoolExecutor] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _free_threads(self) -> asyncio.Queue[ThreadPoolExecutor]:
        loop = asyncio.get_running_loop()
        if self._free is None or self._loop is not loop:
            # A server runs one loop for its life (tests run several, one after another).
            # First request: start this process's live-event hub too, so that its commits
            # wake the dashboards through it (one Redis message per burst, not per commit).
            start_hub()
            self._loop, self._free = loop, asyncio.Queue()
            for thread in self.threads:
                self._free.put_nowait(thread)
        return self._free

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(STREAMING_PATHS):
            await self.app(scope, receive, send)
            return
        free = self._free_threads()
        thread = await free.get()
        try:
            async with ThreadSensitiveContext(executor=thread):
                await self.app(scope, receive, send)
        finally:
            free.put_nowait(thread)


application = AsgiBodySizeLimit(RequestThreads(django_application, size=settings.ASGI_THREADS))
