"""apply_quota_reset and the canonical body hash, called directly."""

from __future__ import annotations

import hashlib
import json

import pytest

import webhooks.services
from allocation.models import Lead
from providers.models import Membership, PoolCursor, Provider
from webhooks.models import ProcessedEvent
from webhooks.services import (
    APPLIED,
    DUPLICATE,
    IdempotencyConflict,
    UnknownProviders,
    apply_quota_reset,
    canonical_body_sha256,
)
from webhooks.tests.helpers import assert_invariants, payload, snapshot, submit_leads

SHA_A = "a" * 64
SHA_B = "b" * 64


def test_canonical_hash_ignores_key_order_whitespace_and_provider_id_order_and_repeats():
    some = json.loads(payload("reset_some.json"))
    reordered = json.loads(payload("reset_some_reordered.json"))

    assert some != reordered
    assert canonical_body_sha256(some) == canonical_body_sha256(reordered)


def test_canonical_hash_differs_for_other_providers_other_ids_and_other_keys():
    base = canonical_body_sha256({"eventId": "e", "providerIds": [1, 4]})

    assert canonical_body_sha256({"eventId": "e", "providerIds": [1, 2]}) != base
    assert canonical_body_sha256({"eventId": "f", "providerIds": [1, 4]}) != base
    assert canonical_body_sha256({"eventId": "e"}) != base
    assert canonical_body_sha256({"eventId": "e", "providerIds": [1, 4], "note": 1}) != base


def test_canonical_hash_is_sha256_of_sorted_compact_json():
    expected = hashlib.sha256(b'{"eventId":"e","providerIds":[1,4]}').hexdigest()

    assert canonical_body_sha256({"providerIds": [4, 1, 4], "eventId": "e"}) == expected


@pytest.mark.django_db
def test_apply_resets_all_providers_and_records_the_event(seeded):
    submit_leads(2, 4)

    outcome = apply_quota_reset(event_id="evt", body_sha256=SHA_A, provider_ids=None)

    assert outcome.status == APPLIED
    assert outcome.providers_reset == 8
    assert outcome.leads_allocated == 0
    assert list(Provider.objects.values_list("remaining_quota", "cycle", "leads_this_cycle")) == (
        [(10, 2, 0)] * 8
    )
    assert Provider.objects.get(pk=5).leads_total == 4
    event = ProcessedEvent.objects.get(event_id="evt")
    assert (event.body_sha256, event.provider_ids, event.providers_reset) == (SHA_A, None, 8)
    assert_invariants()


@pytest.mark.django_db
def test_apply_twice_resets_once_and_reports_a_duplicate(seeded):
    apply_quota_reset(event_id="evt", body_sha256=SHA_A, provider_ids=[2])
    submit_leads(1, 1)
    before = snapshot()

    outcome = apply_quota_reset(event_id="evt", body_sha256=SHA_A, provider_ids=[2])

    assert outcome.status == DUPLICATE
    assert outcome.leads_allocated is None
    assert snapshot() == before
    assert Provider.objects.get(pk=2).cycle == 2


@pytest.mark.django_db
def test_apply_with_another_body_raises_a_conflict_and_changes_nothing(seeded):
    apply_quota_reset(event_id="evt", body_sha256=SHA_A, provider_ids=None)
    submit_leads(1, 1)
    before = snapshot()

    with pytest.raises(IdempotencyConflict):
        apply_quota_reset(event_id="evt", body_sha256=SHA_B, provider_ids=None)

    assert snapshot() == before


@pytest.mark.django_db
def test_unknown_providers_raise_and_roll_back_the_event_row(seeded):
    submit_leads(1, 1)
    before = snapshot()

    with pytest.raises(UnknownProviders) as raised:
        apply_quota_reset(event_id="evt", body_sha256=SHA_A, provider_ids=[1, 42, 0, -3])

    assert raised.value.provider_ids == [-3, 0, 42]
    assert snapshot() == before
    assert not ProcessedEvent.objects.exists()


@pytest.mark.django_db
def test_partial_reset_keeps_cursors_and_other_providers(seeded):
    submit_leads(1, 2)
    cursors = list(PoolCursor.objects.values_list("service_id", "position"))
    before = {row[0]: row for row in snapshot()}

    outcome = apply_quota_reset(event_id="evt", body_sha256=SHA_A, provider_ids=[3, 1, 3])

    after = {row[0]: row for row in snapshot()}
    assert outcome.providers_reset == 2
    assert ProcessedEvent.objects.get().provider_ids == [1, 3]
    assert after[1][1:4] == (10, 2, 0)
    assert after[3][1:4] == (10, 2, 0)
    assert after[2] == before[2]
    assert after[4] == before[4]
    assert list(PoolCursor.objects.values_list("service_id", "position")) == cursors
    assert_invariants()


@pytest.mark.django_db
def test_reset_that_frees_no_capacity_for_waiting_leads_allocates_none(seeded):
    leads = submit_leads(1, 14)  # the 14th waits: service 1 is out of quota
    assert leads[-1].status == Lead.Status.WAITING

    outcome = apply_quota_reset(event_id="evt", body_sha256=SHA_A, provider_ids=[5, 6, 7, 8])

    assert outcome.leads_allocated == 0
    assert ProcessedEvent.objects.get().leads_allocated == 0
    assert Lead.objects.get(pk=leads[-1].pk).status == Lead.Status.WAITING


@pytest.mark.django_db
def test_drain_records_what_it_allocated_on_the_event_row(seeded):
    submit_leads(2, 15)  # service 2: 40 quota, 13 allocated, 2 waiting

    outcome = apply_quota_reset(event_id="evt", body_sha256=SHA_A, provider_ids=[5, 6, 7, 8])

    assert outcome.leads_allocated == 2
    assert ProcessedEvent.objects.get().leads_allocated == 2
    assert not Lead.objects.waiting().exists()
    assert_invariants()


@pytest.mark.django_db
def test_failed_drain_leaves_the_reset_applied_and_the_count_unrecorded(seeded, monkeypatch):
    submit_leads(1, 14)

    def broken_drain() -> int:
        raise RuntimeError("drain crashed")

    monkeypatch.setattr(webhooks.services, "allocate_waiting_leads", broken_drain)

    outcome = apply_quota_reset(event_id="evt", body_sha256=SHA_A, provider_ids=None)

    assert outcome.status == APPLIED
    assert outcome.leads_allocated is None
    assert ProcessedEvent.objects.get().leads_allocated is None
    assert set(Provider.objects.values_list("cycle", flat=True)) == {2}
    assert Lead.objects.waiting().count() == 1


@pytest.mark.django_db
def test_allocations_and_quota_resets_leave_catalogue_versions_alone(seeded):
    """Versions count catalogue edits (providers/models.py): an admin form opened before
    a lead or a reset is not stale because of them."""
    Provider.objects.filter(pk=3).update(quota=1, remaining_quota=1)  # version 2
    submit_leads(1, 1)
    assert Provider.objects.get(pk=3).remaining_quota == 0  # its eligibility flipped

    apply_quota_reset(event_id="evt", body_sha256="a" * 64, provider_ids=None)

    versions = list(Provider.objects.order_by("pk").values_list("version", flat=True))
    assert versions == [1, 1, 2, 1, 1, 1, 1, 1]
    assert set(Membership.objects.values_list("version", flat=True)) == {1}
