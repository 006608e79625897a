"""Every statement providers runs by hand, and nothing else (STYLE: hand-written SQL in one
module per app): the seed's sequence reset and the dashboard's pool window (selectors.py).
Table names come from the models; it names no other app's table."""

from __future__ import annotations

from providers.models import Membership, PoolCursor, Provider, Service

# The seed gives services and providers explicit ids, which leaves their sequences behind: one
# statement per table moves its sequence past its rows (seed_catalogue).
SEQUENCES_PAST_SEEDED_ROWS = tuple(
    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
    f"GREATEST((SELECT MAX(id) FROM {table}), 1))"
    for table in (Service._meta.db_table, Provider._meta.db_table)
)

MEMBERSHIP = Membership._meta.db_table
PROVIDER = Provider._meta.db_table
POOL_CURSOR = PoolCursor._meta.db_table
# Written out, not a parameter: the planner then matches the partial indexes' predicates.
POOL = Membership.Role.POOL.value

# In the order selectors.PoolRow takes them.
_POOL_COLUMNS = (
    "m.provider_id, m.position, p.name, p.status, p.quota, p.remaining_quota, "
    "p.leads_this_cycle, p.cycle"
)


def _pool_part(kind: str, condition: str, limit: str) -> str:
    return f"""(
    SELECT '{kind}' AS kind, {_POOL_COLUMNS} FROM {MEMBERSHIP} AS m
    JOIN {PROVIDER} AS p ON p.id = m.provider_id
    WHERE m.service_id = svc.id AND m.role = '{POOL}' AND {condition}
    ORDER BY m.position LIMIT {limit})"""


# Per service of %(ids)s (with its next pool provider in %(next)s): the pool rows after the
# cursor and from the start up to it (at most %(window)s each), the cursor's own row and the
# next pool provider's, each tagged with its kind; a handful of indexed reads per service.
POOL_WINDOW = f"""
SELECT svc.id, w.* FROM (
    SELECT s.id, s.next_id, COALESCE(c.position, 0) AS cur
    FROM unnest(%(ids)s::bigint[], %(next)s::bigint[]) AS s(id, next_id)
    LEFT JOIN {POOL_CURSOR} AS c ON c.service_id = s.id
) AS svc
CROSS JOIN LATERAL (
    {_pool_part("after", "m.position > svc.cur", "%(window)s")}
    UNION ALL {_pool_part("wrap", "m.position <= svc.cur", "%(window)s")}
    UNION ALL {_pool_part("cursor", "m.position = svc.cur", "1")}
    UNION ALL {_pool_part("next", "m.provider_id = svc.next_id", "1")}
) AS w
"""
