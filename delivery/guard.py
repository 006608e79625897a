"""The SSRF guard: a delivery URL must be https and reach only public addresses.

A provider's URL is typed by staff, but it names a machine that leaddist's workers will POST
to, from inside our network. Targets that resolve to private, loopback, link-local (the cloud
metadata service at 169.254.169.254), shared, reserved or multicast addresses are refused,
when the URL is saved and again before every attempt: DNS can change between the two (DNS
rebinding), so the worker connects to the address it checked, not to the name.

ALLOW_PRIVATE_DELIVERY_TARGETS turns the address check off and accepts http too, for tests
and local development only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services. Most are link-local (refused as such); these are named so that a
# future change to the generic rule cannot let them through.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)


class UnsafeTarget(Exception):
    """The URL may not be delivered to; the message says why, for staff and the attempt log."""


@dataclass(frozen=True)
class Target:
    """A checked URL and the address to connect to."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


def _private_allowed() -> bool:
    return bool(settings.ALLOW_PRIVATE_DELIVERY_TARGETS)


def refused_reason(address: Address) -> str | None:
    """Why this address may not be a delivery target, or None if it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    if not address.is_global or address.is_multicast:
        return "not a public address"
    return None


def check_url_syntax(url: str) -> tuple[str, str, int]:
    """Scheme, host and port of an acceptable URL, else UnsafeTarget."""
    parts = urlsplit(url)
    allowed = ("https", "http") if _private_allowed() else ("https",)
    if parts.scheme not in allowed:
        raise UnsafeTarget("The webhook URL must start with https://.")
    if parts.username or parts.password:
        raise UnsafeTarget("The webhook URL may not carry a user name or password.")
    try:
        port = parts.port
    except ValueError as exc:
        raise UnsafeTarget("The webhook URL has an invalid port.") from exc
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    elif not 1 <= port <= 65535:
        # urlsplit accepts port 0, which no server listens on and some stacks read as "any".
        raise UnsafeTarget("The webhook URL has an invalid port (1 to 65535).")
    if not parts.hostname:
        raise UnsafeTarget("The webhook URL has no host.")
    return parts.scheme, parts.hostname, port


def _check_addresses(host: str, addresses: list[Address]) -> Address:
    if not addresses:
        raise UnsafeTarget(f"{host} does not resolve.")
    if not _private_allowed():
        for address in addresses:
            reason = refused_reason(address)
            if reason is not None:
                raise UnsafeTarget(f"{host} resolves to {address}, {reason}.")
    return addresses[0]


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _parse(infos: list[tuple]) -> list[Address]:
    seen: list[Address] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0].split("%")[0])
        if address not in seen:
            seen.append(address)
    return seen


def resolve(host: str, port: int) -> list[Address]:
    """Every address the name resolves to (a literal address is itself). Tests patch this."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UnsafeTarget(f"{host} does not resolve ({exc}).") from exc
    return _parse(infos)


def check_url(url: str) -> Target:
    """The URL, checked as a delivery target (syntax and every address it resolves to)."""
    scheme, host, port = check_url_syntax(url)
    address = _check_addresses(host, resolve(host, port))
    return Target(url=url, scheme=scheme, host=host, port=port, address=str(address))


async def check_url_async(url: str) -> Target:
    """:func:`check_url` without blocking the worker's event loop on DNS."""
    return await asyncio.to_thread(check_url, url)
