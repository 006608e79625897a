"""Catalogue locks under real concurrency: threads with their own connections, ordered by locks
and events (never by sleeping), invariants read from the database afterwards."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest
from django.db import connection, transaction

from allocation.tests.test_concurrency import assert_invariants, lead_jobs
from leaddist.testing import storm, wait_for_lock_waiters
from providers.models import Membership, Provider
from providers.services import MembershipEdit, save_memberships

pytestmark = pytest.mark.django_db(transaction=True)


class Held:
    """A transaction in its own thread: runs ``first``, holds its locks until released, then
    runs ``then`` and commits. Errors are kept for the test to assert on."""

    def __init__(self, first: Callable[[], None], then: Callable[[], None] = lambda: None):
        self.first, self.then = first, then
        self.holding, self.release = threading.Event(), threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            with transaction.atomic():
                self.first()
                self.holding.set()
                assert self.release.wait(timeout=30), "never released"
                self.then()
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.holding.set()
            connection.close()

    def start(self) -> Held:
        self.thread.start()
        assert self.holding.wait(timeout=30)
        return self

    def finish(self) -> None:
        self.release.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "a thread hung"


def in_thread(job: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            job()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def lock_provider_rows(*pks: int) -> None:
    """What an allocation of another service does to its candidates: FOR UPDATE, by pk."""
    with connection.cursor() as cursor:
        for pk in pks:
            cursor.execute("SELECT id FROM providers_provider WHERE id = %s FOR UPDATE", [pk])


def eligible(service_id: int, provider_id: int) -> bool:
    return Membership.objects.get(service_id=service_id, provider_id=provider_id).provider_eligible


# --- the eligibility trigger reads its provider FOR SHARE (migration providers 0005) ----------


def test_membership_inserted_while_its_provider_resumes_waits_and_ends_eligible(seeded_tx):
    Provider.objects.filter(pk=7).update(status="paused")
    resume = Held(lambda: Provider.objects.filter(pk=7).update(status="active")).start()

    # Straight to the table, past every service lock: the trigger alone must get it right.
    insert, errors = in_thread(
        lambda: Membership.objects.create(service_id=1, provider_id=7, role="pool", position=9)
    )
    try:
        wait_for_lock_waiters(1)  # the insert's trigger waits for the resume's row
    finally:
        resume.finish()
    insert.join(timeout=30)

    assert resume.errors == errors == []
    assert eligible(1, 7) is True


def test_provider_paused_while_a_membership_insert_is_open_waits_and_ends_ineligible(seeded_tx):
    insert = Held(
        lambda: Membership.objects.create(service_id=1, provider_id=7, role="pool", position=9)
    ).start()

    pause, errors = in_thread(lambda: Provider.objects.filter(pk=7).update(status="paused"))
    try:
        wait_for_lock_waiters(1)  # the pause waits for the insert's share lock
    finally:
        insert.finish()
    pause.join(timeout=30)

    assert insert.errors == errors == []
    assert eligible(1, 7) is False
    assert eligible(2, 7) is False


def test_quota_taken_to_zero_while_a_membership_moves_to_that_provider(seeded_tx):
    Provider.objects.filter(pk=7).update(quota=1, remaining_quota=1)
    p4 = Membership.objects.get(service_id=1, provider_id=4)
    take = Held(lambda: Provider.objects.filter(pk=7).update(remaining_quota=0)).start()

    move, errors = in_thread(lambda: Membership.objects.filter(pk=p4.pk).update(provider_id=7))
    try:
        wait_for_lock_waiters(1)
    finally:
        take.finish()
    move.join(timeout=30)

    assert take.errors == errors == []
    assert eligible(1, 7) is False


# --- membership saves lock their providers first, in pk order ---------------------------------


def test_membership_save_waits_for_an_allocation_holding_a_provider_instead_of_deadlocking(
    seeded_tx,
):
    """Service 2's save changes P8's row and adds P3. An allocation of another service holds
    P3 and then wants P8. Had the save touched P8's row first (its trigger takes P8 FOR
    SHARE) and then waited for P3, the two would deadlock; it locks P3 and P8 first, in order."""
    allocation = Held(lambda: lock_provider_rows(3), lambda: lock_provider_rows(8)).start()
    p8 = Membership.objects.get(service_id=2, provider_id=8)
    edits = [
        MembershipEdit(p8.pk, {"position": 5}, seen_version=p8.version),
        MembershipEdit(None, {"provider_id": 3, "role": "pool", "position": 4}),
    ]

    save, errors = in_thread(lambda: save_memberships(p8.service, edits))
    try:
        wait_for_lock_waiters(1)  # the save waits for P3, holding no provider yet
    finally:
        allocation.finish()  # takes P8 without waiting, and commits
    save.join(timeout=30)

    assert allocation.errors == errors == []
    assert Membership.objects.get(pk=p8.pk).position == 5
    assert eligible(2, 3) is True


def test_membership_saves_racing_allocations_neither_deadlock_nor_break_invariants(
    seeded_tx, caplog
):
    """Allocations of every service run while two operators save service 1's and service 2's
    memberships over and over: each save changes one row and adds (or removes) another, whose
    providers the other services allocate from."""
    caplog.set_level(logging.INFO, logger="allocation.services")
    Provider.objects.update(quota=1000, remaining_quota=1000)

    def toggle(service_id: int, moved: int, added: int, rounds: int) -> Callable[[], None]:
        def job() -> None:
            for _ in range(rounds):
                rows = {m.provider_id: m for m in Membership.objects.filter(service_id=service_id)}
                row = rows[moved]
                there = added in rows
                edits = [
                    MembershipEdit(
                        row.pk, {"position": 3 if there else 7}, seen_version=row.version
                    ),
                    MembershipEdit(rows[added].pk, delete=True, seen_version=rows[added].version)
                    if there
                    else MembershipEdit(
                        None, {"provider_id": added, "role": "pool", "position": 6}
                    ),
                ]
                save_memberships(row.service, edits)

        return job

    jobs = [*lead_jobs(160, [1, 2, 3]), toggle(1, 4, 7, 25), toggle(2, 8, 3, 25)]

    errors = storm(jobs[::-1])

    assert errors == []
    deadlocks = [r.getMessage() for r in caplog.records if "deadlock" in r.getMessage()]
    assert deadlocks == []
    assert_invariants()
    # An odd number of rounds: each toggle ends with its row moved and its provider added.
    assert Membership.objects.filter(service_id=1, provider_id=7).exists()
    assert Membership.objects.filter(service_id=2, provider_id=3).exists()
    assert eligible(1, 7) is True
    assert eligible(2, 3) is True


def test_a_membership_committed_before_the_cursor_locks_still_gets_its_cursor_locked(
    seeded_tx, monkeypatch
):
    """Provider 8 serves services 2 and 3. Its resume reads those services, and before it locks
    their cursors another transaction commits Provider 8 into service 1. The resume must still
    hold service 1's cursor, and announce service 1 for a drain, not only 2 and 3."""
    from django.db.models import Max

    from providers import locks
    from providers.services import pause_provider, resume_provider
    from providers.signals import capacity_added

    pause_provider(Provider.objects.get(pk=8))
    real_lock_cursors = locks.lock_cursors
    locked_sets: list[list[int]] = []

    def add_membership() -> None:
        last = Membership.objects.filter(service_id=1, role="pool").aggregate(Max("position"))
        Membership.objects.create(
            service_id=1, provider_id=8, role="pool", position=last["position__max"] + 1
        )

    def lock_cursors_after_a_commit(service_ids):
        ids = sorted(set(service_ids))
        if not locked_sets:  # the first pass: the other transaction commits in between
            thread, errors = in_thread(add_membership)
            thread.join(timeout=30)
            assert not errors, errors
        locked_sets.append(ids)
        return real_lock_cursors(ids)

    announced: list[list[int]] = []

    def on_capacity(sender, service_ids, **kwargs):
        announced.append(sorted(service_ids))

    monkeypatch.setattr(locks, "lock_cursors", lock_cursors_after_a_commit)
    capacity_added.connect(on_capacity)
    try:
        resume_provider(Provider.objects.get(pk=8))
    finally:
        capacity_added.disconnect(on_capacity)

    assert locked_sets == [[2, 3], [1, 2, 3]]  # the second pass holds service 1's cursor too
    assert announced == [[1, 2, 3]]
    assert Provider.objects.get(pk=8).status == "active"
