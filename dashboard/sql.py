"""Every statement the dashboard runs by hand, and nothing else (STYLE: SQL on a measured hot
path): its page reads (selectors.py) and /metrics' waiting queues.

Table names and choices come from the models. The dashboard has no tables of its own: each
statement reads several apps' rows (allocation's leads and allocations, providers' catalogue
and cursors, delivery's deliveries) in one query, which holds each page to a fixed number of
queries whatever the number of rows. These are reads only, listed in
leaddist/tests/test_layout.py's exceptions; moving them behind each app's selectors is left for
later (docs/ARCHITECTURE.md, "Known exceptions").
"""

from __future__ import annotations

from allocation.models import Allocation, Lead
from delivery.models import Delivery
from providers.models import Membership, PoolCursor, Provider, Service

LEAD = Lead._meta.db_table
ALLOCATION = Allocation._meta.db_table
SERVICE = Service._meta.db_table
PROVIDER = Provider._meta.db_table
MEMBERSHIP = Membership._meta.db_table
POOL_CURSOR = PoolCursor._meta.db_table
DELIVERY = Delivery._meta.db_table

# Written out, not parameters: the planner then matches the partial indexes' predicates
# (lead_waiting_queue: status = 'waiting'; alloc_pool_cycle: role = 'pool').
WAITING = Lead.Status.WAITING.value
POOL = Membership.Role.POOL.value
DELIVERED = Delivery.Status.DELIVERED.value
FAILED = Delivery.Status.FAILED.value

# The newest %s allocations of each provider of the bigint[] %s, through the (provider, -id)
# index: provider id, lead id, service name, allocated at.
LATEST_LEADS = f"""
SELECT p.id, a.lead_id, s.name, a.created_at
FROM unnest(%s::bigint[]) AS p(id)
CROSS JOIN LATERAL (
    SELECT lead_id, created_at FROM {ALLOCATION}
    WHERE provider_id = p.id ORDER BY id DESC LIMIT %s
) AS a
JOIN {LEAD} AS l ON l.id = a.lead_id
JOIN {SERVICE} AS s ON s.id = l.service_id
ORDER BY p.id, a.lead_id DESC
"""

# (provider id, delivered, finished) of each provider's last %s finished deliveries (delivered
# or failed), through the (provider, -id) index: the work does not grow with its history.
DELIVERY_RATES = f"""
SELECT p.id, count(*) FILTER (WHERE d.status = '{DELIVERED}'), count(*)
FROM unnest(%s::bigint[]) AS p(id)
CROSS JOIN LATERAL (
    SELECT status FROM {DELIVERY}
    WHERE provider_id = p.id AND status IN ('{DELIVERED}', '{FAILED}')
    ORDER BY id DESC LIMIT %s
) AS d
GROUP BY p.id
"""

# Through the partial index alloc_pool_cycle: at most a cycle's leads per provider shown.
_POOL_LEADS = f"""(
    SELECT count(*) FROM {ALLOCATION} AS a JOIN {LEAD} AS l ON l.id = a.lead_id
    WHERE a.provider_id = m.provider_id AND a.cycle = p.cycle AND a.role = '{POOL}'
      AND l.service_id = m.service_id)"""
# In the order selectors._chip() unpacks them.
_POOL_COLUMNS = (
    "m.provider_id, m.position, p.name, p.status, p.quota, p.remaining_quota, "
    f"p.leads_this_cycle, {_POOL_LEADS} AS pool_leads"
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
POOL_ROWS = f"""
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

# Per service, through the partial index of waiting leads (lead_waiting_queue): its size and
# the age of its head, by the database's clock. Cost grows with the services and the waiting
# leads, never with the leads allocated. clock_timestamp(): now() is the start of the
# transaction, and the lead's clock is the app's (greatest: the two may differ a little).
WAITING_QUEUES_SQL = f"""
SELECT s.slug, q.waiting,
       greatest(extract(epoch FROM clock_timestamp() - (SELECT created_at FROM {LEAD}
                                                        WHERE id = q.head)), 0)::float8
  FROM {SERVICE} s
 CROSS JOIN LATERAL (
       SELECT count(*) AS waiting, min(l.id) AS head FROM {LEAD} l
        WHERE l.service_id = s.id AND l.status = '{WAITING}'
 ) AS q
 ORDER BY s.slug
"""
