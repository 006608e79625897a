"""The allocation rule as a pure function: no database."""

from allocation.engine import (
    ALREADY_SELECTED,
    MANDATORY,
    NO_QUOTA,
    NOT_ENOUGH_PROVIDERS,
    PAUSED,
    POOL,
    QUEUED,
    SELECTED,
    SKIPPED,
    TRACE_LIMIT,
    Candidate,
    TraceEntry,
    choose_providers,
    walk_order,
)


def catalogue(mandatory_ids, pool_ids, *, quota=None, paused=()):
    """Candidates for a service, positions 1..n in the order given."""
    quota = quota or {}

    def make(ids):
        return [
            Candidate(pid, pos, active=pid not in paused, remaining_quota=quota.get(pid, 10))
            for pos, pid in enumerate(ids, start=1)
        ]

    return make(mandatory_ids), make(pool_ids)


def run_leads(mandatory, pool, n, cursor=None):
    """Allocate n leads in a row, applying each decision to the quotas as the service would."""
    remaining = {c.provider_id: c.remaining_quota for c in [*mandatory, *pool]}
    results = []
    for _ in range(n):

        def current(cands):
            return [
                Candidate(c.provider_id, c.position, c.active, remaining[c.provider_id])
                for c in cands
            ]

        decision = choose_providers(current(mandatory), current(pool), cursor=cursor)
        if decision.complete:
            for pid in decision.provider_ids:
                remaining[pid] -= 1
            cursor = decision.cursor
        results.append(decision)
    return results, cursor


def test_spec_worked_example_service_1():
    mandatory, pool = catalogue([1], [2, 3, 4])

    decisions, cursor = run_leads(mandatory, pool, 3)

    assert [d.provider_ids for d in decisions] == [[1, 2, 3], [1, 4, 2], [1, 3, 4]]
    assert cursor == 3  # P4 sits at pool position 3


def test_spec_worked_example_service_3():
    mandatory, pool = catalogue([1, 4], [2, 3, 5, 6, 7, 8])

    decisions, _ = run_leads(mandatory, pool, 3)

    assert [d.provider_ids for d in decisions] == [[1, 4, 2], [1, 4, 3], [1, 4, 5]]


def test_providers_are_listed_mandatory_first_then_pool_in_walk_order():
    mandatory, pool = catalogue([1, 4], [2, 3])

    decision = choose_providers(mandatory, pool, cursor=None)

    assert [(p.provider_id, p.role) for p in decision.picks] == [
        (1, MANDATORY),
        (4, MANDATORY),
        (2, POOL),
    ]


def test_exhausted_mandatory_provider_is_backfilled_from_the_pool():
    mandatory, pool = catalogue([1], [2, 3, 4], quota={1: 0})

    decision = choose_providers(mandatory, pool, cursor=None)

    assert decision.provider_ids == [2, 3, 4]
    assert decision.trace[0] == TraceEntry(1, MANDATORY, SKIPPED, NO_QUOTA)
    assert decision.cursor == 3


def test_paused_pool_provider_uses_no_slot_and_gets_no_make_up_turn():
    mandatory, pool = catalogue([1], [2, 3, 4, 5], paused={3})

    first = choose_providers(mandatory, pool, cursor=None)
    # P3 is active again for the next lead, but the cursor has passed it.
    mandatory, pool = catalogue([1], [2, 3, 4, 5])
    second = choose_providers(mandatory, pool, cursor=first.cursor)

    assert first.provider_ids == [1, 2, 4]
    assert TraceEntry(3, POOL, SKIPPED, PAUSED) in first.trace
    assert second.provider_ids == [1, 5, 2]


def test_paused_mandatory_provider_is_skipped_and_backfilled():
    mandatory, pool = catalogue([1], [2, 3, 4], paused={1})

    decision = choose_providers(mandatory, pool, cursor=None)

    assert decision.provider_ids == [2, 3, 4]
    assert decision.trace[0] == TraceEntry(1, MANDATORY, SKIPPED, PAUSED)


def test_pool_walk_wraps_around_after_the_last_position():
    mandatory, pool = catalogue([1], [2, 3, 4])

    decision = choose_providers(mandatory, pool, cursor=2)

    assert decision.provider_ids == [1, 4, 2]
    assert decision.cursor == 1


def test_cursor_with_no_pool_provider_after_it_starts_at_the_first_position():
    assert [c.provider_id for c in walk_order(catalogue([], [2, 3, 4])[1], 9)] == [2, 3, 4]


def test_walk_goes_at_most_once_around():
    mandatory, pool = catalogue([], [2, 3])

    decision = choose_providers(mandatory, pool, cursor=1)

    assert not decision.complete
    assert [e.provider_id for e in decision.trace] == [3, 2]


def test_trace_records_every_examined_provider_with_outcome_and_reason():
    mandatory, pool = catalogue([1, 4], [2, 3, 5, 6], quota={4: 0, 3: 0}, paused={2})

    decision = choose_providers(mandatory, pool, cursor=None)

    assert decision.trace == (
        TraceEntry(1, MANDATORY, SELECTED),
        TraceEntry(4, MANDATORY, SKIPPED, NO_QUOTA),
        TraceEntry(2, POOL, SKIPPED, PAUSED),
        TraceEntry(3, POOL, SKIPPED, NO_QUOTA),
        TraceEntry(5, POOL, SELECTED),
        TraceEntry(6, POOL, SELECTED),
    )
    assert decision.trace[1].as_dict() == {
        "provider_id": 4,
        "role": MANDATORY,
        "outcome": SKIPPED,
        "reason": NO_QUOTA,
    }


def test_provider_both_mandatory_and_in_pool_is_skipped_as_already_selected():
    mandatory, pool = catalogue([1], [1, 2, 3])

    decision = choose_providers(mandatory, pool, cursor=None)

    assert decision.provider_ids == [1, 2, 3]
    assert TraceEntry(1, POOL, SKIPPED, ALREADY_SELECTED) in decision.trace


def test_fewer_than_three_eligible_means_waiting_with_nothing_changed():
    mandatory, pool = catalogue([1], [2, 3, 4], quota={3: 0, 4: 0})

    decision = choose_providers(mandatory, pool, cursor=2)

    assert not decision.complete
    assert decision.wait_reason == NOT_ENOUGH_PROVIDERS
    assert decision.picks == ()
    assert decision.cursor == 2


def test_new_lead_waits_behind_a_waiting_lead_of_the_same_service():
    mandatory, pool = catalogue([1], [2, 3, 4])

    decision = choose_providers(mandatory, pool, cursor=None, queued=True)

    assert not decision.complete
    assert decision.wait_reason == QUEUED
    assert decision.picks == ()
    assert decision.cursor is None


def test_trace_is_capped():
    mandatory, pool = catalogue([], list(range(2, 200)), quota=dict.fromkeys(range(2, 197), 0))

    decision = choose_providers(mandatory, pool, cursor=None)

    assert decision.provider_ids == [197, 198, 199]
    assert len(decision.trace) == TRACE_LIMIT


def test_three_mandatory_providers_leave_the_cursor_alone():
    mandatory, pool = catalogue([1, 2, 3], [4, 5])

    decision = choose_providers(mandatory, pool, cursor=1)

    assert decision.provider_ids == [1, 2, 3]
    assert decision.cursor == 1


def test_subset_of_pool_with_every_eligible_provider_decides_like_the_whole_pool():
    mandatory, pool = catalogue([1], [2, 3, 4, 5, 6], quota={3: 0, 4: 0})
    eligible_only = [c for c in pool if c.remaining_quota > 0]

    whole = choose_providers(mandatory, pool, cursor=None)
    subset = choose_providers(mandatory, eligible_only, cursor=None)

    assert whole.provider_ids == subset.provider_ids == [1, 2, 5]
    assert whole.cursor == subset.cursor
