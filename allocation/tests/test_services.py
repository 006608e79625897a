"""The allocation service on PostgreSQL: what it stores, and what it leaves alone."""

import threading

import pytest
from django.db import connection, transaction

from allocation.models import Allocation, Lead
from allocation.services import (
    Busy,
    DuplicateLead,
    LeadInput,
    allocate_waiting_leads,
    run_with_retries,
    submit_lead,
)
from providers.locks import lock_cursors
from providers.models import Membership, Provider
from providers.services import resume_provider, update_provider


def lead_for(service_id, n=0, phone=None):
    return LeadInput(
        service_id=service_id, name="Ada", phone=phone or f"+1555{n:07d}", city="Springfield"
    )


def providers_of(lead):
    return list(lead.allocations.order_by("rank").values_list("provider_id", flat=True))


@pytest.mark.django_db
def test_seeded_catalogue_follows_the_spec_worked_example(seeded):
    service_1 = [providers_of(submit_lead(lead_for(1, n))) for n in range(3)]
    service_3 = [providers_of(submit_lead(lead_for(3, n))) for n in range(3)]

    assert service_1 == [[1, 2, 3], [1, 4, 2], [1, 3, 4]]
    assert service_3 == [[1, 4, 2], [1, 4, 3], [1, 4, 5]]


@pytest.mark.django_db
def test_allocation_takes_quota_stores_cycle_counters_trace_and_cursor(seeded):
    lead = submit_lead(lead_for(1))

    assert lead.status == Lead.Status.ALLOCATED
    assert lead.allocated_at is not None
    assert list(lead.allocations.values_list("provider_id", "role", "rank", "cycle")) == [
        (1, "mandatory", 1, 1),
        (2, "pool", 2, 1),
        (3, "pool", 3, 1),
    ]
    assert list(seeded.providers(1, 2, 3, 4).values_list("remaining_quota", flat=True)) == [
        9,
        9,
        9,
        10,
    ]
    assert seeded.provider(1).leads_this_cycle == 1
    assert seeded.provider(1).leads_total == 1
    assert seeded.cursor(1) == 2
    assert [e["outcome"] for e in lead.trace] == ["selected"] * 3


@pytest.mark.django_db
def test_exhausted_mandatory_provider_is_backfilled_from_the_pool(seeded):
    Provider.objects.filter(pk=1).update(quota=0, remaining_quota=0)

    lead = submit_lead(lead_for(1))

    assert providers_of(lead) == [2, 3, 4]
    assert lead.trace[0] == {
        "provider_id": 1,
        "role": "mandatory",
        "outcome": "skipped",
        "reason": "no_quota",
    }


@pytest.mark.django_db
def test_lead_without_three_providers_waits_and_changes_nothing(seeded):
    Provider.objects.filter(pk__in=[3, 4]).update(status="paused")
    before = list(Provider.objects.values_list("pk", "remaining_quota", "leads_total"))

    lead = submit_lead(lead_for(1))

    assert lead.status == Lead.Status.WAITING
    assert lead.wait_reason == "not_enough_providers"
    assert Allocation.objects.count() == 0
    assert list(Provider.objects.values_list("pk", "remaining_quota", "leads_total")) == before
    assert seeded.cursor(1) is None


@pytest.mark.django_db
def test_new_lead_waits_behind_an_older_waiting_lead_of_its_service(seeded):
    Provider.objects.filter(pk__in=[3, 4]).update(status="paused")
    first = submit_lead(lead_for(1, 1))
    Provider.objects.filter(pk__in=[3, 4]).update(status="active")  # bypasses the drain

    second = submit_lead(lead_for(1, 2))
    other_service = submit_lead(lead_for(2, 3))

    assert first.status == second.status == Lead.Status.WAITING
    assert second.wait_reason == "queued"
    assert other_service.status == Lead.Status.ALLOCATED


@pytest.mark.django_db
def test_drain_allocates_waiting_leads_oldest_first(seeded):
    Provider.objects.filter(pk__in=[3, 4]).update(status="paused")
    leads = [submit_lead(lead_for(1, n)) for n in range(3)]
    Provider.objects.filter(pk__in=[3, 4]).update(status="active")

    allocated = allocate_waiting_leads()

    assert allocated == 3
    assert [providers_of(Lead.objects.get(pk=lead.pk)) for lead in leads] == [
        [1, 2, 3],
        [1, 4, 2],
        [1, 3, 4],
    ]


@pytest.mark.django_db
def test_drain_leaves_a_still_blocked_lead_and_its_followers_waiting(seeded):
    Provider.objects.filter(pk__in=[3, 4]).update(status="paused")
    Provider.objects.filter(pk__in=[6, 7]).update(status="paused")
    s1 = submit_lead(lead_for(1, 1))
    s2 = submit_lead(lead_for(2, 2))
    s1_later = submit_lead(lead_for(1, 3))
    Provider.objects.filter(pk__in=[6, 7]).update(status="active")

    allocated = allocate_waiting_leads()

    assert allocated == 1
    statuses = dict(Lead.objects.values_list("pk", "status"))
    assert statuses == {s1.pk: "waiting", s2.pk: "allocated", s1_later.pk: "waiting"}


@pytest.mark.django_db(transaction=True)
def test_resuming_a_provider_drains_the_waiting_queue(seeded_tx):
    for pk in (2, 3, 4):
        update_provider(Provider.objects.get(pk=pk), status="paused")
    lead = submit_lead(lead_for(1))
    assert lead.status == Lead.Status.WAITING
    resume_provider(Provider.objects.get(pk=4))  # P1 and P4: still one short
    assert Lead.objects.get(pk=lead.pk).status == Lead.Status.WAITING

    resume_provider(Provider.objects.get(pk=3))

    assert providers_of(Lead.objects.get(pk=lead.pk)) == [1, 3, 4]


@pytest.mark.django_db
def test_quota_change_leaves_the_new_quota_less_what_the_cycle_used(seeded):
    provider = seeded.provider(2)
    Provider.objects.filter(pk=2).update(remaining_quota=3, leads_this_cycle=7)

    raised = update_provider(provider, quota=15)
    lowered = update_provider(raised, quota=5)
    raised_again = update_provider(lowered, quota=10)

    assert (raised.quota, raised.remaining_quota) == (15, 8)
    assert (lowered.quota, lowered.remaining_quota) == (5, 0)
    assert (raised_again.quota, raised_again.remaining_quota) == (10, 3)


@pytest.mark.django_db
def test_membership_eligibility_follows_the_provider(seeded):
    update_provider(seeded.provider(2), status="paused")

    assert set(
        Membership.objects.filter(provider_id=2).values_list("provider_eligible", flat=True)
    ) == {False}


@pytest.mark.django_db
def test_duplicate_phone_for_the_same_service_is_refused_with_the_existing_lead(seeded):
    first = submit_lead(lead_for(1, phone="+15550001111"))

    with pytest.raises(DuplicateLead) as refused:
        submit_lead(lead_for(1, phone="+15550001111"))
    other_service = submit_lead(lead_for(2, phone="+15550001111"))

    assert refused.value.lead_id == first.pk
    assert other_service.status == Lead.Status.ALLOCATED
    assert Lead.objects.count() == 2


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_persistent_lock_conflict_is_busy_and_stores_nothing(seeded_tx, settings):
    settings.ALLOCATION_MAX_ATTEMPTS = 2
    holding = threading.Event()
    release = threading.Event()

    def hold_cursor():
        with transaction.atomic():
            lock_cursors([1])
            holding.set()
            assert release.wait(30)
        connection.close()

    holder = threading.Thread(target=hold_cursor)
    holder.start()
    assert holding.wait(30)
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '50ms'")
    try:
        with pytest.raises(Busy) as busy:
            submit_lead(lead_for(1))
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
        release.set()
        holder.join()

    assert busy.value.retry_after == settings.BUSY_RETRY_AFTER_SECONDS
    assert Lead.objects.count() == 0
    assert Allocation.objects.count() == 0
    assert seeded_tx.provider(1).remaining_quota == 10


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_a_real_deadlock_is_retried_inside_the_server(seeded_tx):
    """Two transactions each lock one provider, meet at a barrier, then ask for the other's:
    a deadlock every time, whatever the machine's load. PostgreSQL aborts one of them (which
    one depends on whose deadlock check runs first); run_with_retries runs it again and both
    commit."""
    both_locked = threading.Barrier(2, timeout=30)
    attempts = {"1 then 2": 0, "2 then 1": 0}
    results = {}

    def lock_both(name, first, second):
        def attempt(slack):
            attempts[name] += 1
            with transaction.atomic():
                Provider.objects.select_for_update().get(pk=first)
                if attempts[name] == 1:
                    both_locked.wait()
                Provider.objects.select_for_update().get(pk=second)
            return "committed"

        try:
            results[name] = run_with_retries(attempt)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=lock_both, args=("1 then 2", 1, 2)),
        threading.Thread(target=lock_both, args=("2 then 1", 2, 1)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert results == {"1 then 2": "committed", "2 then 1": "committed"}
    assert sorted(attempts.values()) == [1, 2]
