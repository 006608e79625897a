"""Every statement the allocation app runs by hand, and nothing else (STYLE: SQL on a measured
hot path): the engine's (services.py), the forecast's (forecast.py) and the reads of leads and
allocations the dashboard shows (selectors.py; they name only this app's tables).

Table names and choices come from the models and events.types. Besides the engine's own tables
(leads, allocations), the statements touch two other apps' tables, both in
leaddist/tests/test_layout.py's list of exceptions with these reasons:

- providers' catalogue: the candidates statement reads the city aliases, the service, its
  memberships and its per-city pool rows, and locks the providers it may pick; the writes
  statement takes their quotas (and cap counts, routing state) and moves the pool cursor under
  those locks. One round trip each (docs/ARCHITECTURE.md, "One lead, one transaction").
- events' log: lead.allocated, lead.waiting and lead.expired are inserted by the statement that
  makes them true, so each commits with its lead and costs no round trip under the provider
  locks.

Delivery's tables are not named here: delivery's own trigger on the allocation rows inserts a
lead's deliveries (delivery migration 0006). The pool cursor's lock (services._cursor_lock_sql)
and the forecast's reads are the ORM's own SQL, compiled once per process, and stay with them.
"""

from __future__ import annotations

from allocation.engine import SLOTS
from allocation.models import Allocation, Lead
from events.models import Event
from events.types import LEAD_ALLOCATED, LEAD_EXPIRED, LEAD_WAITING
from providers.models import CityAlias, Membership, PoolCity, PoolCursor, Provider, Service

LEAD = Lead._meta.db_table
ALLOCATION = Allocation._meta.db_table
SERVICE = Service._meta.db_table
PROVIDER = Provider._meta.db_table
MEMBERSHIP = Membership._meta.db_table
POOL_CITY = PoolCity._meta.db_table
POOL_CURSOR = PoolCursor._meta.db_table
CITY_ALIAS = CityAlias._meta.db_table
EVENT = Event._meta.db_table

# Written out, not parameters: the planner then matches the partial indexes' predicates
# (lead_waiting_queue: status = 'waiting'), and the statements' text stays the same.
WAITING = Lead.Status.WAITING.value
ALLOCATED = Lead.Status.ALLOCATED.value
EXPIRED = Lead.Status.EXPIRED.value
NO_WAIT_REASON = Lead.WaitReason.NONE.value
MANDATORY = Membership.Role.MANDATORY.value
POOL = Membership.Role.POOL.value

# The provider columns the routing rules need, in this order (LockedProvider.of reads them).
ROUTING_COLUMNS = (
    "cities",
    "timezone",
    "hours",
    "time_off",
    "daily_cap",
    "weekly_cap",
    "cap_day",
    "cap_day_count",
    "cap_week",
    "cap_week_count",
    "routing_open",
    "routing_reason",
    "routing_changes_at",
)
_ROUTING = ", ".join(f"p.{c}" for c in ROUTING_COLUMNS)
_NULLS = ", ".join("NULL" for _ in ROUTING_COLUMNS)

# Steps 2 and 3 in one round trip. Under the cursor lock (step 1) this statement's snapshot is
# fresh for this service; each part goes through an index:
# - the lead's canonical city (``key``: its normalised city through the staff's aliases);
# - whether the service is active, and whether an older lead of it and of this city waits
#   (partial index lead_waiting_queue): then nothing is locked;
# - the mandatory providers, and the first ``wanted`` pool providers eligible for this city in
#   walk order (after the cursor, then from the start): the city's rows and the everywhere rows
#   ('') of providers_poolcity, through its partial index poolcity_eligible_walk, merged;
# - those providers, locked FOR UPDATE in primary-key order (``locked``), so services sharing
#   providers can neither oversell a quota nor deadlock each other; their state as locked;
# - for the trace, the pool memberships the walk passes up to the last eligible one read (at
#   most ``seen`` per lap) that are not both eligible and everywhere (partial index
#   membership_skippable_walk: empty in a catalogue without routing rules), with their
#   providers' state, unlocked: whatever kept them out of the eligible rows (paused, no quota,
#   another city, closed by their time rules) cannot be lifted while we hold the cursor, since
#   everything that adds capacity takes the cursors of the provider's services first.
CANDIDATES_SQL = f"""
WITH
key AS (
    SELECT COALESCE((SELECT city FROM {CITY_ALIAS} WHERE alias = %(city)s), %(city)s)
               AS city
),
blocked AS (
    SELECT EXISTS (SELECT FROM {SERVICE} WHERE id = %(service)s AND active)
               AS active,
           EXISTS (SELECT FROM {LEAD}
                    WHERE service_id = %(service)s AND status = '{WAITING}'
                      AND city_key = (SELECT city FROM key) AND id < %(before)s)
               AS queued
),
mandatory AS (
    SELECT m.provider_id, m.position FROM {MEMBERSHIP} m
     WHERE m.service_id = %(service)s AND m.role = '{MANDATORY}'
),
eligible AS (
    SELECT provider_id, position, lap FROM (
        (SELECT a.provider_id, a.position, 0 AS lap FROM {POOL_CITY} a
          WHERE a.service_id = %(service)s AND a.city = '' AND a.provider_eligible
            AND a.position > %(cursor)s
          ORDER BY a.position LIMIT %(wanted)s)
        UNION ALL
        (SELECT a.provider_id, a.position, 0 AS lap FROM {POOL_CITY} a
          WHERE a.service_id = %(service)s AND a.city = NULLIF((SELECT city FROM key), '')
            AND a.provider_eligible AND a.position > %(cursor)s
          ORDER BY a.position LIMIT %(wanted)s)
        UNION ALL
        (SELECT a.provider_id, a.position, 1 AS lap FROM {POOL_CITY} a
          WHERE a.service_id = %(service)s AND a.city = '' AND a.provider_eligible
            AND a.position <= %(cursor)s
          ORDER BY a.position LIMIT %(wanted)s)
        UNION ALL
        (SELECT a.provider_id, a.position, 1 AS lap FROM {POOL_CITY} a
          WHERE a.service_id = %(service)s AND a.city = NULLIF((SELECT city FROM key), '')
            AND a.provider_eligible AND a.position <= %(cursor)s
          ORDER BY a.position LIMIT %(wanted)s)
    ) AS walk
    ORDER BY lap, position LIMIT %(wanted)s
),
locked AS MATERIALIZED (
    SELECT p.id, p.name, p.status, p.remaining_quota, p.cycle, {_ROUTING}
      FROM {PROVIDER} p
     WHERE p.id = ANY (ARRAY (SELECT provider_id FROM mandatory
                              UNION ALL SELECT provider_id FROM eligible))
       AND (SELECT (active OR NOT %(intake)s) AND NOT queued FROM blocked)
     ORDER BY p.id
       FOR UPDATE
),
bound AS (
    SELECT CASE WHEN last.lap > 0 OR NOT f.got_all THEN %(max_position)s ELSE last.position END
               AS lap0,
           CASE WHEN NOT f.got_all THEN %(cursor)s
                WHEN last.lap = 1 THEN LEAST(last.position, %(cursor)s)
                ELSE -1 END
               AS lap1
      FROM (SELECT (SELECT count(*) FROM eligible) >= %(wanted)s AS got_all) AS f
      LEFT JOIN LATERAL (SELECT lap, position FROM eligible
                          ORDER BY lap DESC, position DESC LIMIT 1) AS last ON true
),
seen AS (
    SELECT w.position, p.id, p.name, p.status, p.remaining_quota, p.cycle, {_ROUTING}
      FROM ((SELECT m.provider_id, m.position FROM {MEMBERSHIP} m
              WHERE m.service_id = %(service)s AND m.role = '{POOL}' AND m.position > %(cursor)s
                AND m.position <= (SELECT lap0 FROM bound)
                AND (NOT m.provider_eligible OR NOT m.provider_everywhere)
              ORDER BY m.position LIMIT %(seen)s)
            UNION ALL
            (SELECT m.provider_id, m.position FROM {MEMBERSHIP} m
              WHERE m.service_id = %(service)s AND m.role = '{POOL}'
                AND m.position <= (SELECT lap1 FROM bound)
                AND (NOT m.provider_eligible OR NOT m.provider_everywhere)
              ORDER BY m.position LIMIT %(seen)s)) AS w
      JOIN {PROVIDER} p ON p.id = w.provider_id
)
SELECT 'mandatory', m.position, l.* FROM mandatory m JOIN locked l ON l.id = m.provider_id
UNION ALL
SELECT 'eligible', e.position, l.* FROM eligible e JOIN locked l ON l.id = e.provider_id
UNION ALL
SELECT 'seen', s.* FROM seen s
UNION ALL
SELECT 'key', 0, 0, k.city, CASE WHEN b.active THEN '' ELSE 'unavailable' END, b.queued::int, 0,
       {_NULLS} FROM key k, blocked b
"""
# Each row: its kind ('mandatory', 'eligible', 'seen': which part it comes from; 'key': the one
# row of the lead's canonical city and the service's state), a position, a provider id, then
# the provider's columns (LockedProvider.of).
#
# ``bound``: where the trace's window ends, as an upper position for each lap (index conditions,
# so that no scan runs past it): up to the last eligible row read, or to the end of the walk
# when the read found fewer than it asked for, and so every eligible one.
#
# The statement is sent with its whitespace collapsed: psycopg keeps its parsed form of a
# statement only up to 4,096 characters (MAX_CACHED_STATEMENT_LENGTH), and parsing a longer one
# for every lead cost intake a third more CPU per lead.
CANDIDATES_SQL = " ".join(CANDIDATES_SQL.split())  # it has no comments or quoted spaces

# Step 4 in one round trip: the lead (new, or a waiting one now allocated), its allocations,
# the quotas, the cursor and the lead.allocated event, as one statement.
# Data-modifying CTEs all run, in full, on the statement's snapshot; the rows they touch are
# the ones locked above.
#
# The picks come as one row of scalar parameters each (PICK_COLUMNS, in rank order): psycopg
# dumps scalars in C, where each array parameter cost a lead about 60 Python calls. Each row
# carries the local day the lead counts in for that provider's caps (the UPDATE derives the
# ISO week) and, if the lead brings it to a cap, why it closes and until when (else NULL).
#
# The engine knows nothing of delivery: delivery's own trigger on the allocation rows inserts
# a lead's deliveries within this statement (delivery migration 0006, docs/DELIVERY.md), so
# they commit or roll back with the lead and cost the engine no round trip.
#
# ``{lead}`` is left in the text: the statement that gives the lead (NEW_LEAD_COLUMNS, or the
# drained lead's UPDATE) goes there.
PICK_COLUMNS = (
    ("provider", "bigint"),
    ("role", "varchar"),
    ("cycle", "integer"),
    ("day", "date"),
    ("closes", "varchar"),
    ("until", "timestamptz"),
)
PICK_KEYS = tuple(tuple(f"{name}{rank}" for name, _ in PICK_COLUMNS) for rank in range(SLOTS))
_PICKS = ", ".join(
    "("
    + ", ".join(f"%({key})s::{kind}" for key, (_, kind) in zip(keys, PICK_COLUMNS, strict=True))
    + f", {rank})"
    for rank, keys in enumerate(PICK_KEYS, 1)
)
ALLOCATION_WRITES_SQL = f"""
WITH lead AS ({{lead}}),
picks (provider_id, role, cycle, day, closes, until, rank) AS (VALUES {_PICKS}),
allocations AS (
    INSERT INTO {ALLOCATION} (lead_id, provider_id, role, rank, cycle, created_at)
    SELECT lead.id, pick.provider_id, pick.role, pick.rank, pick.cycle, %(now)s
      FROM lead, picks AS pick
),
quotas AS (
    UPDATE {PROVIDER} AS p
       SET remaining_quota = p.remaining_quota - 1,
           leads_this_cycle = p.leads_this_cycle + 1,
           leads_total = p.leads_total + 1,
           cap_day = pick.day,
           cap_day_count = CASE WHEN p.cap_day = pick.day THEN p.cap_day_count + 1 ELSE 1 END,
           cap_week = date_trunc('week', pick.day)::date,
           cap_week_count = CASE WHEN p.cap_week = date_trunc('week', pick.day)::date
                                 THEN p.cap_week_count + 1 ELSE 1 END,
           routing_open = p.routing_open AND pick.closes IS NULL,
           routing_reason = COALESCE(pick.closes, p.routing_reason),
           routing_changes_at = CASE WHEN pick.closes IS NULL THEN p.routing_changes_at
                                     ELSE pick.until END
      FROM picks AS pick
     WHERE p.id = pick.provider_id
),
pool_cursor AS (
    UPDATE {POOL_CURSOR} SET position = %(cursor)s, updated_at = %(now)s
     WHERE service_id = %(service)s AND position IS DISTINCT FROM %(cursor)s
),
event AS (
    INSERT INTO {EVENT} (type, data, created_at)
    SELECT '{LEAD_ALLOCATED}',
           jsonb_build_object('lead_id', lead.id, 'service_id', %(service)s,
                              'provider_ids', (SELECT jsonb_agg(provider_id ORDER BY rank)
                                                 FROM picks),
                              'status', '{ALLOCATED}'),
           %(now)s
      FROM lead
)
SELECT lead.id FROM lead
"""

NEW_LEAD_COLUMNS = f"""
    INSERT INTO {LEAD} (service_id, name, phone, city, city_key, description, source,
                                 status, wait_reason, trace, created_at, allocated_at)
    VALUES (%(service)s, %(name)s, %(phone)s, %(city)s, %(city_key)s, %(description)s,
            %(source)s, %(status)s, %(wait_reason)s, %(trace)s::jsonb, %(now)s, %(allocated_at)s)
    RETURNING id"""

NEW_ALLOCATED_LEAD_SQL = ALLOCATION_WRITES_SQL.format(lead=NEW_LEAD_COLUMNS)

DRAINED_LEAD_SQL = ALLOCATION_WRITES_SQL.format(
    lead=f"""
    UPDATE {LEAD}
       SET status = '{ALLOCATED}', wait_reason = '{NO_WAIT_REASON}', trace = %(trace)s::jsonb,
           allocated_at = %(now)s
     WHERE id = %(lead)s AND status = '{WAITING}'
    RETURNING id"""
)

NEW_WAITING_LEAD_SQL = f"""
WITH lead AS ({NEW_LEAD_COLUMNS}),
event AS (
    INSERT INTO {EVENT} (type, data, created_at)
    SELECT '{LEAD_WAITING}', jsonb_build_object('lead_id', lead.id, 'service_id', %(service)s),
           %(now)s
      FROM lead
)
SELECT id FROM lead
"""

# The head of a (service, city) waiting queue, locked, and the id of the lead behind it in the
# same queue (a hint for the drain's order, read in the same round trip). Run under the
# service's cursor lock, which every drain of the service takes first: nobody else allocates
# these leads meanwhile.
HEAD_OF_QUEUE_SQL = f"""
SELECT head.id, head.city_key,
       (SELECT min(behind.id) FROM {LEAD} AS behind
         WHERE behind.service_id = head.service_id AND behind.status = '{WAITING}'
           AND behind.city_key = head.city_key AND behind.id > head.id)
  FROM {LEAD} AS head
 WHERE head.service_id = %(service)s AND head.status = '{WAITING}'
   AND head.city_key = %(city_key)s
 ORDER BY head.id
 LIMIT 1
   FOR UPDATE OF head
"""
# The service's oldest waiting lead, of any city (allocate_next_waiting without a city).
HEAD_OF_SERVICE_SQL = HEAD_OF_QUEUE_SQL.replace("AND head.city_key = %(city_key)s\n", "")

# Expire the waiting leads of one service that arrived before the cutoff, and announce each.
# Run under the service's cursor lock: the drain, the only other writer of waiting leads, holds
# it too, so a lead is either allocated or expired, never both.
EXPIRE_SQL = f"""
WITH expired AS (
    UPDATE {LEAD}
       SET status = '{EXPIRED}', wait_reason = '{NO_WAIT_REASON}', expired_at = %(now)s
     WHERE service_id = %(service)s AND status = '{WAITING}' AND created_at < %(cutoff)s
    RETURNING id
),
event AS (
    INSERT INTO {EVENT} (type, data, created_at)
    SELECT '{LEAD_EXPIRED}', jsonb_build_object('lead_id', id, 'service_id', %(service)s), %(now)s
      FROM expired
)
SELECT count(*) FROM expired
"""

# The forecast's transaction (forecast._in_snapshot). SET TRANSACTION must be the
# transaction's first statement.
READ_ONLY_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
READ_ONLY = "SET TRANSACTION READ ONLY"


# --- Reads for the dashboard (selectors.py): this app's tables only --------------------------

# The newest %(per_provider)s allocations of each provider of the bigint[] %(ids)s, through the
# (provider, -id) index (alloc_provider_recent): provider id, lead id, the lead's service id,
# allocated at; newest first per provider.
LATEST_ALLOCATIONS = f"""
SELECT p.id, a.lead_id, l.service_id, a.created_at
FROM unnest(%(ids)s::bigint[]) AS p(id)
CROSS JOIN LATERAL (
    SELECT lead_id, created_at FROM {ALLOCATION}
    WHERE provider_id = p.id ORDER BY id DESC LIMIT %(per_provider)s
) AS a
JOIN {LEAD} AS l ON l.id = a.lead_id
ORDER BY p.id, a.lead_id DESC
"""

# For each (service, provider, cycle) of the arrays %(services)s, %(providers)s, %(cycles)s:
# the leads of that service the pool gave that provider in that cycle, through the partial
# index alloc_pool_cycle (role = 'pool', written out so the planner matches it): at most a
# cycle's leads per row, whatever the history.
POOL_LEADS = f"""
SELECT k.service_id, k.provider_id, k.cycle, (
    SELECT count(*) FROM {ALLOCATION} AS a JOIN {LEAD} AS l ON l.id = a.lead_id
    WHERE a.provider_id = k.provider_id AND a.cycle = k.cycle AND a.role = '{POOL}'
      AND l.service_id = k.service_id)
FROM unnest(%(services)s::bigint[], %(providers)s::bigint[], %(cycles)s::int[])
    AS k(service_id, provider_id, cycle)
"""

# Per service of the bigint[] %(ids)s, through the partial index of waiting leads
# (lead_waiting_queue): its waiting leads and the age of its head, by the database's clock.
# Cost grows with the services and the waiting leads, never with the leads allocated.
# clock_timestamp(): now() is the start of the transaction, and the lead's clock is the app's
# (greatest: the two may differ a little).
WAITING_QUEUES = f"""
SELECT s.id, q.waiting,
       greatest(extract(epoch FROM clock_timestamp() - (SELECT created_at FROM {LEAD}
                                                        WHERE id = q.head)), 0)::float8
  FROM unnest(%(ids)s::bigint[]) AS s(id)
 CROSS JOIN LATERAL (
       SELECT count(*) AS waiting, min(l.id) AS head FROM {LEAD} l
        WHERE l.service_id = s.id AND l.status = '{WAITING}'
 ) AS q
"""
