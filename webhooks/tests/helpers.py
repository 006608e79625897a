"""Helpers shared by the webhook tests: posting, signing and the invariants of SPEC §2."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.test import Client
from standardwebhooks import Webhook

from allocation.models import Allocation, Lead
from allocation.services import LeadInput, submit_lead
from providers.models import Provider

PAYLOADS = Path(__file__).parent / "payloads"
SECRET = "whsec_" + base64.b64encode(b"leaddist-webhook-test-secret-32b").decode()
URL = "/api/webhook/reset-quota"


def payload(name: str) -> bytes:
    """A sample body from webhooks/tests/payloads/, as raw bytes."""
    return (PAYLOADS / name).read_bytes()


def body_of(data: Any) -> bytes:
    return data if isinstance(data, bytes) else json.dumps(data).encode()


def signed(body: bytes, secret: str, *, msg_id: str = "msg_1", at: datetime | None = None):
    """Headers signed by standardwebhooks itself, as the gateway would send them."""
    at = at or datetime.now(tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body.decode()),
    }


def post(
    client: Client,
    data: Any,
    *,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
    path: str = URL,
):
    # CONTENT_TYPE too: the test client leaves it out when the body is empty.
    return client.post(
        path,
        data=body_of(data),
        content_type=content_type,
        headers=headers or {},
        CONTENT_TYPE=content_type,
    )


def snapshot() -> list[tuple]:
    """Every provider's quota state, to show that a rejected call changed nothing."""
    return list(
        Provider.objects.order_by("pk").values_list(
            "pk", "remaining_quota", "cycle", "leads_this_cycle", "leads_total"
        )
    )


def assert_invariants() -> None:
    """SPEC §1-§2, checked from the database."""
    for provider in Provider.objects.all():
        this_cycle = Allocation.objects.filter(provider=provider, cycle=provider.cycle).count()
        assert provider.remaining_quota >= 0, provider
        assert provider.remaining_quota == provider.quota - this_cycle, provider
        assert provider.leads_this_cycle == this_cycle, provider
        assert provider.leads_total == Allocation.objects.filter(provider=provider).count()
    for lead in Lead.objects.allocated().prefetch_related("allocations"):
        provider_ids = [a.provider_id for a in lead.allocations.all()]
        assert len(provider_ids) == 3, lead
        assert len(set(provider_ids)) == 3, lead
    assert not Allocation.objects.filter(lead__status=Lead.Status.WAITING).exists()


def submit_leads(service_id: int, count: int, *, prefix: str = "1555") -> list[Lead]:
    """Submit ``count`` new leads for a service through the engine, oldest first."""
    start = Lead.objects.count()
    return [
        submit_lead(
            LeadInput(
                service_id=service_id,
                name=f"Customer {start + i}",
                phone=f"+{prefix}{start + i:07d}",
                city="Springfield",
            )
        )
        for i in range(count)
    ]
