"""Where each provider wants its leads: its webhook URL (with its signing secret) and email.

Every change goes through :func:`set_endpoint`, from the admin, `set_delivery` and any other
caller, with the same lock, SSRF guard and audit line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.db import transaction

from delivery.encryption import UndecryptableSecret, needs_reencryption, reencrypt_secret
from delivery.guard import check_url
from delivery.models import Endpoint
from leaddist.http.audit import log_event
from providers.models import Provider


@dataclass(frozen=True)
class EndpointChange:
    endpoint: Endpoint | None
    new_secret: str | None  # set when a secret was created or rotated: show it once


def validate_webhook_url(url: str) -> None:
    """Raise UnsafeTarget unless ``url`` may be delivered to now (syntax and resolution)."""
    check_url(url)


def set_endpoint(
    provider: Provider,
    *,
    url: str | None = None,
    email: str | None = None,
    clear: bool = False,
    rotate_secret: bool = False,
    who: str = "unknown",
) -> EndpointChange:
    """Set (None: keep) the provider's webhook URL and email; a URL gets a secret if it has none.

    ``clear`` removes both first. The URL is checked by the SSRF guard (UnsafeTarget); the new
    secret, if any, is returned for showing once. A change is logged on ``leaddist.audit`` once
    committed, as done by ``who`` (``staff:<username>`` or ``command``) (endpoint_changes).
    """
    started = time.monotonic()
    if url:
        validate_webhook_url(url)
    with transaction.atomic():
        endpoint, _ = Endpoint.objects.select_for_update().get_or_create(provider=provider)
        before = (endpoint.url, endpoint.email, endpoint.secret)
        if clear:
            endpoint.url = endpoint.email = endpoint.secret = ""
        if url is not None:
            endpoint.url = url
        if email is not None:
            endpoint.email = email
        new_secret = None
        if not endpoint.url:
            endpoint.secret = ""  # a URL set again later gets a new secret, shown again
        elif rotate_secret or not endpoint.secret:
            new_secret = Endpoint.generate_secret()
            endpoint.set_secret(new_secret)
        endpoint.full_clean()
        after = (endpoint.url, endpoint.email, endpoint.secret)
        changes = endpoint_changes(before, after)
        if changes:
            transaction.on_commit(
                lambda: log_event(
                    "delivery_endpoint",
                    started=started,
                    who=who,
                    provider_id=provider.pk,
                    **changes,
                )
            )
        if not endpoint.url and not endpoint.email:
            endpoint.delete()
            return EndpointChange(None, None)
        endpoint.save()
    return EndpointChange(endpoint, new_secret)


def _change(before: str, after: str) -> str | None:
    if before == after:
        return None
    return "set" if not before else "cleared" if not after else "changed"


def _host(url: str) -> str | None:
    return urlsplit(url).hostname if url else None


def endpoint_changes(before: tuple[str, str, str], after: tuple[str, str, str]) -> dict[str, Any]:
    """What an endpoint change did, for the audit line, from (url, email, secret) before and
    after: ``url``/``email`` "set", "changed" or "cleared"; the URL's host before and after
    (never its path or query, which may carry a token); ``secret`` "created", "rotated" or
    "removed". Never the secret or the email address. Empty when nothing changed."""
    (old_url, old_email, old_secret), (new_url, new_email, new_secret) = before, after
    secret = None
    if old_secret != new_secret:
        secret = "created" if not old_secret else "removed" if not new_secret else "rotated"
    url = _change(old_url, new_url)
    fields = {
        "url": url,
        "url_host": _host(new_url) if url in ("set", "changed") else None,
        "previous_url_host": _host(old_url) if url in ("changed", "cleared") else None,
        "email": _change(old_email, new_email),
        "secret": secret,
    }
    return {name: value for name, value in fields.items() if value is not None}


def reencrypt_endpoint_secrets() -> int:
    """Store every signing secret encrypted with the first of DELIVERY_SECRET_KEYS; return how
    many were rewritten (0 when all already were: running it again changes nothing).

    All or nothing: if a secret is under no key of the setting, UndecryptableSecret is raised
    and no row changes. The clear secrets themselves stay the same; providers notice nothing.
    """
    with transaction.atomic():
        # Locked in pk order: a set_endpoint in flight (it locks its one row) either commits
        # first, and its new secret is read here, or waits for us and writes after.
        endpoints = list(
            Endpoint.objects.select_for_update().exclude(secret="").order_by("pk").only("secret")
        )
        stale = [endpoint for endpoint in endpoints if needs_reencryption(endpoint.secret)]
        for endpoint in stale:
            try:
                endpoint.secret = reencrypt_secret(endpoint.secret)
            except UndecryptableSecret as exc:
                raise UndecryptableSecret(f"the secret of provider #{endpoint.pk}") from exc
        Endpoint.objects.bulk_update(stale, ["secret"])
    return len(stale)
