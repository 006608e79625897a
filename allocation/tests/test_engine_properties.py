"""Property-based checks: the engine against a plain reference implementation of SPEC §2."""

import os

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allocation.engine import Candidate, choose_providers
from allocation.models import Lead
from allocation.services import LeadInput, submit_lead
from providers.models import Membership, PoolCursor, Provider, Service


def reference(mandatory, pool, cursor):
    """SPEC §2 read literally: returns (provider ids, new cursor) or (None, cursor)."""
    chosen = []
    for c in sorted(mandatory, key=lambda c: c.position):
        if len(chosen) < 3 and c.active and c.remaining_quota > 0 and c.provider_id not in chosen:
            chosen.append(c.provider_id)
    ring = sorted(pool, key=lambda c: c.position)
    start = 0
    if cursor is not None:
        later = [i for i, c in enumerate(ring) if c.position > cursor]
        start = later[0] if later else 0
    last = cursor
    for step in range(len(ring)):
        if len(chosen) == 3:
            break
        c = ring[(start + step) % len(ring)]
        if c.active and c.remaining_quota > 0 and c.provider_id not in chosen:
            chosen.append(c.provider_id)
            last = c.position
    if len(chosen) < 3:
        return None, cursor
    return chosen, last


@st.composite
def catalogues(draw, max_providers=12):
    n = draw(st.integers(min_value=0, max_value=max_providers))
    ids = list(range(1, n + 1))
    n_mandatory = draw(st.integers(min_value=0, max_value=min(3, n)))
    mandatory_ids = draw(st.permutations(ids))[:n_mandatory]
    pool_ids = [i for i in ids if i not in mandatory_ids]
    # Now and then a provider sits in both lists: the engine must skip it as already selected.
    if mandatory_ids and pool_ids and draw(st.booleans()):
        pool_ids.append(mandatory_ids[0])
    positions = draw(
        st.lists(
            st.integers(min_value=1, max_value=60),
            min_size=len(pool_ids),
            max_size=len(pool_ids),
            unique=True,
        )
    )
    quota = {i: draw(st.integers(min_value=0, max_value=3)) for i in ids}
    paused = {i for i in ids if draw(st.integers(min_value=0, max_value=5)) == 0}
    mandatory = [
        Candidate(pid, pos, pid not in paused, quota[pid])
        for pos, pid in enumerate(mandatory_ids, start=1)
    ]
    pool = [
        Candidate(pid, pos, pid not in paused, quota[pid])
        for pid, pos in zip(pool_ids, positions, strict=True)
    ]
    cursor = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=62)))
    return mandatory, pool, cursor


def apply(candidates, remaining):
    return [
        Candidate(c.provider_id, c.position, c.active, remaining[c.provider_id]) for c in candidates
    ]


@settings(max_examples=400)
@given(catalogues(), st.integers(min_value=1, max_value=8))
def test_decision_matches_reference_over_a_sequence_of_leads(catalogue, leads):
    mandatory, pool, cursor = catalogue
    remaining = {c.provider_id: c.remaining_quota for c in [*mandatory, *pool]}
    ref_cursor = cursor

    for _ in range(leads):
        decision = choose_providers(
            apply(mandatory, remaining), apply(pool, remaining), cursor=cursor
        )
        expected, ref_cursor = reference(
            apply(mandatory, remaining), apply(pool, remaining), ref_cursor
        )

        if expected is None:
            assert not decision.complete
            assert decision.picks == ()
        else:
            assert decision.provider_ids == expected
            assert len(set(decision.provider_ids)) == 3
        assert decision.cursor == ref_cursor
        for pid in decision.provider_ids:
            remaining[pid] -= 1
        cursor = decision.cursor


@st.composite
def db_catalogues(draw):
    # Big enough pools that the engine's bounded reads (the eligible window and the 50-row
    # walk) are exercised against the reference that sees the whole pool.
    n_pool = draw(st.integers(min_value=0, max_value=70))
    n_mandatory = draw(st.integers(min_value=0, max_value=3))
    positions = draw(
        st.lists(
            st.integers(min_value=1, max_value=400), min_size=n_pool, max_size=n_pool, unique=True
        )
    )
    states = [
        (draw(st.integers(min_value=0, max_value=2)), draw(st.integers(0, 7)) != 0)
        for _ in range(n_mandatory + n_pool)
    ]
    cursor = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=401)))
    leads = draw(st.integers(min_value=1, max_value=6))
    return n_mandatory, positions, states, cursor, leads


class _Rollback(Exception):
    pass


@pytest.mark.django_db
@settings(
    max_examples=int(os.environ.get("ENGINE_DB_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(db_catalogues())
def test_stored_allocations_match_reference_on_large_pools(catalogue):
    n_mandatory, positions, states, cursor, leads = catalogue

    try:
        with transaction.atomic():
            service = Service.objects.create(slug="prop", name="Prop")
            PoolCursor.objects.create(service=service, position=cursor)
            providers = [
                Provider.objects.create(
                    name=f"P{i}",
                    quota=2,
                    remaining_quota=quota,
                    status="active" if active else "paused",
                )
                for i, (quota, active) in enumerate(states)
            ]
            mandatory = [
                Candidate(p.pk, pos, p.status == "active", p.remaining_quota)
                for pos, p in enumerate(providers[:n_mandatory], start=1)
            ]
            pool = [
                Candidate(p.pk, pos, p.status == "active", p.remaining_quota)
                for p, pos in zip(providers[n_mandatory:], positions, strict=True)
            ]
            Membership.objects.bulk_create(
                [
                    Membership(
                        service=service,
                        provider_id=c.provider_id,
                        role="mandatory",
                        position=c.position,
                    )
                    for c in mandatory
                ]
                + [
                    Membership(
                        service=service, provider_id=c.provider_id, role="pool", position=c.position
                    )
                    for c in pool
                ]
            )
            remaining = {c.provider_id: c.remaining_quota for c in [*mandatory, *pool]}
            ref_cursor = cursor
            waiting_seen = False

            for n in range(leads):
                lead = submit_lead(
                    LeadInput(service_id=service.pk, name="x", phone=f"+1555{n:07d}", city="y")
                )
                expected, ref_cursor = reference(
                    apply(mandatory, remaining), apply(pool, remaining), ref_cursor
                )
                if waiting_seen:
                    expected = None  # queued behind the first waiting lead
                got = list(lead.allocations.order_by("rank").values_list("provider_id", flat=True))

                assert got == (expected or [])
                assert lead.status == (Lead.Status.ALLOCATED if expected else Lead.Status.WAITING)
                assert PoolCursor.objects.get(service=service).position == ref_cursor
                for pid in got:
                    remaining[pid] -= 1
                waiting_seen = waiting_seen or expected is None
            raise _Rollback
    except _Rollback:
        pass
