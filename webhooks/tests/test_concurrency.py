"""The webhook under real concurrency, on PostgreSQL: threads, each with its own connection."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from allocation.models import Lead
from allocation.services import LeadInput, submit_lead
from providers.models import Membership, Provider, Service
from providers.services import (
    MembershipEdit,
    pause_provider,
    resume_provider,
    save_memberships,
    update_provider,
)
from webhooks.models import ProcessedEvent
from webhooks.services import apply_quota_reset, canonical_body_sha256
from webhooks.tests.helpers import assert_invariants, payload, post

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency]


def run_together(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run every job in its own thread, all released at once; return results or exceptions."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)

    def run(index: int, job: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = job()
        except BaseException as exc:
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hung (deadlock?)"
    return results


def deliver(body: bytes) -> Callable[[], tuple[int, dict]]:
    def job() -> tuple[int, dict]:
        response = post(Client(), body)
        return response.status_code, response.json()

    return job


def test_twenty_concurrent_deliveries_of_one_event_apply_exactly_once(seeded_tx):
    body = payload("reset_all.json")

    results = run_together([deliver(body) for _ in range(20)])

    assert [status for status, _ in results] == [200] * 20
    assert Counter(answer["status"] for _, answer in results) == {"applied": 1, "duplicate": 19}
    assert {answer["eventId"] for _, answer in results} == {"evt_2024_11_reset_all"}
    assert ProcessedEvent.objects.count() == 1
    assert set(Provider.objects.values_list("cycle", flat=True)) == {2}
    assert_invariants()


def test_concurrent_deliveries_of_one_id_with_two_bodies_apply_one_and_never_fail(seeded_tx):
    first, second = payload("reset_some.json"), payload("reset_some_other_body.json")

    results = run_together(
        [deliver(first) for _ in range(10)] + [deliver(second) for _ in range(10)]
    )

    statuses = [status for status, _ in results]
    assert all(status in (200, 422) for status, _ in results), statuses
    applied = [i for i, (_, answer) in enumerate(results) if answer.get("status") == "applied"]
    assert len(applied) == 1
    winner = range(10) if applied[0] < 10 else range(10, 20)
    for i, (status, answer) in enumerate(results):
        if i in winner:
            assert status == 200
        else:
            assert (status, answer["error"]["code"]) == (422, "idempotency_conflict")
    assert ProcessedEvent.objects.count() == 1
    assert Provider.objects.get(pk=1).cycle == 2
    assert_invariants()


def test_two_different_events_at_once_both_apply(seeded_tx):
    results = run_together([deliver(b'{"eventId": "evt_a"}'), deliver(b'{"eventId": "evt_b"}')] * 3)

    assert [status for status, _ in results] == [200] * 6
    assert Counter(answer["status"] for _, answer in results) == {"applied": 2, "duplicate": 4}
    assert set(Provider.objects.values_list("cycle", flat=True)) == {3}
    assert ProcessedEvent.objects.count() == 2
    assert_invariants()


def test_overlapping_partial_resets_at_once_neither_deadlock_nor_lose_a_cycle(seeded_tx):
    one = b'{"eventId": "evt_one", "providerIds": [8, 1, 4, 6]}'
    two = b'{"eventId": "evt_two", "providerIds": [6, 4, 8, 2]}'

    results = run_together([deliver(one), deliver(two)] * 4)

    assert [status for status, _ in results] == [200] * 8
    cycles = dict(Provider.objects.values_list("pk", "cycle"))
    assert cycles == {1: 2, 2: 2, 3: 1, 4: 3, 5: 1, 6: 3, 7: 1, 8: 3}
    assert_invariants()


def test_resets_during_a_storm_of_leads_keep_every_invariant(seeded_tx):
    stored = [0]
    progress = threading.Condition()

    def leads(worker: int) -> Callable[[], list[str]]:
        def job() -> list[str]:
            statuses = []
            for i in range(10):
                lead = LeadInput(
                    service_id=1 + (worker + i) % 3,
                    name=f"Storm {worker}-{i}",
                    phone=f"+1555{worker:02d}{i:05d}",
                    city="Springfield",
                )
                statuses.append(submit_lead(lead).status)
                with progress:
                    stored[0] += 1
                    progress.notify_all()
            return statuses

        return job

    def reset(event_id: str, after: int) -> Callable[[], tuple[int, dict]]:
        def job() -> tuple[int, dict]:
            # In the middle of the storm: once `after` of its 80 leads are stored, by count, not
            # by the clock, so a slow machine moves the reset along with the storm.
            with progress:
                assert progress.wait_for(lambda: stored[0] >= after, timeout=60)
            return deliver(f'{{"eventId": "{event_id}"}}'.encode())()

        return job

    jobs = [leads(worker) for worker in range(8)]
    jobs += [reset("evt_storm_1", 10), reset("evt_storm_2", 40)]

    results = run_together(jobs)

    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    assert [r[0] for r in results[8:]] == [200, 200]
    assert all(r[1]["status"] == "applied" for r in results[8:])
    assert Lead.objects.count() == 80
    assert set(Provider.objects.values_list("cycle", flat=True)) == {3}
    assert ProcessedEvent.objects.filter(leads_allocated__isnull=False).count() == 2
    assert_invariants()


def test_storm_of_leads_resets_and_admin_edits_keeps_every_invariant(seeded_tx, jobs, caplog):
    """Leads from six threads, quota resets through the webhook's service, and admin edits
    through the catalogue's services (pause, resume and quota raises of providers; membership
    saves that move one row and add or remove another), all at once."""
    caplog.set_level(logging.INFO, logger="allocation.services")
    events = ["evt_storm_a", "evt_storm_b", "evt_storm_c"]

    def resets() -> None:
        for event_id in [*events, events[0]]:  # the last one is a duplicate delivery
            body = {"eventId": event_id}
            apply_quota_reset(
                event_id=event_id, body_sha256=canonical_body_sha256(body), provider_ids=None
            )

    def provider_edits() -> None:
        for round_number in range(12):
            for pk in (2, 6):
                provider = Provider.objects.get(pk=pk)
                if provider.status == Provider.Status.ACTIVE:
                    pause_provider(provider)
                else:
                    resume_provider(provider)
            # Raised only: lowering below what is used breaks "remaining == quota - used".
            three = Provider.objects.get(pk=3)
            update_provider(three, quota=three.quota + 1, expected_version=three.version)
            if round_number % 4 == 0:
                update_provider(Provider.objects.get(pk=7), name=f"Provider 7 ({round_number})")

    def membership_edits() -> None:
        service = Service.objects.get(pk=2)
        for _ in range(12):
            rows = {m.provider_id: m for m in Membership.objects.filter(service=service)}
            moved, there = rows[8], 3 in rows
            edits = [
                MembershipEdit(
                    moved.pk, {"position": 3 if there else 7}, seen_version=moved.version
                )
            ]
            if there:
                edits.append(MembershipEdit(rows[3].pk, delete=True, seen_version=rows[3].version))
            else:
                edits.append(
                    MembershipEdit(None, {"provider_id": 3, "role": "pool", "position": 6})
                )
            save_memberships(service, edits)

    def leads(worker: int) -> Callable[[], None]:
        def job() -> None:
            for i in range(20):
                submit_lead(
                    LeadInput(
                        service_id=1 + (worker + i) % 3,
                        name=f"Storm {worker}-{i}",
                        phone=f"+1555{worker:02d}{i:05d}",
                        city="Springfield",
                    )
                )

        return job

    results = run_together(
        [leads(worker) for worker in range(6)] + [resets, provider_edits, membership_edits]
    )

    assert [r for r in results if isinstance(r, BaseException)] == []
    assert [r.getMessage() for r in caplog.records if "deadlock" in r.getMessage()] == []
    # No lead lost, none half-allocated, no provider over quota, counters consistent.
    assert Lead.objects.count() == 120
    assert Lead.objects.allocated().count() + Lead.objects.waiting().count() == 120
    assert_invariants()
    for provider in Provider.objects.all():
        assert provider.leads_this_cycle <= provider.quota, provider
    # No double reset: three events, each applied once to every provider.
    assert ProcessedEvent.objects.count() == 3
    assert set(Provider.objects.values_list("cycle", flat=True)) == {4}
    # The edits all landed: 12 toggles of each status, 12 raises, 12 membership saves.
    assert Provider.objects.get(pk=3).quota == 22
    assert set(Provider.objects.filter(pk__in=[2, 6]).values_list("status", flat=True)) == {
        "active"
    }
    assert Membership.objects.get(service_id=2, provider_id=8).position == 3
    assert not Membership.objects.filter(service_id=2, provider_id=3).exists()
