"""/test-tools (SPEC §6): prove the engine under concurrency from a browser, staff only.

A browser opens at most 6 connections per host and the dashboard's stream takes one, so each
button makes one request and the fan-out happens here: an async HTTP client sends the real
requests, all at once, to the app's own endpoints.

- Leads go to ``POST /api/leads`` as the signed-in staff user: its session cookie and CSRF
  token are forwarded, so no extra credential is created.
- Webhook deliveries go to ``POST /api/webhook/reset-quota`` signed with WEBHOOK_SECRET
  (Standard Webhooks). The secret stays on the server; the page only sees the answers.

The app's own address is ``settings.SELF_BASE_URL`` or, when empty, the URL the page was
requested on.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from credentials.access import staff_page
from providers.models import Service
from webhooks.signing import signature_headers

CONCURRENT_LEADS = 10
DEFAULT_DELIVERIES = 3
MAX_DELIVERIES = 20
REQUEST_TIMEOUT_SECONDS = 30.0
LEADS_PATH = "/api/leads"
WEBHOOK_PATH = "/api/webhook/reset-quota"
PAGE = "dashboard/test_tools.html"
RESULT = "dashboard/_testtools_result.html"


@dataclass(frozen=True)
class Outcome:
    """One request's answer, as the page lists it."""

    index: int
    subject: str
    status_code: int | None
    result: str  # allocated, waiting, applied, duplicate or error
    detail: str
    elapsed_ms: int


@dataclass(frozen=True)
class Result:
    title: str
    subject_label: str
    outcomes: list[Outcome]
    elapsed_ms: int
    note: str = ""
    counts: list[tuple[str, int]] = field(init=False)

    def __post_init__(self) -> None:
        tally = Counter(outcome.result for outcome in self.outcomes)
        object.__setattr__(self, "counts", sorted(tally.items()))


def make_transport() -> httpx.AsyncBaseTransport | None:
    """The transport for requests to the app itself; None is plain HTTP (tests may route it)."""
    return None


def self_base_url(request: HttpRequest) -> str:
    """Where the app answers: SELF_BASE_URL, else the scheme and host of this request."""
    return (settings.SELF_BASE_URL or request.build_absolute_uri("/")).rstrip("/")


def _error_detail(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase


async def _timed(
    client: httpx.AsyncClient, url: str, *, body: bytes, headers: dict[str, str]
) -> tuple[httpx.Response | Exception, int]:
    started = time.monotonic()
    try:
        response: httpx.Response | Exception = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        response = exc
    return response, round(1000 * (time.monotonic() - started))


# One client per event loop, kept: making one loads the TLS trust store, which took longer
# than the ten leads. Its connections stay open for the next press.
_clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}


@asynccontextmanager
async def _client() -> AsyncIterator[httpx.AsyncClient]:
    transport = make_transport()
    if transport is not None:  # a routed transport (tests): a client of its own
        async with httpx.AsyncClient(transport=transport, timeout=REQUEST_TIMEOUT_SECONDS) as own:
            yield own
        return
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        for stale in [other for other in _clients if other.is_closed()]:
            del _clients[stale]
        client = _clients[loop] = httpx.AsyncClient(
            timeout=REQUEST_TIMEOUT_SECONDS,
            # Enough connections for every request of a press to go out at the same time.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=MAX_DELIVERIES),
        )
    yield client


def _session_credentials(request: HttpRequest, base_url: str) -> tuple[dict, dict]:
    """The staff user's session cookie and CSRF pair, as a browser in the page would send."""
    token = get_token(request)  # masked form of the secret now in META["CSRF_COOKIE"]
    cookies = {settings.CSRF_COOKIE_NAME: request.META["CSRF_COOKIE"]}
    session_key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    if session_key:
        cookies[settings.SESSION_COOKIE_NAME] = session_key
    header = settings.CSRF_HEADER_NAME.removeprefix("HTTP_").replace("_", "-")
    origin = httpx.URL(base_url)
    same_origin = f"{origin.scheme}://{origin.netloc.decode()}"
    headers = {header: token, "Origin": same_origin, "Referer": same_origin + "/"}
    return cookies, headers


def _lead_outcome(index: int, subject: str, answer: httpx.Response | Exception, ms: int) -> Outcome:
    if isinstance(answer, Exception):
        return Outcome(index, subject, None, "error", f"{type(answer).__name__}: {answer}", ms)
    if answer.status_code in (201, 202):
        body = answer.json()
        names = ", ".join(provider["name"] for provider in body["providers"])
        detail = f"lead #{body['id']}" + (f" → {names}" if names else " is waiting")
        return Outcome(index, subject, answer.status_code, body["status"], detail, ms)
    return Outcome(index, subject, answer.status_code, "error", _error_detail(answer), ms)


async def send_leads(
    base_url: str, payloads: list[dict[str, Any]], *, cookies: dict, headers: dict
) -> list[Outcome]:
    """POST every payload to /api/leads at the same time; the answers in payload order."""
    cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())
    headers = {**headers, "Content-Type": "application/json", "Cookie": cookie}
    async with _client() as client:
        answers = await asyncio.gather(
            *(
                _timed(client, base_url + LEADS_PATH, body=json.dumps(p).encode(), headers=headers)
                for p in payloads
            )
        )
    return [
        _lead_outcome(i, f"{p['phone']} · {p['service']}", answer, ms)
        for i, (p, (answer, ms)) in enumerate(zip(payloads, answers, strict=True), start=1)
    ]


def signed_headers(body: bytes, *, secret: str) -> dict[str, str]:
    """Standard Webhooks headers for one delivery; none when no secret is configured."""
    return signature_headers(body, secret=secret) if secret else {}


def _webhook_outcome(index: int, answer: httpx.Response | Exception, ms: int) -> Outcome:
    subject = f"delivery {index}"
    if isinstance(answer, Exception):
        return Outcome(index, subject, None, "error", f"{type(answer).__name__}: {answer}", ms)
    if answer.status_code == 200:
        body = answer.json()
        allocated = body.get("leadsAllocated")
        detail = body["eventId"]
        if allocated is not None:
            detail += f" · {allocated} waiting lead(s) allocated"
        return Outcome(index, subject, 200, body["status"], detail, ms)
    return Outcome(index, subject, answer.status_code, "error", _error_detail(answer), ms)


async def deliver_webhook(
    base_url: str, *, event_id: str, copies: int, secret: str
) -> list[Outcome]:
    """Deliver the same reset event ``copies`` times at once, each delivery signed on its own."""
    body = json.dumps({"eventId": event_id}).encode()
    async with _client() as client:
        answers = await asyncio.gather(
            *(
                _timed(
                    client,
                    base_url + WEBHOOK_PATH,
                    body=body,
                    headers={
                        "Content-Type": "application/json",
                        **signed_headers(body, secret=secret),
                    },
                )
                for _ in range(copies)
            )
        )
    return [_webhook_outcome(i, answer, ms) for i, (answer, ms) in enumerate(answers, start=1)]


def new_event_id() -> str:
    return f"testtools_{uuid.uuid4().hex}"


def lead_payloads(services: list[tuple[int, str]], count: int = CONCURRENT_LEADS) -> list[dict]:
    """``count`` leads with distinct random phones, spread round robin over the services."""
    phones: set[str] = set()
    while len(phones) < count:
        phones.add(f"+1555{secrets.randbelow(10**7):07d}")
    stamp = datetime.now(tz=UTC).strftime("%H:%M:%S")
    return [
        {
            "name": f"Test lead {i}",
            "phone": phone,
            "city": "Testville",
            "service": services[(i - 1) % len(services)][1],
            "description": f"Sent by /test-tools at {stamp} UTC.",
        }
        for i, phone in enumerate(sorted(phones), start=1)
    ]


def _answer(request: HttpRequest, result: Result) -> HttpResponse:
    """Just the result fragment for the page's script; the whole page without JavaScript."""
    if request.headers.get("X-Requested-With") == "fetch":
        response = render(request, RESULT, {"result": result})
        response["X-Fragment"] = "1"
        return response
    return render(request, PAGE, _page_context(results={request.resolver_match.url_name: result}))


def _page_context(results: dict[str, Result] | None = None) -> dict[str, Any]:
    return {
        "nav": "test_tools",
        "concurrent_leads": CONCURRENT_LEADS,
        "default_deliveries": DEFAULT_DELIVERIES,
        "max_deliveries": MAX_DELIVERIES,
        "signed": bool(settings.WEBHOOK_SECRET),
        "results": results or {},
        "dashboard_url": reverse("dashboard:dashboard"),
    }


@require_GET
@staff_page
def test_tools(request: HttpRequest) -> HttpResponse:
    return render(request, PAGE, _page_context())


async def _run(coroutine: Any) -> Any:
    """Await the fan-out on the server's own loop: no thread waits for it, no connection is
    held meanwhile."""
    started = time.monotonic()
    outcomes = await coroutine
    return outcomes, round(1000 * (time.monotonic() - started))


def _active_services() -> list[tuple[int, str]]:
    return list(Service.objects.active().order_by("pk").values_list("pk", "slug"))


@require_POST
@staff_page
async def generate_leads(request: HttpRequest) -> HttpResponse:
    """10 truly parallel POST /api/leads as this staff user, over the active services."""
    services = await sync_to_async(_active_services)()
    if not services:
        result = Result("No active service", "Lead", [], 0, note="Activate a service first.")
        return await sync_to_async(_answer)(request, result)
    base_url = self_base_url(request)
    cookies, headers = _session_credentials(request, base_url)
    payloads = lead_payloads(services)
    outcomes, elapsed = await _run(send_leads(base_url, payloads, cookies=cookies, headers=headers))
    result = Result(f"{len(outcomes)} concurrent leads", "Phone · service", outcomes, elapsed)
    return await sync_to_async(_answer)(request, result)


def _deliveries(request: HttpRequest) -> int:
    try:
        copies = int(request.POST.get("copies", DEFAULT_DELIVERIES))
    except ValueError:
        copies = DEFAULT_DELIVERIES
    return min(max(copies, 1), MAX_DELIVERIES)


@require_POST
@staff_page
async def fire_webhook(request: HttpRequest) -> HttpResponse:
    """The same new reset event delivered N times at once: one applies, the rest are duplicates."""
    event_id = new_event_id()
    copies = _deliveries(request)
    outcomes, elapsed = await _run(
        deliver_webhook(
            self_base_url(request), event_id=event_id, copies=copies, secret=settings.WEBHOOK_SECRET
        )
    )
    title = f"Event {event_id} delivered {copies} times at once"
    return await sync_to_async(_answer)(request, Result(title, "Delivery", outcomes, elapsed))


@require_POST
@staff_page
async def reset_quotas(request: HttpRequest) -> HttpResponse:
    """Every provider's quota back through the webhook, with a new event id."""
    event_id = new_event_id()
    outcomes, elapsed = await _run(
        deliver_webhook(
            self_base_url(request), event_id=event_id, copies=1, secret=settings.WEBHOOK_SECRET
        )
    )
    result = Result(f"Quota reset {event_id}", "Delivery", outcomes, elapsed)
    return await sync_to_async(_answer)(request, result)
