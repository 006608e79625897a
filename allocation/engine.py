"""The allocation rule of SPEC §2 as a pure function: plain values in, a decision out.

Nothing here touches the database. The service layer loads and locks the rows, hands their
state to :func:`choose_providers` and writes back what it decided. SPEC §2a's routing rules
reach it as each candidate's ``blocked`` reason, which the caller computes with
:func:`providers.routing.routing_reason` at the lead's time; a candidate without one is decided
exactly as before the routing rules existed.

One reason per skipped candidate, the first that applies: ``already_selected``, ``paused``,
``no_quota``, then the routing reason (``out_of_area``, ``time_off``, ``off_hours``,
``weekly_cap``, ``daily_cap``, in that order: providers/routing.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

SLOTS = 3
TRACE_LIMIT = 50

MANDATORY = "mandatory"
POOL = "pool"

SELECTED = "selected"
SKIPPED = "skipped"

NO_QUOTA = "no_quota"
PAUSED = "paused"
ALREADY_SELECTED = "already_selected"

NOT_ENOUGH_PROVIDERS = "not_enough_providers"
QUEUED = "queued"


@dataclass(frozen=True)
class Candidate:
    """A provider's state as the engine sees it: under lock, or known ineligible."""

    provider_id: int
    position: int
    active: bool = True
    remaining_quota: int = 1
    # Why its routing rules refuse this lead (providers.routing), or None.
    blocked: str | None = None

    @property
    def eligible(self) -> bool:
        return self.active and self.remaining_quota > 0 and self.blocked is None


@dataclass(frozen=True)
class TraceEntry:
    provider_id: int
    role: str
    outcome: str
    reason: str | None = None

    def as_dict(self) -> dict[str, object]:
        entry: dict[str, object] = {
            "provider_id": self.provider_id,
            "role": self.role,
            "outcome": self.outcome,
        }
        if self.reason:
            entry["reason"] = self.reason
        return entry


@dataclass(frozen=True)
class Pick:
    provider_id: int
    role: str


@dataclass(frozen=True)
class Decision:
    picks: tuple[Pick, ...]
    trace: tuple[TraceEntry, ...]
    # The cursor to store: the last pool position picked, or the old cursor when the lead waits
    # or no pool provider was needed.
    cursor: int | None
    wait_reason: str | None = None
    complete: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "complete", self.wait_reason is None)

    @property
    def provider_ids(self) -> list[int]:
        return [pick.provider_id for pick in self.picks]


def _skip_reason(candidate: Candidate, selected: set[int]) -> str | None:
    if candidate.provider_id in selected:
        return ALREADY_SELECTED
    if not candidate.active:
        return PAUSED
    if candidate.remaining_quota <= 0:
        return NO_QUOTA
    return candidate.blocked


def walk_key(position: int, cursor: int | None) -> tuple[bool, int]:
    """Sort key of a pool position in the walk: after the cursor first, then from the start."""
    return (cursor is not None and position <= cursor, position)


def walk_order(pool: Sequence[Candidate], cursor: int | None) -> list[Candidate]:
    """The pool once around, starting just after the cursor (or at the first position)."""
    return sorted(pool, key=lambda c: walk_key(c.position, cursor))


def choose_providers(
    mandatory: Sequence[Candidate],
    pool: Sequence[Candidate],
    *,
    cursor: int | None,
    slots: int = SLOTS,
    queued: bool = False,
) -> Decision:
    """Pick mandatory providers first, then walk the pool once around from after the cursor.

    ``pool`` may be the whole pool or any subset of it that contains every eligible provider
    up to the last one needed: providers left out are taken to be ineligible, so they change
    only the trace. ``queued`` means an older lead of the same service is waiting, and this
    one must wait behind it whatever the quotas say.
    """
    if queued:
        return Decision(picks=(), trace=(), cursor=cursor, wait_reason=QUEUED)

    picks: list[Pick] = []
    trace: list[TraceEntry] = []
    selected: set[int] = set()

    def examine(candidate: Candidate, role: str) -> bool:
        reason = _skip_reason(candidate, selected)
        if reason is None:
            picks.append(Pick(candidate.provider_id, role))
            selected.add(candidate.provider_id)
            trace.append(TraceEntry(candidate.provider_id, role, SELECTED))
            return True
        trace.append(TraceEntry(candidate.provider_id, role, SKIPPED, reason))
        return False

    for candidate in sorted(mandatory, key=lambda c: c.position):
        if len(picks) == slots:
            break
        examine(candidate, MANDATORY)

    new_cursor = cursor
    for candidate in walk_order(pool, cursor):
        if len(picks) == slots:
            break
        if examine(candidate, POOL):
            new_cursor = candidate.position

    trace_out = tuple(trace[:TRACE_LIMIT])
    if len(picks) < slots:
        # Change nothing: the lead waits and the cursor stays where it was.
        return Decision(picks=(), trace=trace_out, cursor=cursor, wait_reason=NOT_ENOUGH_PROVIDERS)
    return Decision(picks=tuple(picks), trace=trace_out, cursor=new_cursor)
