"""Helpers shared by the delivery tests."""

from __future__ import annotations

import json

import pytest
from django.db import connection

from allocation.services import LeadInput, submit_lead
from delivery.models import Endpoint
from delivery.services import set_endpoint
from providers.models import Provider


def lead_input(service_id: int, n: int) -> LeadInput:
    return LeadInput(service_id=service_id, name="Ada", phone=f"+1555{n:07d}", city="Paris")


def submit(service_id: int, n: int):
    return submit_lead(lead_input(service_id, n))


def endpoint(provider_id: int, *, url: str = "", email: str = "") -> str:
    """Give the provider an endpoint (settings must allow the URL); return its clear secret."""
    change = set_endpoint(Provider.objects.get(pk=provider_id), url=url, email=email)
    return change.endpoint.signing_secret if change.endpoint else ""


def plain_endpoint(provider_id: int, **fields: str) -> Endpoint:
    """An endpoint row written directly, past the SSRF guard (for tests that send nothing)."""
    endpoint = Endpoint(provider_id=provider_id, **fields)
    if endpoint.url and not endpoint.secret:
        endpoint.set_secret(Endpoint.generate_secret())
    endpoint.save(force_insert=True)
    return endpoint


def queued(task_name: str = "deliver") -> list[tuple[str, dict]]:
    """(status, args) of the task's jobs, oldest first, as this connection sees them."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status, args FROM procrastinate_jobs WHERE task_name = %s ORDER BY id",
            [task_name],
        )
        return [
            (status, json.loads(args) if isinstance(args, str) else args)
            for status, args in cursor.fetchall()
        ]


def lead_job(lead) -> tuple[str, dict]:
    """The lead's job as queued() shows it, still to do: its lead and its allocation's time."""
    lead.refresh_from_db(fields=["allocated_at"])
    at = pytest.approx(lead.allocated_at.timestamp(), abs=1e-3)
    return ("todo", {"lead_id": lead.pk, "at": at})
