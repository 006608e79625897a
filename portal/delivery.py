"""Everything the portal needs from delivery/, in one module: a provider's deliveries of its
leads, its endpoint, and changing it through delivery's own service (the admin's, with its
SSRF guard, its secret generation and its audit line)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from delivery.endpoints import set_endpoint
from delivery.guard import UnsafeTarget
from delivery.models import Endpoint
from delivery.selectors import provider_lead_deliveries
from providers.models import Provider

__all__ = ["EndpointShown", "UnsafeTarget", "change_endpoint", "deliveries_to", "endpoint_of"]


def deliveries_to(provider_id: int, lead_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Each lead's deliveries to this provider, through delivery's selector (a lead with no
    delivery, e.g. its provider had no endpoint, has none): one query for the whole page."""
    return provider_lead_deliveries(provider_id, lead_ids)


@dataclass(frozen=True)
class EndpointShown:
    """What the portal shows of an endpoint: never the secret, only whether there is one."""

    url: str
    email: str
    has_secret: bool


def endpoint_of(provider: Provider) -> EndpointShown:
    endpoint = Endpoint.objects.filter(provider=provider).first()
    if endpoint is None:
        return EndpointShown("", "", False)
    return EndpointShown(endpoint.url, endpoint.email, bool(endpoint.secret))


def change_endpoint(
    provider: Provider, *, url: str | None, email: str | None, rotate_secret: bool, who: str
) -> str | None:
    """Set the webhook URL and email (None: keep; "": remove) and rotate the secret if asked;
    return a new secret to show once. Raises UnsafeTarget or ValidationError."""
    change = set_endpoint(provider, url=url, email=email, rotate_secret=rotate_secret, who=who)
    return change.new_secret
