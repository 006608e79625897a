"""Surviving a lost database connection: recognise one, and get a good one back.

A pooled connection can die while it waits in the pool (PostgreSQL restarted, an operator's
``pg_terminate_backend``, a network blip). Two defences:

- Before a connection is lent, :func:`usable` asks whether it died while it waited, without a
  round trip: PostgreSQL tells a client when it ends its session, and that notice (and the end
  of the stream) waits on the idle socket, where a zero-timeout poll sees it. The database
  engine (leaddist.http.postgresql) and the background workers' pool (leaddist.background)
  lend only connections that pass, so a request or a job never starts on a dead one.
- A connection cut silently (a network partition) passes, and its first statement fails; the
  callers that must not fail (the engine, the key lookup, the health check) then call
  :func:`recover` and try once more on a fresh connection. :func:`recover` also checks the
  connections still idle in the pool, so a whole pool lost at once costs one retry.
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
from django.db import DatabaseError, InterfaceError, connection

# PostgreSQL's largest bigint: no id beyond it can exist, so nothing need ask the database.
MAX_BIGINT = 2**63 - 1

logger = logging.getLogger(__name__)

T = TypeVar("T")

# admin_shutdown, crash_shutdown, cannot_connect_now, idle_session_timeout; and class 08,
# connection exceptions.
LOST_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "57P05"})
# deadlock_detected, serialization_failure, lock_not_available (lock_timeout): the statement was
# refused for now, nothing of its transaction is stored, and the same request may succeed later.
TRANSIENT_SQLSTATES = frozenset({"40P01", "40001", "55P03"})
# Dead pooled connections are logged once in this long per process, not one line each: a
# restart of PostgreSQL kills every connection of every pool at once.
DEAD_LOG_SECONDS = 60.0
_dead_logged_at: float | None = None


def connection_lost(exc: BaseException) -> bool:
    """Did ``exc`` come from a connection that is gone (as opposed to a refused statement)?"""
    if isinstance(exc, InterfaceError):  # Django: "connection already closed"
        return True
    if not isinstance(exc, DatabaseError | psycopg.Error):
        return False
    cause = exc.__cause__ if isinstance(exc, DatabaseError) else exc
    if not isinstance(cause, psycopg.Error):
        return False
    sqlstate = cause.sqlstate
    if sqlstate is None:
        # psycopg's own errors: "server closed the connection unexpectedly", "the connection
        # is closed", a failed connect.
        return isinstance(cause, psycopg.OperationalError | psycopg.InterfaceError)
    return sqlstate.startswith("08") or sqlstate in LOST_SQLSTATES


def is_transient(exc: BaseException) -> bool:
    """Was ``exc`` a lock wait or a conflict that gave up (as opposed to a bad statement)?"""
    cause = exc.__cause__ if isinstance(exc, DatabaseError) else exc
    return getattr(cause, "sqlstate", None) in TRANSIENT_SQLSTATES


def lost_while_idle(conn: psycopg.Connection | psycopg.AsyncConnection) -> bool | None:
    """Has this idle connection been lost? Told without a round trip where possible: True if it
    is closed, False if nothing has arrived on it since its last statement, None if something
    has (a termination notice, or a harmless notification) and only a round trip can tell."""
    if conn.closed or conn.broken:
        return True
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        arrived = poller.poll(0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return None if arrived else False


def usable(conn: psycopg.Connection) -> bool:
    """May this idle pooled connection be lent? A connection that fails is closed, so that the
    pool it goes back to discards it and opens another in its place."""
    lost = lost_while_idle(conn)
    if lost is None:
        try:
            conn.execute("")
        except psycopg.Error:
            lost = True
        else:
            lost = False
    if lost:
        conn.close()
        _dead_found()
    return not lost


def _dead_found() -> None:
    global _dead_logged_at
    now = time.monotonic()
    if _dead_logged_at is None or now - _dead_logged_at >= DEAD_LOG_SECONDS:
        _dead_logged_at = now
        logger.warning(
            "a pooled database connection had died (PostgreSQL restarted, or its session was "
            "terminated); replaced. Others in the next %g s are replaced without a word",
            DEAD_LOG_SECONDS,
        )


async def usable_async(conn: psycopg.AsyncConnection) -> bool:
    """:func:`usable`, for an asyncio connection."""
    lost = lost_while_idle(conn)
    if lost is None:
        try:
            await conn.execute("")
        except psycopg.Error:
            lost = True
        else:
            lost = False
    if lost:
        await conn.close()
        _dead_found()
    return not lost


def recover() -> None:
    """Drop this thread's connection and check the pool's idle ones; call outside a transaction."""
    logger.warning("database connection lost; retrying on a fresh one")
    connection.close()
    pool = getattr(connection, "pool", None)
    if pool is not None:
        try:
            pool.check()
        except Exception:  # the server may still be away: the retry will say so
            logger.warning("could not check the connection pool", exc_info=True)


def once_more_if_lost(attempt: Callable[[], T], *, lost_again: Callable[[], T]) -> T:
    """Run ``attempt``; if its connection was lost, :func:`recover` and run it once more; if that
    one loses its connection too, return ``lost_again()`` (a "busy" answer: nothing committed).

    Only for an attempt that commits nothing before its last statement succeeds, or answers a
    committed result from what it decided: then running it twice can never store twice.
    """
    try:
        return attempt()
    except DatabaseError as exc:
        if not connection_lost(exc):
            raise
    recover()
    try:
        return attempt()
    except DatabaseError as exc:
        if not connection_lost(exc):
            raise
    return lost_again()
