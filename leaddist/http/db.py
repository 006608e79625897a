"""Surviving a lost database connection: recognise one, and get a good one back.

A pooled connection can die while it waits in the pool (PostgreSQL restarted, an operator's
``pg_terminate_backend``, a network blip). Checking every connection before lending it costs a
round trip per request; instead the first statement on a dead connection fails, and the caller
(the engine, the key lookup) calls :func:`recover` and tries once more on a fresh connection.
:func:`recover` also checks the connections still idle in the pool, so a whole pool killed at
once costs one retry, not one failure per connection.
"""

from __future__ import annotations

import logging
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
