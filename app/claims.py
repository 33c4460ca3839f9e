"""Firm claims: several workers (``firmtopics run`` processes) share one run through
PostgreSQL, and no firm is ever computed by two of them at once.

A worker claims a firm by taking a session-level advisory lock on (run, firm) on a
connection of its own, held from before the firm is loaded until it is written. The lock
belongs to that connection's session: if the worker dies (killed, spot loss), the server
ends the session and the firm is free for another worker at once; no lease to expire,
no row to clean up. A claim is refused when another worker holds it or when the firm is
already recorded for the run (written by someone else meanwhile).

The theme stage is run by one worker only: the one that takes the run's theme lock
(another advisory lock, on its own key space) when no firm is left.

One worker alone takes every claim it asks for, and behaves as before.
"""

from __future__ import annotations

import contextlib
import os
import socket

import anyio
import asyncpg

from app.database import RETRYABLE, with_connection_retry

# Advisory lock key spaces. Firm claims use the two-integer form (run id, hash of the firm
# id); the theme stage the one-bigint form, which PostgreSQL keeps apart from the other.
_THEME_LOCK_BASE = 7_424_002 << 24


class FirmClaims:
    """The claims of one worker on one run, on a connection of their own.

    Use as ``async with FirmClaims(pool, run_id) as claims:``: it holds one of the pool's
    connections for the stage; leaving the block (or the process dying) releases every
    claim still held."""

    def __init__(self, pool: asyncpg.Pool, run_id: int) -> None:
        self._pool = pool
        self.run_id = run_id
        self._acquired = None  # the pool's acquire context of the claims connection
        self._conn: asyncpg.Connection | None = None
        self._lock = anyio.Lock()  # one query at a time on the claims connection
        self.held: set[str] = set()

    async def __aenter__(self) -> "FirmClaims":
        await self._connect()
        return self

    async def __aexit__(self, *exc) -> None:
        self.held.clear()
        with anyio.CancelScope(shield=True):
            await self._disconnect()

    async def _connect(self) -> None:
        self._acquired = self._pool.acquire()
        self._conn = await self._acquired.__aenter__()
        # Named, so that ``status`` can say which worker holds which firm (workers_in_flight).
        await self._conn.execute("SELECT set_config('application_name', $1, false)", worker_name())

    async def _disconnect(self) -> None:
        acquired, self._acquired, self._conn = self._acquired, None, None
        if acquired is None:
            return
        # The pool resets a connection it takes back, advisory locks included.
        try:
            await acquired.__aexit__(None, None, None)
        except RETRYABLE:
            pass  # the connection is gone, and its session's locks with it

    async def _run(self, action):
        """``await action(conn)`` on the claims connection. A lost connection (a restart, a
        failover) loses its session's locks: a new connection is taken, the claims still
        held are taken again, and the action is retried, for as long as the run's retry
        window allows (``with_connection_retry``'s policy)."""
        def usable() -> bool:
            try:
                return self._conn is not None and not self._conn.is_closed()
            except RETRYABLE:  # a connection the pool took back answers nothing
                return False

        async def attempt(_unused):
            if not usable():
                await self._disconnect()
                await self._connect()
                for firm_id in sorted(self.held):
                    await self._conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", self.run_id, firm_id)
            try:
                return await action(self._conn)
            except RETRYABLE:
                await self._disconnect()
                raise

        return await with_connection_retry(_NoPool(), attempt, what="claim a firm")

    async def take(self, firm_id: str) -> bool:
        """Claim ``firm_id``: True when this worker now holds it and the run has not
        recorded it; False when another worker holds it or it is recorded already."""
        async def take(conn: asyncpg.Connection) -> bool:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", self.run_id, firm_id):
                return False
            if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM run_firms WHERE run_id = $1 AND firm_id = $2)",
                                   self.run_id, firm_id):
                await conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", self.run_id, firm_id)
                return False
            return True

        async with self._lock:
            taken = await self._run(take)
            if taken:
                self.held.add(firm_id)
            return taken

    async def release(self, firm_id: str) -> None:
        """Give ``firm_id`` back (after it was written, or dropped)."""
        if firm_id not in self.held:
            return
        async with self._lock:
            self.held.discard(firm_id)
            await self._run(lambda conn: conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))",
                                                      self.run_id, firm_id))


class _NoPool:
    """``with_connection_retry`` takes its connections from a pool; the claims keep their
    own, so this stand-in hands ``None`` to the action, which uses the claims connection."""

    @staticmethod
    def acquire():
        return contextlib.nullcontext()


def worker_name() -> str:
    """This worker as ``status`` shows it: ``firmtopics worker HOST pid PID``."""
    return f"firmtopics worker {socket.gethostname()[:40]} pid {os.getpid()}"


async def workers_in_flight(conn: asyncpg.Connection, run_id: int) -> list[dict]:
    """The firms of ``run_id`` claimed right now, by which worker and since when (the
    worker's claims connection's start): ``worker``, ``firm_id``, ``since`` (ISO), from the
    server's own lock table, so a dead worker's claims are simply gone."""
    rows = await conn.fetch(
        "SELECT a.application_name AS worker, f.firm_id, a.backend_start AS since"
        " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " JOIN firms f ON l.objid = (hashtext(f.firm_id)::bigint & 4294967295)::oid"
        " WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted AND l.classid = $1::oid"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " ORDER BY a.application_name, f.firm_id", run_id)
    return [{"worker": r["worker"], "firm_id": r["firm_id"], "since": r["since"].isoformat(timespec="seconds")}
            for r in rows]


async def take_theme_lock(conn: asyncpg.Connection, run_id: int) -> bool:
    """Try to become the worker that runs the theme stage of ``run_id``; the lock is held
    by ``conn``'s session until it is closed or ``release_theme_lock``. Returns whether
    this worker got it."""
    return await conn.fetchval("SELECT pg_try_advisory_lock($1)", _THEME_LOCK_BASE + run_id)


async def release_theme_lock(conn: asyncpg.Connection, run_id: int) -> None:
    """Give the theme stage's lock back."""
    await conn.execute("SELECT pg_advisory_unlock($1)", _THEME_LOCK_BASE + run_id)
