"""`allocate_waiting` drains the waiting queue."""

from io import StringIO

import pytest
from django.core.management import call_command

from allocation.models import Lead
from allocation.services import LeadInput, submit_lead
from providers.models import Provider


def lead_for(service_id, n):
    return LeadInput(service_id=service_id, name="Ada", phone=f"+1555{n:07d}", city="London")


def statuses(*leads):
    return [Lead.objects.get(pk=lead.pk).status for lead in leads]


def run(command, **options):
    out = StringIO()
    call_command(command, stdout=out, **options)
    return out.getvalue()


# --- allocate_waiting --------------------------------------------------------------------------


@pytest.mark.django_db
def test_allocate_waiting_serves_the_oldest_lead_first_when_capacity_returns(seeded):
    seeded.providers(2, 3, 4).update(remaining_quota=0)
    first, second = submit_lead(lead_for(1, 1)), submit_lead(lead_for(1, 2))
    # Enough for exactly one more lead of service 1 (P1 plus two pool providers).
    seeded.providers(2, 3).update(remaining_quota=1)

    output = run("allocate_waiting")

    assert statuses(first, second) == ["allocated", "waiting"]
    assert list(first.allocations.order_by("rank").values_list("provider_id", flat=True)) == [
        1,
        2,
        3,
    ]
    assert "Allocated 1 waiting lead(s)." in output


@pytest.mark.django_db
def test_allocate_waiting_drains_every_service_in_order_of_arrival(seeded):
    seeded.providers(2, 3, 4, 6, 7, 8).update(remaining_quota=0)
    leads = [submit_lead(lead_for(service, n)) for n, service in enumerate([1, 2, 1, 2])]
    Provider.objects.update(remaining_quota=10)

    output = run("allocate_waiting")

    assert statuses(*leads) == ["allocated"] * 4
    allocated_order = Lead.objects.order_by("allocated_at", "pk").values_list("pk", flat=True)
    assert list(allocated_order) == [lead.pk for lead in leads]
    assert "Allocated 4 waiting lead(s)." in output


@pytest.mark.django_db
def test_allocate_waiting_with_nothing_to_do_allocates_nothing(seeded):
    assert "Allocated 0 waiting lead(s)." in run("allocate_waiting")


@pytest.mark.django_db
def test_allocate_waiting_leaves_leads_waiting_while_capacity_is_short(seeded):
    seeded.providers(2, 3, 4).update(status="paused")
    lead = submit_lead(lead_for(1, 1))

    run("allocate_waiting")

    assert statuses(lead) == ["waiting"]
