"""Shared code of the benchmarks: throw-away databases, the server table, CPU sampling,
the invariants check and markdown tables.

Not a command. Imported by bench_http.py, bench_ceiling.py, bench_sse.py and bench_allocation.py
(run as scripts, so bench/ is on sys.path). It needs only psycopg, never Django: the app runs
in its own processes (``manage.py`` and the servers) against the bench database.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import pwd
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
# The app the servers and manage.py run: this checkout, or another copy of it (for example
# `git archive HEAD | tar -x -C /tmp/app` while the work tree is mid-change), with this venv.
APP_DIR = Path(os.environ.get("LEADDIST_APP_DIR") or ROOT).resolve()
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
APP = "leaddist.asgi:application"

# --- The servers: change a command here, and only here ------------------------------------
# {port} and {workers} are filled in. An entry without {workers} is one process and runs with
# --workers 1 only. Entries in DEBUG_SERVERS run with DEBUG on (development); the others run
# as production does (DEBUG off, SECRET_KEY, WEBHOOK_SECRET and DELIVERY_SECRET_KEYS set, plain
# HTTP).
SERVERS: dict[str, list[str]] = {
    # Production, as `make serve` and the Dockerfile run it: uvicorn through leaddist.serve.
    "serve": [
        PYTHON,
        *("-m", "leaddist.serve", "--host", "127.0.0.1", "--port", "{port}"),
        *("--workers", "{workers}"),
    ],
    # `make run`: one daphne, DEBUG on.
    "run": [str(VENV_BIN / "daphne"), "-b", "127.0.0.1", "-p", "{port}", APP],
    # The candidates production was chosen from, each as plainly as it runs.
    "daphne": [str(VENV_BIN / "daphne"), "-b", "127.0.0.1", "-p", "{port}", APP],
    "granian": [
        str(VENV_BIN / "granian"),
        *("--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}"),
        *("--workers", "{workers}", "--loop", "uvloop", "--log-level", "warning", APP),
    ],
    "uvicorn": [
        str(VENV_BIN / "uvicorn"),
        *(APP, "--host", "127.0.0.1", "--port", "{port}", "--workers", "{workers}"),
        *("--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log"),
    ],
}
DEBUG_SERVERS = frozenset({"run"})

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/leaddist_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
SECRET_KEY = "leaddist-bench-secret-key-not-for-production-0123456789abcdef"
WEBHOOK_SECRET = "whsec_YmVuY2gtYmVuY2gtYmVuY2gtYmVuY2gtYmVuY2g="
# Every process of a run shares it: the endpoint secrets bench_http copies in SQL decrypt anywhere.
DELIVERY_SECRET_KEYS = "YmVuY2gtZGVsaXZlcnktc2VjcmV0LWtleS0zMmJ5dGU="
BENCH_QUOTA = 100_000_000
STARTUP_SECONDS = 60


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the results."""
    print(message, file=sys.stderr, flush=True)


# --- Databases ------------------------------------------------------------------------------
def base_database_url() -> str:
    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def database_url(name: str, base: str | None = None) -> str:
    """``base`` (default: DATABASE_URL or the bench default) with its database name replaced."""
    parts = urlsplit(base or base_database_url())
    return urlunsplit(parts._replace(path="/" + name))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def connect(url: str, **kwargs: object) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, **kwargs)


def recreate_database(url: str) -> None:
    """Drop the database of ``url`` if it exists (closing its sessions), then create it."""
    name = database_name(url)
    with connect(database_url("postgres", url)) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def app_env(
    url: str, *, debug: bool = False, redis_url: str | None = None, app_dir: Path = APP_DIR
) -> dict[str, str]:
    """The environment of every app process the benchmarks start (servers and manage.py), of
    the app in ``app_dir`` (default APP_DIR)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"REDIS_URL", "WEB_CONCURRENCY", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(
        DATABASE_URL=url,
        DEBUG="true" if debug else "false",
        SECRET_KEY=SECRET_KEY,
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        DELIVERY_SECRET_KEYS=DELIVERY_SECRET_KEYS,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECURE_SSL_REDIRECT="false",
        # Production defaults otherwise: the API key's default rate limit (1000/s, counted in
        # Redis with several workers) and INFO logs (one audit line per lead).
        RATE_LIMIT_PER_IP="0",
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(app_dir),
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def manage(url: str, *args: str, app_dir: Path = APP_DIR) -> str:
    """Run ``manage.py ARGS`` against the database of ``url``; return its stdout."""
    result = subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=app_dir,
        env=app_env(url, app_dir=app_dir),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def prepare_app_database(url: str, *, api_key: bool = True, app_dir: Path = APP_DIR) -> str | None:
    """A fresh database at ``url``: migrated, seeded, ample quotas; return a new API key."""
    log(f"preparing database {database_name(url)} (migrate, seed)")
    recreate_database(url)
    manage(url, "migrate", "--no-input", "--verbosity", "0", app_dir=app_dir)
    manage(url, "seed", app_dir=app_dir)
    with connect(url) as conn:
        conn.execute(
            "UPDATE providers_provider SET quota = %s, remaining_quota = %s",
            [BENCH_QUOTA, BENCH_QUOTA],
        )
    if not api_key:
        return None
    return manage(url, "create_api_key", "bench", app_dir=app_dir).strip().splitlines()[-1].strip()


SESSION_SCRIPT = """
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
user, _ = get_user_model().objects.get_or_create(
    username="bench-staff", defaults={"is_staff": True}
)
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
print(session.session_key)
"""


def staff_session(url: str) -> str:
    """The key of a new session of a staff user (the sessionid cookie), made in the store."""
    return manage(url, "shell", "-c", SESSION_SCRIPT).strip().splitlines()[-1].strip()


def count_leads(url: str) -> int:
    with connect(url) as conn:
        return conn.execute("SELECT count(*) FROM allocation_lead").fetchone()[0]


def settle(url: str, *, quiet: float = 0.3, limit: float = 30.0) -> int:
    """Wait until the number of stored leads stops changing (requests still in the server
    when the load generator stopped); return it."""
    deadline = time.monotonic() + limit
    last = count_leads(url)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = count_leads(url)
        if now == last:
            return now
        last = now
    return last


# --- Servers --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_workers(name: str, workers: int) -> int:
    """The worker count the entry can run: 1 for an entry without {workers}."""
    return workers if "{workers}" in SERVERS[name] else 1


def server_command(name: str, *, port: int, workers: int) -> list[str]:
    return [part.format(port=port, workers=workers) for part in SERVERS[name]]


@dataclass
class Server:
    name: str
    workers: int
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def http_status(port: int, path: str, timeout: float = 2.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


@contextlib.contextmanager
def run_server(
    name: str,
    *,
    url: str,
    workers: int,
    redis_url: str | None,
    log_dir: Path,
    app_dir: Path = APP_DIR,
) -> Iterator[Server]:
    """Start the entry ``name`` of SERVERS on a free port until the block ends.

    REDIS_URL is set when more than one process serves. The server gets its own session, so
    it and all its workers are stopped by its process group id.
    """
    if name not in SERVERS:
        sys.exit(f"Unknown server {name!r}; known: {', '.join(SERVERS)}")
    port = free_port()
    workers = server_workers(name, workers)
    command = server_command(name, port=port, workers=workers)
    env = app_env(
        url,
        debug=name in DEBUG_SERVERS,
        redis_url=redis_url if workers > 1 else None,
        app_dir=app_dir,
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{name}-w{workers}-{port}.log"
    log(f"starting {name} (workers {workers}): {' '.join(command)}")
    with log_path.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=app_dir,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(name, workers, port, process, log_path)
    try:
        wait_until_up(server)  # raises ServerFailed
        yield server
    finally:
        stop_server(server)


class ServerFailed(Exception):
    """The server exited or did not answer /healthz in time."""


def wait_until_up(server: Server, *, in_a_row: int = 5) -> None:
    """Until /healthz answered 200 ``in_a_row`` times in a row, 0.1 s apart (a server whose
    workers are still starting may answer once and refuse the next connection)."""
    deadline = time.monotonic() + STARTUP_SECONDS
    ok = 0
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerFailed(
                f"{server.name} exited with {server.process.returncode}:\n{server.output()}"
            )
        try:
            ok = ok + 1 if http_status(server.port, "/healthz") == 200 else 0
        except (OSError, http.client.HTTPException):
            ok = 0
        if ok >= in_a_row:
            return
        time.sleep(0.1)
    raise ServerFailed(
        f"{server.name} did not answer /healthz within {STARTUP_SECONDS}s:\n{server.output()}"
    )


def stop_server(server: Server) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left after 15 s."""
    pgid = server.process.pid  # start_new_session: the group id is the leader's pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        log(f"{server.name} did not stop within 15 s; killing its process group")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.process.wait(timeout=5)


# --- The providers' webhook receiver ------------------------------------------------------------
RECEIVER = Path(__file__).resolve().with_name("receiver.py")
HANG_SECONDS = 15.0  # longer than DELIVERY_TIMEOUT_SECONDS (10 s): the attempt times out


class Receiver:
    """The webhook receivers (bench/receiver.py, a process of its own, so that its CPU is
    counted apart): ``fast`` answers 200 at once, ``hang`` holds each request HANG_SECONDS
    before answering (the delivery's timeout fires first), ``slow`` answers after ``slow``
    seconds. With ``record``, :meth:`close` returns every receipt: (Unix time, webhook-id,
    path)."""

    def __init__(self, *, slow: float = 1.0, record: bool = False) -> None:
        self.record = None
        command = [sys.executable, str(RECEIVER), str(HANG_SECONDS), "--slow", str(slow)]
        if record:
            import tempfile

            self.record = Path(tempfile.mkstemp(prefix="leaddist-receipts-")[1])
            command += ["--record", str(self.record)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        fast, hang, slow_port = self.process.stdout.readline().split()
        self.ports = {"fast": int(fast), "hang": int(hang), "slow": int(slow_port)}

    def url(self, kind: str, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.ports[kind]}{path}"

    def cpu_seconds(self) -> float:
        return _tree_ticks(_processes(), [self.process.pid]) / CLOCK_TICKS

    def close(self) -> list[tuple[float, str, str]]:
        self.process.terminate()
        self.process.wait(timeout=10)
        if self.record is None:
            return []
        receipts = []
        for line in self.record.read_text().splitlines():
            at, webhook_id, path = line.split(" ")
            receipts.append((float(at), webhook_id, path))
        self.record.unlink()
        return receipts


# --- CPU ------------------------------------------------------------------------------------
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    uid: int
    ticks: int  # utime + stime + cutime + cstime (the last two: reaped children)


def _processes() -> dict[int, ProcStat]:
    procs = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                raw = f.read()
            uid = entry.stat().st_uid
        except OSError:
            continue  # gone meanwhile
        fields = raw[raw.rindex(b")") + 2 :].split()
        # fields[0] is field 3 of proc(5): ppid is 4, utime..cstime are 14..17
        ticks = sum(int(v) for v in fields[11:15])
        pid = int(entry.name)
        procs[pid] = ProcStat(pid, int(fields[1]), uid, ticks)
    return procs


def _tree_ticks(procs: dict[int, ProcStat], roots: Iterable[int]) -> int:
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    total, stack, seen = 0, [r for r in roots if r in procs], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += procs[pid].ticks
        stack.extend(children.get(pid, ()))
    return total


def postgres_uid() -> int | None:
    try:
        return pwd.getpwnam("postgres").pw_uid
    except KeyError:
        return None


def postgres_roots(procs: dict[int, ProcStat]) -> list[int]:
    """The postmaster(s): processes of user postgres whose parent is not one."""
    uid = postgres_uid()
    return [
        p.pid
        for p in procs.values()
        if p.uid == uid and (p.ppid not in procs or procs[p.ppid].uid != uid)
    ]


# Process titles of PostgreSQL's shared background processes ("postgres: 15/main: walwriter").
PG_BACKGROUND = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "logical replication launcher",
    "archiver",
    "stats collector",
)


def _pg_kind(pid: int, database: str) -> str:
    """Return "ours" for a backend or autovacuum worker of ``database`` (its title names it),
    the postmaster or a shared background process; "other" for another database's."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "other"
    if not title.startswith("postgres:"):
        return "ours"  # the postmaster (its argv is its command line)
    rest = title.split(":", 2)[-1].strip()
    if rest.startswith(PG_BACKGROUND) or database in rest.split():
        return "ours"
    return "other"


class CpuMeter:
    """CPU used during a ``with`` block, in seconds, by:

    - ``server``: ``server_pid`` and all its descendants (utime + stime + cutime + cstime from
      /proc/<pid>/stat at the start and the end; the c- fields hold reaped children);
    - ``postgres``: the PostgreSQL processes working for ``database``: its backends and
      autovacuum workers (recognised by their process title), plus the postmaster and the
      shared background processes (checkpointer, walwriter...). A thread polls them every
      ``interval`` seconds, so backends that exit during the block (pgbench's, at its end)
      count up to their last poll; another database's backends never count;
    - ``postgres_all``: the postmaster and all its descendants, whatever the database (exited
      ones through cutime), to tell how much other work the cluster did meanwhile;
    - ``children``: the processes this process started and waited for (wrk, pgbench).
    """

    def __init__(
        self, server_pid: int | None = None, database: str | None = None, interval: float = 0.05
    ) -> None:
        self.server_pid = server_pid
        self.database = database
        self.interval = interval
        self.server = self.postgres = self.postgres_all = self.children = 0.0
        self._uid = postgres_uid()
        self._kinds: dict[int, str] = {}
        self._base: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self, first: bool = False) -> None:
        if self.database is None or self._uid is None:
            return
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            kind = self._kinds.get(pid)
            try:
                if kind is None:
                    if entry.stat().st_uid != self._uid:
                        self._kinds[pid] = kind = "foreign"
                    else:
                        self._kinds[pid] = kind = _pg_kind(pid, self.database)
                if kind != "ours":
                    continue
                with open(f"/proc/{pid}/stat", "rb") as f:
                    raw = f.read()
            except OSError:
                continue
            fields = raw[raw.rindex(b")") + 2 :].split()
            ticks = int(fields[11]) + int(fields[12])  # utime + stime: exits are polled
            self._base.setdefault(pid, ticks if first else 0)
            self._last[pid] = ticks

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def _totals(self) -> tuple[float, float, float]:
        procs = _processes()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        server = _tree_ticks(procs, [self.server_pid]) if self.server_pid else 0
        every = _tree_ticks(procs, postgres_roots(procs))
        return server / CLOCK_TICKS, every / CLOCK_TICKS, usage.ru_utime + usage.ru_stime

    def __enter__(self) -> CpuMeter:
        self._start = self._totals()
        self._poll(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()
        end = self._totals()
        self.server, self.postgres_all, self.children = (
            b - a for a, b in zip(self._start, end, strict=True)
        )
        self.postgres = sum(self._last[pid] - self._base[pid] for pid in self._last) / CLOCK_TICKS
        other = self.postgres_all - self.postgres
        if self.postgres and other > 0.2 * self.postgres and other > 0.5:
            log(
                f"note: PostgreSQL spent {other:.1f} CPU-s on other databases meanwhile "
                f"({self.postgres:.1f} on {self.database}): the machine is not quiet"
            )


# --- Invariants -----------------------------------------------------------------------------
LEADS_SQL = """
WITH a AS (
    SELECT lead_id, count(*) AS n, count(DISTINCT provider_id) AS providers,
           count(DISTINCT rank) AS ranks, min(rank) AS lo, max(rank) AS hi
      FROM allocation_allocation GROUP BY lead_id
)
SELECT count(*) FILTER (WHERE l.status = 'allocated'),
       count(*) FILTER (WHERE l.status = 'waiting'),
       count(*) FILTER (WHERE l.status = 'allocated' AND (a.n IS NULL OR a.n <> 3
                        OR a.providers <> 3 OR a.ranks <> 3 OR a.lo <> 1 OR a.hi <> 3)),
       count(*) FILTER (WHERE l.status = 'waiting' AND a.n IS NOT NULL),
       count(*) FILTER (WHERE l.status NOT IN ('allocated', 'waiting'))
  FROM allocation_lead l LEFT JOIN a ON a.lead_id = l.id
 WHERE {leads_where}
"""

PROVIDERS_SQL = """
SELECT p.id, p.quota, p.remaining_quota, p.leads_this_cycle, p.leads_total,
       count(a.id) FILTER (WHERE a.cycle = p.cycle), count(a.id)
  FROM providers_provider p LEFT JOIN allocation_allocation a ON a.provider_id = p.id
 GROUP BY p.id ORDER BY p.id
"""

# Only providers without routing rules (SPEC §2a): one that serves some cities or hours takes
# only some leads, so the round robin's spread of 1 holds among the others only.
POOL_SQL = """
SELECT m.service_id, m.provider_id, m.provider_eligible, coalesce(c.n, 0)
  FROM providers_membership m
  JOIN providers_provider p ON p.id = m.provider_id{routing_rules}
  LEFT JOIN (
      SELECT l.service_id, a.provider_id, count(*) AS n
        FROM allocation_allocation a JOIN allocation_lead l ON l.id = a.lead_id
       WHERE a.role = 'pool'
       GROUP BY l.service_id, a.provider_id
  ) c ON c.service_id = m.service_id AND c.provider_id = m.provider_id
 WHERE m.role = 'pool'
 ORDER BY m.service_id, m.position
"""
POOL_ROUTING_RULES = """
       AND cardinality(p.cities) = 0 AND p.hours = '' AND p.time_off = '[]'::jsonb
       AND p.daily_cap IS NULL AND p.weekly_cap IS NULL"""
POOL_SQL = POOL_SQL.replace("{routing_rules}", POOL_ROUTING_RULES)


def check_invariants(
    url: str,
    label: str = "",
    *,
    leads_where: str = "TRUE",
    ineligible: Sequence[int] = (),
    max_spread_services: int = 20,
) -> list[str]:
    """Check the engine's invariants from the database; return PASS/FAIL lines.

    - every allocated lead has 3 allocations, 3 distinct providers, ranks 1..3;
      no waiting lead has any (``leads_where`` limits the leads looked at, e.g. to leave out
      bulk-loaded history);
    - per provider: quota - remaining_quota = allocations of its current cycle =
      leads_this_cycle, leads_total = all its allocations, 0 <= remaining_quota <= quota;
    - per service, pool allocations per pool provider differ by at most 1 among providers
      eligible the whole run: all but those in ``ineligible``, those ineligible now, and those
      with routing rules (eligible for some leads only).
    """
    prefix = f"[{label}] " if label else ""
    lines: list[str] = []

    def verdict(ok: bool, text: str) -> None:
        lines.append(f"{'PASS' if ok else 'FAIL'} {prefix}{text}")

    with connect(url) as conn:
        allocated, waiting, bad_alloc, bad_wait, bad_status = conn.execute(
            LEADS_SQL.format(leads_where=leads_where)
        ).fetchone()
        verdict(
            bad_alloc == 0 and bad_status == 0,
            f"{allocated} allocated leads with 3 allocations, 3 providers, ranks 1..3"
            + (f"; {bad_alloc} not" if bad_alloc else "")
            + (f"; {bad_status} with an unknown status" if bad_status else ""),
        )
        verdict(
            bad_wait == 0,
            f"{waiting} waiting leads without allocations"
            + (f"; {bad_wait} with some" if bad_wait else ""),
        )
        wrong = []
        for pid, quota, remaining, this_cycle, total, n_cycle, n_all in conn.execute(PROVIDERS_SQL):
            if not (
                quota - remaining == n_cycle == this_cycle
                and total == n_all
                and 0 <= remaining <= quota
            ):
                wrong.append(
                    f"#{pid}: quota {quota} remaining {remaining} this_cycle {this_cycle} "
                    f"total {total}, allocations {n_cycle} this cycle / {n_all} all"
                )
        verdict(
            not wrong,
            "providers: quota - remaining = allocations this cycle = leads_this_cycle, "
            "leads_total = allocations, 0 <= remaining <= quota"
            + ("; " + "; ".join(wrong[:5]) if wrong else ""),
        )
        pools: dict[int, list[tuple[int, bool, int]]] = {}
        routed = conn.execute(
            "SELECT EXISTS (SELECT FROM information_schema.columns"
            " WHERE table_name = 'providers_provider' AND column_name = 'cities')"
        ).fetchone()[0]
        # An earlier version (LEADDIST_APP_DIR) has no routing rules: every provider counts.
        pool_sql = POOL_SQL if routed else POOL_SQL.replace(POOL_ROUTING_RULES, "")
        for service, provider, eligible, n in conn.execute(pool_sql):
            pools.setdefault(service, []).append((provider, eligible, n))
    skip = set(ineligible)
    spreads = []
    for service, members in sorted(pools.items()):
        counts = {p: n for p, eligible, n in members if eligible and p not in skip}
        if not counts:
            continue
        spread = max(counts.values()) - min(counts.values())
        spreads.append((service, spread, counts))
    bad = [s for s in spreads if s[1] > 1]
    shown = spreads if len(spreads) <= max_spread_services else bad[:max_spread_services]
    detail = "; ".join(
        f"service {s}: spread {spread}"
        + (
            " (" + " ".join(f"#{p}={n}" for p, n in counts.items()) + ")"
            if len(counts) <= 8
            else f" over {len(counts)} providers, {min(counts.values())}..{max(counts.values())}"
        )
        for s, spread, counts in shown
    )
    verdict(not bad, f"pool spread <= 1 per service: {detail or 'no pool'}")
    return lines


def report_invariants(lines: Iterable[str]) -> bool:
    """Print the lines under a heading; True if all passed."""
    lines = list(lines)
    print("\nInvariants:")
    for line in lines:
        print(f"    {line}")
    return all(line.startswith("PASS") for line in lines)


# --- Output ---------------------------------------------------------------------------------
def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return "\n".join(out)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of ``values`` (0 < q <= 100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards ``wanted`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft
