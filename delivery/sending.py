"""One attempt of one delivery, over the network: a signed webhook POST, or an email.

Nothing here touches the database; delivery/services.py records what happened.
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

import httpx
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
    return httpx.create_ssl_context()


# Keep-alive: the connections to a host name stay open between its attempts (for
# KEEPALIVE_SECONDS), which spares each attempt a TCP (and TLS) handshake, on both sides. One
# client per host name and event loop: a connection made for a name (its SNI and certificate
# check) only ever carries requests for that name, even when several names share an address.
# The least recently used client is closed past MAX_CLIENTS names; a worker runs far fewer
# attempts at once (DELIVERY_CONCURRENCY), so a closed client is never one in use.
KEEPALIVE_SECONDS = 30.0
MAX_CLIENTS = 256


class _Clients:
    """The event loop's clients, by host name, most recently used last."""

    def __init__(self) -> None:
        self.by_host: OrderedDict[str, httpx.AsyncClient] = OrderedDict()

    def get(self, host: str) -> httpx.AsyncClient:
        client = self.by_host.pop(host, None)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                verify=tls_context(),
                limits=httpx.Limits(
                    max_connections=None,
                    max_keepalive_connections=settings.DELIVERY_PER_PROVIDER_CONCURRENCY,
                    keepalive_expiry=KEEPALIVE_SECONDS,
                ),
            )
        self.by_host[host] = client
        while len(self.by_host) > MAX_CLIENTS:
            _, oldest = self.by_host.popitem(last=False)
            closing = asyncio.get_running_loop().create_task(oldest.aclose())
            _closing.add(closing)
            closing.add_done_callback(_closing.discard)
        return client


_clients = per_loop(_Clients)
_closing: set[asyncio.Task[None]] = set()


def client_for(host: str) -> httpx.AsyncClient:
    """The running event loop's client for ``host`` (a name, or an address literal)."""
    return _clients().get(host)


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    latency_ms: int
    status_code: int | None = None
    error: str = ""


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


def build_request(
    client: httpx.AsyncClient,
    target: Target,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float | None = None,
) -> httpx.Request:
    """The POST to the checked address, with the name in Host and in TLS (SNI and the
    certificate check), as if the name had been resolved to that address."""
    return client.build_request(
        "POST",
        _connect_url(target),
        content=body,
        headers={
            **headers,
            "Host": _host_header(target),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        },
        extensions={"sni_hostname": target.host},
        timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
    )


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


async def _read_capped(response: httpx.Response) -> bytes:
    read = b""
    async for chunk in response.aiter_raw():
        read += chunk
        if len(read) >= RESPONSE_BODY_CAP:
            break
    return read[:RESPONSE_BODY_CAP]


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
            client = client_for(target.host)
            request = build_request(client, target, body, headers, timeout=timeout)
            response = await client.send(request, stream=True)
            try:
                answer = await _read_capped(response)
            finally:
                await response.aclose()
    except UnsafeTarget as exc:
        return Outcome(False, _elapsed_ms(started), error=f"refused: {exc}")
    except TimeoutError:
        return Outcome(False, _elapsed_ms(started), error=f"no answer within {timeout:g} s")
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
        # Connection refused, TLS failure, a malformed answer...: a failed attempt, retried.
        return Outcome(False, _elapsed_ms(started), error=f"{type(exc).__name__}: {exc}"[:500])
    latency = _elapsed_ms(started)
    if 200 <= response.status_code < 300:
        return Outcome(True, latency, response.status_code)
    text = answer.decode("utf-8", "replace").strip()
    return Outcome(False, latency, response.status_code, f"HTTP {response.status_code}: {text}")


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
        return Outcome(False, _elapsed_ms(started), error="the mail server did not answer in time")
    except Exception as exc:  # SMTP errors come in many types; each is a failed attempt
        return Outcome(False, _elapsed_ms(started), error=f"{type(exc).__name__}: {exc}"[:500])
    return Outcome(True, _elapsed_ms(started))
