"""The database ceiling: one allocation as pgbench runs it, without Python or HTTP.

Run: .venv/bin/python bench/bench_ceiling.py [--concurrency 1 8 32 64] [--seconds 10]
         [--protocol prepared] [--statements]

It makes a throw-away database (<DATABASE_URL's name>_ceiling, default leaddist_bench_ceiling,
dropped and recreated each run) with the app's migrations (so the same tables, indexes and
triggers), the seed catalogue with ample quotas and a scratch table bench_event, then runs
pgbench at each concurrency (-c C -j min(C, 2) -T SECONDS) with two scripts doing the same
allocation of one lead of a random service 1-3:

- ``multi``: the engine's statements as client round trips: BEGIN; lock the pool cursor
  FOR UPDATE; is a lead of the service waiting; read the candidates (CANDIDATES_SQL, with
  the pick computed in the same statement); lock the providers the engine locks (the
  mandatory ones and the next 6 eligible pool ones, in id order) FOR UPDATE; insert the lead
  (with a trace) RETURNING id; insert its 3 allocations; decrement the 3 quotas and bump the
  counters; move the cursor; insert a bench_event row (the dashboard event); COMMIT.
- ``plpgsql``: the same statements in one PL/pgSQL function, one round trip.

Phones are unique per client and transaction (client_id and a per-client counter). The table
gives transactions/s, p50/p99 latency (from pgbench --log), failures and retries, and the CPU
per transaction of PostgreSQL (the postmaster and all its descendants) and of pgbench itself.
The invariants of bench/common.py are checked at the end; the command exits 1 if one fails.
bench/bench_http.py runs the same and prints the HTTP rows as a ratio of the ``multi`` row.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import common

WANTED = 6  # SLOTS + INITIAL_SLACK: eligible pool rows the engine reads on a first attempt
SEEN = 50  # TRACE_LIMIT

# Copied from allocation/services.py CANDIDATES_SQL (commit 126c205), with the parameters as
# {placeholders}. Copied rather than imported so the ceiling stays the same while the engine
# changes; update it deliberately.
CANDIDATES = """
(SELECT 'mandatory', m.provider_id, m.position, p.status, p.remaining_quota
   FROM providers_membership m JOIN providers_provider p ON p.id = m.provider_id
  WHERE m.service_id = {service} AND m.role = 'mandatory'
  ORDER BY m.position)
UNION ALL
(SELECT 'eligible', m.provider_id, m.position, p.status, p.remaining_quota
   FROM providers_membership m JOIN providers_provider p ON p.id = m.provider_id
  WHERE m.service_id = {service} AND m.role = 'pool' AND m.provider_eligible
    AND m.position > {cur}
  ORDER BY m.position LIMIT {wanted})
UNION ALL
(SELECT 'eligible', m.provider_id, m.position, p.status, p.remaining_quota
   FROM providers_membership m JOIN providers_provider p ON p.id = m.provider_id
  WHERE m.service_id = {service} AND m.role = 'pool' AND m.provider_eligible
    AND m.position <= {cur}
  ORDER BY m.position LIMIT {wanted})
UNION ALL
(SELECT 'seen', m.provider_id, m.position, p.status, p.remaining_quota
   FROM providers_membership m JOIN providers_provider p ON p.id = m.provider_id
  WHERE m.service_id = {service} AND m.role = 'pool' AND NOT m.provider_eligible
    AND m.position > {cur}
  ORDER BY m.position LIMIT {seen})
UNION ALL
(SELECT 'seen', m.provider_id, m.position, p.status, p.remaining_quota
   FROM providers_membership m JOIN providers_provider p ON p.id = m.provider_id
  WHERE m.service_id = {service} AND m.role = 'pool' AND NOT m.provider_eligible
    AND m.position <= {cur}
  ORDER BY m.position LIMIT {seen})
"""

LOCK_SLOTS = 9  # up to 3 mandatory + WANTED pool providers are locked

# The candidates read and the engine's pick, in one statement (one round trip, like the
# engine's read; the pick costs a few rows of work in the server instead of Python):
# mandatory providers first, then the eligible pool in walk order from after the cursor.
# p1..p3: the picks (0: none), nm: how many are mandatory, newcur: the cursor to store,
# l1..l9: the providers the engine locks (0: none).
DECISION = (
    "WITH c(kind, provider_id, position, status, remaining) AS ("
    + CANDIDATES
    + """),
m AS (
    SELECT provider_id, position FROM c
     WHERE kind = 'mandatory' AND status = 'active' AND remaining > 0
),
walk AS (
    SELECT provider_id, position, row_number() OVER (ORDER BY position <= {cur}, position) AS n
      FROM c WHERE kind = 'eligible'
),
picks AS (
    SELECT provider_id, position, 'mandatory' AS role,
           row_number() OVER (ORDER BY position) AS rank
      FROM m
    UNION ALL
    SELECT provider_id, position, 'pool', (SELECT count(*) FROM m) + row_number() OVER (ORDER BY n)
      FROM walk WHERE n <= {wanted} AND provider_id NOT IN (SELECT provider_id FROM m)
),
locks AS (
    SELECT provider_id, row_number() OVER (ORDER BY provider_id) AS n
      FROM (SELECT provider_id FROM c WHERE kind = 'mandatory'
            UNION SELECT provider_id FROM walk WHERE n <= {wanted}) x
)
SELECT coalesce((SELECT provider_id FROM picks WHERE rank = 1), 0) AS p1,
       coalesce((SELECT provider_id FROM picks WHERE rank = 2), 0) AS p2,
       coalesce((SELECT provider_id FROM picks WHERE rank = 3), 0) AS p3,
       (SELECT count(*) FROM picks WHERE rank <= 3 AND role = 'mandatory') AS nm,
       coalesce((SELECT position FROM picks WHERE rank <= 3 AND role = 'pool'
                  ORDER BY rank DESC LIMIT 1), {cur}) AS newcur,
"""
    + ",\n".join(
        f"       coalesce((SELECT provider_id FROM locks WHERE n = {i}), 0) AS l{i}"
        for i in range(1, LOCK_SLOTS + 1)
    )
    + "\n"
)

LOCK = (
    """SELECT count(*) AS nlocked,
       coalesce(max(cycle) FILTER (WHERE id = {p1}), 0) AS c1,
       coalesce(max(cycle) FILTER (WHERE id = {p2}), 0) AS c2,
       coalesce(max(cycle) FILTER (WHERE id = {p3}), 0) AS c3
  FROM (SELECT id, status, remaining_quota, cycle FROM providers_provider
         WHERE id IN ("""
    + ", ".join(f"{{l{i}}}" for i in range(1, LOCK_SLOTS + 1))
    + """)
         ORDER BY id FOR UPDATE) locked
"""
)

CURSOR = (
    "SELECT id AS cursor_id, coalesce(position, -1) AS cur FROM providers_poolcursor\n"
    " WHERE service_id = {service} FOR UPDATE\n"
)
QUEUED = (
    "SELECT count(*) AS queued FROM (SELECT 1 FROM allocation_lead\n"
    " WHERE status = 'waiting' AND service_id = {service} LIMIT 1) w\n"
)


def _role(rank: int) -> str:
    return f"CASE WHEN {{nm}} >= {rank} THEN 'mandatory' ELSE 'pool' END"


TRACE = (
    "jsonb_build_array("
    + ", ".join(
        f"jsonb_build_object('provider_id', {{p{r}}}, 'role', {_role(r)}, 'outcome', 'selected')"
        for r in (1, 2, 3)
    )
    + ")"
)

LEAD_COLUMNS = (
    "INSERT INTO allocation_lead (service_id, name, phone, city, description, status,"
    " wait_reason, source, trace, created_at, allocated_at)\n"
)
INSERT_LEAD = (
    LEAD_COLUMNS
    + "VALUES ({service}, 'Bench', {phone}, 'Benchville', '', 'allocated', '', 'bench',\n"
    + f"        {TRACE}, now(), now())\nRETURNING id\n"
)
INSERT_WAITING = (
    LEAD_COLUMNS
    + "VALUES ({service}, 'Bench', {phone}, 'Benchville', '', 'waiting', '%s', 'bench',"
    + " '[]', now(), NULL)\nRETURNING id\n"
)
INSERT_ALLOCATIONS = (
    "INSERT INTO allocation_allocation (lead_id, provider_id, role, rank, cycle, created_at)\n"
    "VALUES "
    + ",\n       ".join(
        f"({{lead}}, {{p{r}}}, {_role(r)}, {r}, {{c{r}}}, now())" for r in (1, 2, 3)
    )
    + "\nRETURNING id\n"
)
UPDATE_PROVIDERS = (
    "UPDATE providers_provider SET remaining_quota = remaining_quota - 1,\n"
    "       leads_this_cycle = leads_this_cycle + 1, leads_total = leads_total + 1\n"
    " WHERE id IN ({p1}, {p2}, {p3})\n"
)
UPDATE_CURSOR = (
    "UPDATE providers_poolcursor SET position = {newcur}, updated_at = now()"
    " WHERE id = {cursor_id}\n"
)
INSERT_EVENT = (
    "INSERT INTO bench_event (type, data) VALUES ('lead.allocated', jsonb_build_object(\n"
    "    'lead_id', {lead}, 'service_id', {service},\n"
    "    'provider_ids', jsonb_build_array({p1}, {p2}, {p3}), 'status', 'allocated'))\n"
)

PHONE_SET = (
    "\\set service random(1, 3)\n"
    "\\set seq :seq + 1\n"
    "\\set phone 100000000000000 + (:run * 1000 + :client_id) * 100000000 + :seq\n"
)

# pgbench variables, cast so that -M extended/prepared can type the parameters (in simple
# mode they are literals and the casts fold away).
PGBENCH_NAMES = {
    "service": "(:service)::bigint",
    "phone": "'+' || (:phone)::text",
    "cur": "(:cur)::integer",
    "cursor_id": "(:cursor_id)::bigint",
    "nm": "(:nm)::integer",
    "newcur": "(:newcur)::integer",
    "lead": "(:lead_id)::bigint",  # \\gset lead_ on RETURNING id
    "wanted": str(WANTED),
    "seen": str(SEEN),
    **{f"p{i}": f"(:p{i})::bigint" for i in (1, 2, 3)},
    **{f"c{i}": f"(:c{i})::integer" for i in (1, 2, 3)},
    **{f"l{i}": f"(:l{i})::bigint" for i in range(1, LOCK_SLOTS + 1)},
}
PLPGSQL_NAMES = {
    "service": "p_service",
    "phone": "p_phone",
    "cur": "v_cur",
    "cursor_id": "v_cursor_id",
    "nm": "d.nm",
    "newcur": "d.newcur",
    "lead": "v_lead",
    "wanted": str(WANTED),
    "seen": str(SEEN),
    **{f"p{i}": f"d.p{i}" for i in (1, 2, 3)},
    **{f"c{i}": f"k.c{i}" for i in (1, 2, 3)},
    **{f"l{i}": f"d.l{i}" for i in range(1, LOCK_SLOTS + 1)},
}


def multi_script() -> str:
    """The pgbench script: one statement per round trip, as the engine sends them."""

    def q(sql: str, end: str = ";") -> str:
        return sql.format(**PGBENCH_NAMES).rstrip() + end + "\n"

    return (
        PHONE_SET
        + "BEGIN;\n"
        + q(CURSOR, " \\gset")
        + q(QUEUED, " \\gset")
        + "\\if :queued\n"
        + q(INSERT_WAITING % "queued")
        + "\\else\n"
        + q(DECISION, " \\gset")
        + q(LOCK, " \\gset")
        + "\\if :p3 = 0\n"
        + q(INSERT_WAITING % "not_enough_providers")
        + "\\else\n"
        + q(INSERT_LEAD, " \\gset lead_")
        + q(INSERT_ALLOCATIONS)
        + q(UPDATE_PROVIDERS)
        + "\\if :newcur <> :cur\n"
        + q(UPDATE_CURSOR)
        + "\\endif\n"
        + q(INSERT_EVENT)
        + "\\endif\n"
        + "\\endif\n"
        + "COMMIT;\n"
    )


def function_sql() -> str:
    """bench_allocate(service, phone): the same statements server-side; returns the lead id."""

    def q(sql: str) -> str:
        return sql.format(**PLPGSQL_NAMES).rstrip()

    return f"""
CREATE OR REPLACE FUNCTION bench_allocate(p_service bigint, p_phone text) RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    v_cursor_id bigint;
    v_cur bigint;
    v_queued bigint;
    v_lead bigint;
    d record;
    k record;
BEGIN
    SELECT * INTO v_cursor_id, v_cur FROM ({q(CURSOR)}) s;
    SELECT * INTO v_queued FROM ({q(QUEUED)}) s;
    IF v_queued > 0 THEN
        {q(INSERT_WAITING % "queued")} INTO v_lead;
        RETURN v_lead;
    END IF;
    SELECT * INTO d FROM ({q(DECISION)}) s;
    SELECT * INTO k FROM ({q(LOCK)}) s;
    IF d.p3 = 0 THEN
        {q(INSERT_WAITING % "not_enough_providers")} INTO v_lead;
        RETURN v_lead;
    END IF;
    {q(INSERT_LEAD)} INTO v_lead;
    {q(INSERT_ALLOCATIONS).removesuffix("RETURNING id").rstrip()};
    {q(UPDATE_PROVIDERS)};
    IF d.newcur <> v_cur THEN
        {q(UPDATE_CURSOR)};
    END IF;
    {q(INSERT_EVENT)};
    RETURN v_lead;
END
$fn$;
"""


FUNCTION_SCRIPT = PHONE_SET + "SELECT bench_allocate((:service)::bigint, '+' || (:phone)::text);\n"

SCRIPTS = ("multi", "plpgsql")

SETUP_SQL = """
CREATE TABLE bench_event (
    id bigserial PRIMARY KEY, type text, data jsonb, created_at timestamptz DEFAULT now()
);
"""


def prepare(url: str) -> None:
    """The ceiling's database: migrations, seed catalogue, ample quota, bench objects."""
    common.prepare_app_database(url, api_key=False)
    with common.connect(url) as conn:
        conn.execute(SETUP_SQL)
        conn.execute(function_sql())
        conn.execute("ANALYZE")


def _log_latencies(prefix: Path) -> list[float]:
    """Transaction latencies in ms from pgbench --log files (3rd field, microseconds)."""
    latencies = []
    for path in prefix.parent.glob(prefix.name + ".*"):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                latencies.append(int(fields[2]) / 1000)
    return latencies


def _number(pattern: str, text: str) -> float | None:
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else None


def run_pgbench(
    url: str,
    script: str,
    *,
    clients: int,
    seconds: int,
    run: int,
    protocol: str,
    workdir: Path,
) -> dict[str, object]:
    """One pgbench run; returns tps, latencies, failures and CPU per transaction."""
    name = f"{script}-c{clients}-r{run}"
    script_path = workdir / f"{script}.sql"
    script_path.write_text(multi_script() if script == "multi" else FUNCTION_SCRIPT)
    prefix = workdir / name
    command = [
        "pgbench",
        *("-n", "-M", protocol, "-c", str(clients), "-j", str(min(clients, 2))),
        *("-T", str(seconds), "-f", str(script_path), "-r", "--max-tries", "10"),
        *("-D", "seq=0", "-D", f"run={run}", "--log", f"--log-prefix={prefix}", url),
    ]
    with common.CpuMeter(database=common.database_name(url)) as used:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    out = result.stdout + result.stderr
    if result.returncode != 0 or "tps =" not in out:
        sys.exit(f"pgbench failed ({result.returncode}):\n{' '.join(command)}\n{out}")
    done = _number(r"number of transactions actually processed: (\d+)", out) or 0
    latencies = _log_latencies(prefix)
    statements = out.find("statement latencies")
    per_tx = 1000 / done if done else 0.0
    return {
        "script": script,
        "clients": clients,
        "tps": _number(r"^tps = ([\d.]+)", out),
        "transactions": int(done),
        "failed": int(_number(r"number of failed transactions: (\d+)", out) or 0),
        "retried": int(_number(r"number of transactions retried: (\d+)", out) or 0),
        "p50": common.percentile(latencies, 50),
        "p99": common.percentile(latencies, 99),
        "pg_ms": used.postgres * per_tx,
        "client_ms": used.children * per_tx,
        "statements": out[statements:] if statements >= 0 else "",
    }


def run_ceiling(
    concurrencies: list[int],
    seconds: int,
    *,
    protocol: str = "simple",
    base_url: str | None = None,
) -> tuple[dict[tuple[str, int], dict[str, object]], list[str]]:
    """Prepare the ceiling database and run both scripts at each concurrency.

    Returns the results by (script, concurrency) and the invariants' PASS/FAIL lines.
    """
    url = common.database_url(
        common.database_name(base_url or common.base_database_url()) + "_ceiling", base_url
    )
    prepare(url)
    results = {}
    with tempfile.TemporaryDirectory(prefix="leaddist-ceiling-") as tmp:
        run = 0
        for clients in concurrencies:
            for script in SCRIPTS:
                run += 1
                common.log(f"pgbench {script} -c {clients} -T {seconds}")
                results[script, clients] = run_pgbench(
                    url,
                    script,
                    clients=clients,
                    seconds=seconds,
                    run=run,
                    protocol=protocol,
                    workdir=Path(tmp),
                )
    return results, common.check_invariants(url, "ceiling")


def ceiling_table(results: dict[tuple[str, int], dict[str, object]]) -> str:
    headers = [
        "pgbench script",
        "c",
        "tx/s",
        "p50 ms",
        "p99 ms",
        "failed",
        "retried",
        "PG CPU ms/tx",
        "pgbench CPU ms/tx",
    ]
    rows = [
        [
            r["script"],
            r["clients"],
            common.fmt(r["tps"], 0),
            common.fmt(r["p50"], 2),
            common.fmt(r["p99"], 2),
            r["failed"],
            r["retried"],
            common.fmt(r["pg_ms"], 3),
            common.fmt(r["client_ms"], 3),
        ]
        for _, r in sorted(results.items(), key=lambda item: (item[0][1], item[0][0]))
    ]
    return common.markdown_table(headers, rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--protocol",
        default="prepared",
        choices=["simple", "extended", "prepared"],
        help="pgbench -M; prepared is what the app does with DEBUG off (server-side binding, "
        "statements prepared per connection), simple what it does with DEBUG on",
    )
    parser.add_argument(
        "--statements", action="store_true", help="also print pgbench's per-statement latencies"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    results, invariants = run_ceiling(args.concurrency, args.seconds, protocol=args.protocol)
    print(ceiling_table(results))
    if args.statements:
        for (script, clients), r in sorted(results.items()):
            print(f"\n{script} -c {clients}:\n{r['statements']}")
    if not common.report_invariants(invariants):
        sys.exit(1)


if __name__ == "__main__":
    main()
