"""The ASGI entry point: async-native middleware twins, and a fixed set of request threads."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.middleware.security import SecurityMiddleware as DjangoSecurityMiddleware
from django.urls import path

from leaddist import asgi
from leaddist.asgi import Handler, RequestThreads
from leaddist.http import middleware


def chain(handler: Handler) -> list[object]:
    """The middleware instances of a loaded handler, outermost first: Django wraps each one in
    convert_exception_to_response, which keeps it as ``__wrapped__``."""
    found, current = [], handler._middleware_chain
    while hasattr(instance := getattr(current, "__wrapped__", None), "get_response"):
        found.append(instance)
        current = instance.get_response
    return found


def test_the_asgi_handler_loads_the_async_twins_and_leaves_the_setting_alone():
    declared = list(settings.MIDDLEWARE)

    loaded = chain(Handler())

    assert declared == settings.MIDDLEWARE
    assert [type(m) for m in loaded] == [
        middleware.ASYNC_TWINS.get(path_, None) or _import(path_) for path_ in declared
    ]
    assert all(iscoroutinefunction(m) for m in loaded)


def _import(dotted: str) -> type:
    from django.utils.module_loading import import_string

    return import_string(dotted)


def test_twins_run_django_middleware_hooks_inline(rf):
    """No hop to a worker thread: the hooks run on the event loop's own thread."""
    hooks = []

    class Recording(middleware.InlineHooks, DjangoSecurityMiddleware):
        def process_request(self, request: HttpRequest) -> None:
            hooks.append(threading.current_thread())

        def process_response(self, request: HttpRequest, response: JsonResponse) -> JsonResponse:
            hooks.append(threading.current_thread())
            return response

    async def view(request: HttpRequest) -> JsonResponse:
        return JsonResponse({})

    async def call() -> threading.Thread:
        await Recording(view)(rf.get("/"))
        return threading.current_thread()

    loop_thread = asyncio.run(call())

    assert hooks == [loop_thread, loop_thread]


async def ping(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"thread": threading.current_thread().name})


def sync_ping(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"thread": threading.current_thread().name})


urlpatterns = [path("sync", sync_ping), path("async", ping)]


async def get(app: RequestThreads, url: str) -> dict:
    sent: list[dict] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": url,
        "raw_path": url.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    first = True

    async def receive() -> dict:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()
        return {}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return json.loads(b"".join(m.get("body", b"") for m in sent if "body" in m))


@pytest.mark.urls("leaddist.tests.test_asgi")
def test_sync_views_run_on_the_fixed_request_threads(db, settings):
    settings.ALLOWED_HOSTS = ["testserver"]
    app = RequestThreads(Handler(), size=2)

    async def many() -> list[dict]:
        return await asyncio.gather(*(get(app, "/sync") for _ in range(12)))

    names = {answer["thread"] for answer in asyncio.run(many())}

    assert names <= {"request-0_0", "request-1_0"}


@pytest.mark.urls("leaddist.tests.test_asgi")
def test_streams_do_not_take_a_request_thread(monkeypatch):
    taken = []
    app = RequestThreads(lambda scope, receive, send: asyncio.sleep(0), size=1)
    monkeypatch.setattr(app, "_free_threads", lambda: taken.append(1))

    asyncio.run(app({"type": "http", "path": "/api/events"}, None, None))

    assert taken == []
    assert asgi.STREAMING_PATHS == ("/api/events",)
