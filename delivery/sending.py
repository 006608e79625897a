"""One attempt of one delivery, over the network: a signed webhook POST, or an email.

Nothing here touches the database; delivery/attempts.py records what happened.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import make_msgid
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import certifi
from django.conf import settings
from django.core.mail import EmailMessage

from delivery.guard import Target, UnsafeTarget, check_url_async
from delivery.loops import per_loop
from webhooks.signing import signature_headers

# The endpoint's answer matters only by its status; its body is read this far for the log.
RESPONSE_BODY_CAP = 1024
USER_AGENT = "leaddist-delivery/1"


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The certificate store, loaded once per process: loading it takes ~80 ms of CPU, which
    a context per attempt would spend blocking every other attempt of the worker."""
    return ssl.create_default_context(cafile=certifi.where())


# Keep-alive: the connections to a host name stay open between its attempts (for
# KEEPALIVE_SECONDS), which spares each attempt a TCP (and TLS) handshake, on both sides. One
# session per host name and event loop: a connection made for a name (its SNI and certificate
# check) only ever carries requests for that name, even when several names share an address.
# The least recently used session is closed past MAX_CLIENTS names; a worker runs far fewer
# attempts at once (DELIVERY_CONCURRENCY), so a closed session is never one in use.
#
# aiohttp, not httpx: measured on this machine, a webhook attempt cost 2.5 ms of CPU through
# httpx and 0.17-0.19 ms through aiohttp (docs/PERFORMANCE.md, "Speed to lead").
KEEPALIVE_SECONDS = 30.0
MAX_CLIENTS = 256


class _Clients:
    """The event loop's sessions, by host name, most recently used last."""

    def __init__(self) -> None:
        self.by_host: OrderedDict[str, aiohttp.ClientSession] = OrderedDict()

    def get(self, host: str) -> aiohttp.ClientSession:
        client = self.by_host.pop(host, None)
        if client is None or client.closed:
            client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=0, keepalive_timeout=KEEPALIVE_SECONDS, ssl=tls_context()
                ),
                auto_decompress=False,
                trust_env=False,
                skip_auto_headers=("User-Agent", "Content-Type"),
            )
        self.by_host[host] = client
        while len(self.by_host) > MAX_CLIENTS:
            _, oldest = self.by_host.popitem(last=False)
            closing = asyncio.get_running_loop().create_task(oldest.close())
            _closing.add(closing)
            closing.add_done_callback(_closing.discard)
        return client


_clients = per_loop(_Clients)
_closing: set[asyncio.Task[None]] = set()


async def close_clients() -> None:
    """Close the running event loop's sessions (a worker stopping; a test's loop ending)."""
    clients = _clients().by_host
    while clients:
        _, client = clients.popitem()
        await client.close()


def client_for(host: str) -> aiohttp.ClientSession:
    """The running event loop's session for ``host`` (a name, or an address literal)."""
    return _clients().get(host)


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    latency_ms: int
    status_code: int | None = None
    error: str = ""
    # One of leaddist.http.metrics.DELIVERY_OUTCOMES (what /metrics counts); by default from
    # the rest: delivered, or an answer that was no 2xx.
    kind: str = ""

    @property
    def outcome_kind(self) -> str:
        if self.kind:
            return self.kind
        if self.succeeded:
            return "delivered"
        return "http_error" if self.status_code is not None else "network_error"


def _connect_url(target: Target) -> str:
    """The URL with its host replaced by the checked address: no second DNS lookup, so the
    name cannot point elsewhere between the check and the connection."""
    parts = urlsplit(target.url)
    address = target.address
    if isinstance(ipaddress.ip_address(address), ipaddress.IPv6Address):
        address = f"[{address}]"
    return urlunsplit(
        (parts.scheme, f"{address}:{target.port}", parts.path or "/", parts.query, "")
    )


def _host_header(target: Target) -> str:
    default = 443 if target.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port == default else f"{host}:{target.port}"


@dataclass(frozen=True)
class Request:
    """Where and how a POST goes: to the checked address, with the name in Host and in TLS (SNI
    and the certificate check), as if the name had been resolved to that address."""

    url: str
    headers: dict[str, str]
    server_hostname: str | None


def build_request(target: Target, headers: dict[str, str]) -> Request:
    return Request(
        url=_connect_url(target),
        headers={
            **headers,
            "Host": _host_header(target),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        },
        server_hostname=target.host if target.scheme == "https" else None,
    )


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


async def post_webhook(url: str, body: bytes, *, secret: str, webhook_id: str) -> Outcome:
    """POST the signed body; a 2xx within DELIVERY_TIMEOUT_SECONDS (DNS included) succeeds.

    Redirects are not followed (a 3xx is a failure: following it would skip the SSRF guard),
    and at most RESPONSE_BODY_CAP bytes of the answer are read.
    """
    started = time.monotonic()
    timeout = settings.DELIVERY_TIMEOUT_SECONDS
    try:
        async with asyncio.timeout(timeout):
            target = await check_url_async(url)
            headers = signature_headers(
                body, secret=secret, msg_id=webhook_id, timestamp=datetime.now(tz=UTC)
            )
            request = build_request(target, headers)
            async with client_for(target.host).post(
                request.url,
                data=body,
                headers=request.headers,
                server_hostname=request.server_hostname,
                allow_redirects=False,
            ) as response:
                status = response.status
                answer = await response.content.read(RESPONSE_BODY_CAP)
    except UnsafeTarget as exc:
        return Outcome(False, _elapsed_ms(started), error=f"refused: {exc}", kind="refused")
    except TimeoutError:
        error = f"no answer within {timeout:g} s"
        return Outcome(False, _elapsed_ms(started), error=error, kind="timeout")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        # Connection refused, TLS failure, a malformed answer...: a failed attempt, retried.
        return Outcome(False, _elapsed_ms(started), error=f"{type(exc).__name__}: {exc}"[:500])
    latency = _elapsed_ms(started)
    if 200 <= status < 300:
        return Outcome(True, latency, status)
    text = answer.decode("utf-8", "replace").strip()
    return Outcome(False, latency, status, f"HTTP {status}: {text}")


def _send_email_now(address: str, subject: str, text: str, delivery_id: int) -> None:
    message = EmailMessage(
        subject=subject,
        body=text,
        to=[address],
        headers={
            "X-Leaddist-Delivery-Id": str(delivery_id),
            "Message-ID": make_msgid(f"delivery-{delivery_id}"),
        },
    )
    message.send(fail_silently=False)


async def send_email(address: str, *, subject: str, text: str, delivery_id: int) -> Outcome:
    """Hand the email to Django's email backend (SMTP in production); its acceptance is success."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(settings.DELIVERY_TIMEOUT_SECONDS):
            await asyncio.to_thread(_send_email_now, address, subject, text, delivery_id)
    except TimeoutError:
        error = "the mail server did not answer in time"
        return Outcome(False, _elapsed_ms(started), error=error, kind="timeout")
    except Exception as exc:  # SMTP errors come in many types; each is a failed attempt
        return Outcome(False, _elapsed_ms(started), error=f"{type(exc).__name__}: {exc}"[:500])
    return Outcome(True, _elapsed_ms(started))
