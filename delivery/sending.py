"""One attempt of one delivery, over the network: a signed webhook POST, or an email.

Nothing here touches the database; delivery/services.py records what happened.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import make_msgid
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings
from django.core.mail import EmailMessage

from delivery.guard import Target, UnsafeTarget, check_url_async
from webhooks.signing import signature_headers

# The endpoint's answer matters only by its status; its body is read this far for the log.
RESPONSE_BODY_CAP = 1024
USER_AGENT = "leaddist-delivery/1"


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The certificate store, loaded once per process: loading it takes ~80 ms of CPU, which
    a context per attempt would spend blocking every other attempt of the worker."""
    return httpx.create_ssl_context()


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
    client: httpx.AsyncClient, target: Target, body: bytes, headers: dict[str, str]
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
            # A client per attempt: connections are never reused between attempts, so one made
            # for a name (its SNI and certificate) never carries a request for another name
            # at the same address.
            async with httpx.AsyncClient(
                timeout=timeout, follow_redirects=False, trust_env=False, verify=tls_context()
            ) as client:
                request = build_request(client, target, body, headers)
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
