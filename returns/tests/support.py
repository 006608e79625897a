"""Leads allocated by the real engine, for the returns and portal tests."""

from __future__ import annotations

import itertools

from allocation.models import Allocation, Lead
from allocation.services import LeadInput, submit_lead

_phones = itertools.count(1)


def allocated_lead(service_id: int = 1, **fields) -> Lead:
    """A new lead of the service, allocated (or waiting) by the engine; a fresh phone each."""
    return submit_lead(
        LeadInput(
            service_id=service_id,
            name=fields.pop("name", "Grace Hopper"),
            phone=fields.pop("phone", f"+1666{next(_phones):07d}"),
            city=fields.pop("city", "Arlington"),
            description=fields.pop("description", "Fix the roof"),
        )
    )


def allocation_of(lead: Lead, provider_id: int) -> Allocation:
    return Allocation.objects.get(lead=lead, provider_id=provider_id)
