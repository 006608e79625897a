"""Every statement delivery runs by hand, and nothing else (STYLE: SQL on a measured hot path).

Table names and statuses come from the models. Delivery's own tables are written here; the
claim also reads the lead and service it sends (allocation's and providers' tables, read only),
and the record and resend statements write the ``delivery.updated`` event into the event log
in the same statement (events' table, insert only): one round trip per batch of attempts. Both
are in leaddist/tests/test_layout.py's list of exceptions, with these reasons.
"""

from __future__ import annotations

from typing import Any

from allocation.models import Lead
from delivery.models import Attempt, Delivery, DeliveryWorker, Endpoint
from events.models import Event
from providers.models import Service

DELIVERY = Delivery._meta.db_table
ATTEMPT = Attempt._meta.db_table
WORKER = DeliveryWorker._meta.db_table
ENDPOINT = Endpoint._meta.db_table
LEAD = Lead._meta.db_table
SERVICE = Service._meta.db_table
EVENT = Event._meta.db_table

PENDING = Delivery.Status.PENDING.value
RETRYING = Delivery.Status.RETRYING.value
DELIVERED = Delivery.Status.DELIVERED.value
FAILED = Delivery.Status.FAILED.value
# Written out, not a parameter: the planner then matches the partial indexes' predicate.
OPEN = f"('{PENDING}', '{RETRYING}')"

# The one definition of the delivery.updated event's data (SPEC §8), for a row ``{row}`` with
# the delivery's columns; the record and the resend statements both insert it.
UPDATED_EVENT_DATA = """jsonb_build_object(
    'delivery_id', {row}.id, 'lead_id', {row}.lead_id, 'provider_id', {row}.provider_id,
    'channel', {row}.channel, 'status', {row}.status, 'attempts', {row}.attempts)"""

# Claims are taken one at a time across every worker on every host (a transaction-level
# advisory lock, taken just before the claim statement): each provider's attempts in flight
# are counted exactly, so two workers never both take a provider's last free place.
CLAIM_LOCK = "SELECT pg_advisory_xact_lock(%(key)s)"
CLAIM_LOCK_KEY = 0x6C64_6476  # "ldv": leaddist delivery

# The due deliveries this worker starts now, at most %(take)s, oldest due first, at most
# %(per_provider)s in flight per provider counting every worker's; each is marked as this
# worker's (worker_id) until %(lease)s seconds from now, its claim's end if the worker dies
# unnoticed. A due delivery whose provider has no free place is put back a little: shortly
# when the provider's attempts in flight are all young (it is busy), else until its oldest
# one must have timed out (it hangs): the next claims then do not scan it again and again. It
# is marked ``held_back``: as soon as an attempt of its provider is recorded, the record
# statement makes one held-back delivery due again for each place it frees (RECORD, woken).
# Returned with what the attempt sends: the lead, its service and the endpoint as it is now;
# and how many due deliveries were put back (a provider at its cap), on every row, and alone on
# a row of NULLs when nothing was claimed.
CLAIM = f"""
WITH due AS (
    SELECT id, provider_id, next_attempt_at
      FROM {DELIVERY}
     WHERE status IN {OPEN} AND next_attempt_at <= %(now)s
     ORDER BY next_attempt_at
     LIMIT %(scan)s
       FOR UPDATE SKIP LOCKED
),
in_flight AS (
    SELECT provider_id, count(*) AS n, min(next_attempt_at) AS oldest_ends
      FROM {DELIVERY}
     WHERE worker_id IS NOT NULL AND next_attempt_at > %(now)s
       AND provider_id IN (SELECT provider_id FROM due)
     GROUP BY provider_id
),
ranked AS (
    SELECT due.id, due.next_attempt_at, flight.oldest_ends,
           coalesce(flight.n, 0) + row_number() OVER (
               PARTITION BY due.provider_id ORDER BY due.next_attempt_at, due.id) AS place
      FROM due LEFT JOIN in_flight AS flight USING (provider_id)
),
chosen AS (
    SELECT id FROM ranked
     WHERE place <= %(per_provider)s
     ORDER BY next_attempt_at, id
     LIMIT %(take)s
),
claimed AS (
    UPDATE {DELIVERY} AS delivery
       SET worker_id = %(worker)s, next_attempt_at = %(now)s + make_interval(secs => %(lease)s),
           held_back = false
      FROM chosen
     WHERE delivery.id = chosen.id
    RETURNING delivery.id, delivery.lead_id, delivery.provider_id, delivery.channel,
              delivery.role, delivery.rank, delivery.generation, delivery.created_at
),
put_back AS (
    UPDATE {DELIVERY} AS delivery
       SET held_back = true, next_attempt_at = CASE
           WHEN ranked.oldest_ends IS NULL
             OR ranked.oldest_ends > %(now)s + make_interval(secs => %(lease)s - %(young)s)
           THEN %(now)s + make_interval(secs => %(busy_wait)s * (0.5 + random() / 2))
           ELSE greatest(ranked.oldest_ends - make_interval(secs => %(margin)s), %(now)s)
                + make_interval(secs => %(busy_wait)s * (1 + random()))
           END
      FROM ranked
     WHERE delivery.id = ranked.id AND ranked.place > %(per_provider)s
    RETURNING delivery.id
)
SELECT claimed.id, claimed.provider_id, claimed.channel, claimed.role, claimed.rank,
       claimed.generation, claimed.created_at, lead.id, lead.name, lead.phone, lead.city,
       lead.description, lead.created_at, service.id, service.slug, service.name,
       endpoint.url, endpoint.email, endpoint.secret, backlog.n
  FROM (SELECT count(*) AS n FROM put_back) AS backlog
  LEFT JOIN (claimed
             JOIN {LEAD} AS lead ON lead.id = claimed.lead_id
             JOIN {SERVICE} AS service ON service.id = lead.service_id
             LEFT JOIN {ENDPOINT} AS endpoint ON endpoint.provider_id = claimed.provider_id)
         ON true
 ORDER BY claimed.id
"""

# Seconds before the next try of a delivery that has failed {failures} + 1 times: exponential
# from DELIVERY_RETRY_BASE_SECONDS, capped at DELIVERY_RETRY_MAX_SECONDS, with jitter (half of
# it random) so that endpoints coming back are not hit by every retry at once.
RETRY_DELAY = (
    "least(%(retry_base)s * power(2, least({failures}, 30)), %(retry_max)s) * (0.5 + random() / 2)"
)

# Attempts recorded, all in one statement: each delivery moves on (delivered; retrying, due
# again after RETRY_DELAY; failed once retried for DELIVERY_RETRY_HOURS, or at once when
# ``final``: no endpoint any more), its attempt is logged, its claim released and its event
# written (left out for a repeated failure past the first few); for each place it frees, one of
# its provider's held-back deliveries is due again now (``woken``).
#
# An attempt decides its delivery's fate while the delivery is still its own: same generation
# (a resend starts a new one), still open, and claimed by this worker or by nobody (a claim
# handed back from a worker taken for dead). A success decides it whoever holds it now. Any
# other attempt is only logged: the holder's own attempt decides.
#
# Locks: the deliveries' rows, in id order (as the resend takes them); the held-back rows it
# wakes, skipping any locked (a claim taking them, or another record waking them).
RECORD = f"""
WITH outcome AS (
    SELECT *
      FROM unnest(%(deliveries)s::bigint[], %(generations)s::integer[],
                  %(succeeded)s::boolean[], %(status_codes)s::integer[],
                  %(latencies)s::integer[], %(errors)s::text[], %(started)s::timestamptz[],
                  %(final)s::boolean[])
           AS o(delivery_id, generation, succeeded, status_code, latency_ms, error,
                started_at, final)
),
before AS (
    SELECT id, lead_id, provider_id, channel, status, attempts, generation, retrying_since,
           next_attempt_at, delivered_at, worker_id
      FROM {DELIVERY}
     WHERE id = ANY(%(deliveries)s::bigint[])
     ORDER BY id
       FOR UPDATE
),
next AS (
    SELECT b.id, b.lead_id, b.provider_id, b.channel, b.status AS previous_status,
           b.attempts + 1 AS attempts, o.succeeded, o.status_code, o.latency_ms, o.error,
           o.started_at, since.retrying_since, verdict.status,
           CASE WHEN run.decides THEN NULL ELSE b.worker_id END AS worker_id,
           CASE WHEN NOT run.decides THEN b.next_attempt_at
                WHEN verdict.status = '{RETRYING}'
                THEN %(now)s + make_interval(secs => {RETRY_DELAY.format(failures="b.attempts")})
                ELSE NULL
           END AS next_attempt_at,
           CASE WHEN verdict.status = '{DELIVERED}' AND run.decides THEN %(now)s
                ELSE b.delivered_at END AS delivered_at
      FROM before AS b
      JOIN outcome AS o ON o.delivery_id = b.id
     CROSS JOIN LATERAL (
           SELECT b.generation = o.generation AND b.status IN {OPEN}
                  AND (o.succeeded OR b.worker_id IS NULL OR b.worker_id = %(worker)s)
                  AS decides
     ) AS run
     CROSS JOIN LATERAL (
           SELECT CASE WHEN run.decides THEN coalesce(b.retrying_since, o.started_at)
                       ELSE b.retrying_since END AS retrying_since
     ) AS since
     CROSS JOIN LATERAL (
           SELECT CASE WHEN NOT run.decides THEN b.status
                       WHEN o.succeeded THEN '{DELIVERED}'
                       WHEN o.final
                         OR %(now)s - since.retrying_since >= make_interval(secs => %(window)s)
                       THEN '{FAILED}'
                       ELSE '{RETRYING}' END AS status
     ) AS verdict
),
moved AS (
    UPDATE {DELIVERY} AS delivery
       SET status = next.status, attempts = next.attempts,
           last_status_code = next.status_code, last_latency_ms = next.latency_ms,
           last_error = next.error, retrying_since = next.retrying_since,
           next_attempt_at = next.next_attempt_at, delivered_at = next.delivered_at,
           worker_id = next.worker_id, updated_at = %(now)s
      FROM next
     WHERE delivery.id = next.id
),
logged AS (
    INSERT INTO {ATTEMPT} (delivery_id, number, started_at, succeeded, status_code, latency_ms,
                           error)
    SELECT id, attempts, started_at, succeeded, status_code, latency_ms, error FROM next
),
freed AS (
    SELECT provider_id, count(*) AS places FROM next WHERE worker_id IS NULL GROUP BY provider_id
),
woken AS (
    UPDATE {DELIVERY} AS delivery
       SET next_attempt_at = %(now)s, held_back = false
      FROM freed
     CROSS JOIN LATERAL (
           SELECT id FROM {DELIVERY}
            WHERE provider_id = freed.provider_id AND held_back AND status IN {OPEN}
              AND worker_id IS NULL AND next_attempt_at > %(now)s
              AND NOT id = ANY(%(deliveries)s::bigint[])
            ORDER BY next_attempt_at
            LIMIT freed.places
              FOR UPDATE SKIP LOCKED
     ) AS waiting
     WHERE delivery.id = waiting.id
),
announced AS (
    INSERT INTO {EVENT} (type, data, created_at)
    SELECT %(event)s, {UPDATED_EVENT_DATA.format(row="next")}, %(now)s
      FROM next
     WHERE status <> previous_status
        OR attempts <= %(announce_first)s
        OR mod(attempts, %(announce_every)s) = 0
    RETURNING id
)
SELECT next.id, next.status, (SELECT count(*) FROM announced) FROM next
"""

# A resend: a new generation of each delivery, due now under its same id, its claim (if any)
# dropped, and its event. Rows locked in id order, as RECORD locks them.
RESEND = f"""
WITH picked AS (
    SELECT id FROM {DELIVERY} WHERE id = ANY(%(deliveries)s::bigint[]) ORDER BY id FOR UPDATE
),
resent AS (
    UPDATE {DELIVERY} AS delivery
       SET generation = delivery.generation + 1, status = '{PENDING}', retrying_since = NULL,
           next_attempt_at = %(now)s, worker_id = NULL, updated_at = %(now)s
      FROM picked
     WHERE delivery.id = picked.id
    RETURNING delivery.*
),
announced AS (
    INSERT INTO {EVENT} (type, data, created_at)
    SELECT %(event)s, {UPDATED_EVENT_DATA.format(row="resent")}, %(now)s FROM resent
)
SELECT count(*) FROM resent
"""

REGISTER = f"""
INSERT INTO {WORKER} (hostname, pid, started_at, beat_at)
VALUES (%(hostname)s, %(pid)s, now(), now())
RETURNING id
"""

# The worker's beat: false when its row is gone (another worker took it for dead).
BEAT = f"UPDATE {WORKER} SET beat_at = now() WHERE id = %(worker)s RETURNING id"

LEAVE = f"DELETE FROM {WORKER} WHERE id = %(worker)s"

SAME_HOST = f"SELECT id, pid FROM {WORKER} WHERE hostname = %(hostname)s AND id <> %(worker)s"

# Dead workers: silent for %(dead_after)s seconds, or known gone (%(gone)s: their process no
# longer exists on their host). Their rows are deleted and their deliveries in flight are due
# again now, as are those of any worker whose row is already gone.
REAP = f"""
WITH dead AS (
    DELETE FROM {WORKER}
     WHERE beat_at < now() - make_interval(secs => %(dead_after)s) OR id = ANY(%(gone)s::bigint[])
    RETURNING id
)
UPDATE {DELIVERY} AS delivery
   SET worker_id = NULL, next_attempt_at = now()
 WHERE delivery.worker_id IS NOT NULL
   AND (delivery.worker_id IN (SELECT id FROM dead)
        OR NOT EXISTS (SELECT FROM {WORKER} AS worker WHERE worker.id = delivery.worker_id))
RETURNING delivery.id
"""

# The worker's claims other than %(keep)s, due again now.
RELEASE = f"""
UPDATE {DELIVERY}
   SET worker_id = NULL, next_attempt_at = now()
 WHERE worker_id = %(worker)s AND NOT id = ANY(%(keep)s::bigint[]) AND status IN {OPEN}
"""

# The queue's health, for /metrics: deliveries by open or failed status; how long the oldest
# due delivery has waited for a worker; deliveries held by a worker that stopped beating (they
# go back to the queue at the next reap); workers beating.
HEALTH = f"""
SELECT (SELECT count(*) FROM {DELIVERY} WHERE status = '{PENDING}'),
       (SELECT count(*) FROM {DELIVERY} WHERE status = '{RETRYING}'),
       (SELECT count(*) FROM {DELIVERY} WHERE status = '{FAILED}'),
       (SELECT coalesce(extract(epoch FROM now() - min(next_attempt_at)), 0)
          FROM {DELIVERY}
         WHERE status IN {OPEN} AND next_attempt_at <= now() AND worker_id IS NULL),
       (SELECT count(*) FROM {DELIVERY} AS delivery
         WHERE delivery.worker_id IS NOT NULL AND status IN {OPEN}
           AND NOT EXISTS (SELECT FROM {WORKER} AS worker
                            WHERE worker.id = delivery.worker_id
                              AND worker.beat_at >= now() - make_interval(secs => %(dead_after)s))),
       (SELECT count(*) FROM {WORKER}
         WHERE beat_at >= now() - make_interval(secs => %(dead_after)s))
"""

# Delivery latency (allocation to the provider's 2xx) over the last %(window)s seconds, for
# the dashboard: p50, p99 and how many.
RECENT_LATENCY = f"""
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM delivered_at - created_at)),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM delivered_at - created_at)),
       count(*)
  FROM {DELIVERY}
 WHERE delivered_at IS NOT NULL AND delivered_at >= now() - make_interval(secs => %(window)s)
"""

# (provider id, delivered, finished) of each provider of the bigint[] %(ids)s over its last
# %(window)s finished deliveries (delivered or failed), through the (provider, -id) index: the
# work does not grow with a provider's history. For the dashboard's provider rows.
PROVIDER_DELIVERY_RATES = f"""
SELECT p.id, count(*) FILTER (WHERE d.status = '{DELIVERED}'), count(*)
FROM unnest(%(ids)s::bigint[]) AS p(id)
CROSS JOIN LATERAL (
    SELECT status FROM {DELIVERY}
    WHERE provider_id = p.id AND status IN ('{DELIVERED}', '{FAILED}')
    ORDER BY id DESC LIMIT %(window)s
) AS d
GROUP BY p.id
"""


def fetch(cursor: Any, sql: str, params: dict[str, object]) -> list[tuple]:
    cursor.execute(sql, params)
    return cursor.fetchall()
