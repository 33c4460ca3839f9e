"""Firm claims: several workers (``firmtopics run`` processes) share one run through
PostgreSQL, and each firm is computed by the worker that claims it. Only a worker that
loses its claims connection (a failover) can lose a claim while it computes the firm;
another worker may then take the firm too, and the first copy written stands
(``FirmClaims._take_again``, ``app.writer.write_firm_with_retry``).

A worker claims a firm by taking a session-level advisory lock on (run, firm) on a
connection of its own, held from before the firm is loaded until it is written. The lock
belongs to that connection's session: if the worker dies (killed, spot loss), the server
ends the session and the firm is free for another worker at once; no lease to expire,
no row to clean up. A claim is refused when another worker holds it or when the firm is
already recorded for the run (written by someone else meanwhile).

Why not row locks taken with ``SELECT ... FOR UPDATE SKIP LOCKED``, as PostgreSQL job
queues do: a row lock lives as long as its transaction, so each firm would keep a
transaction open through its whole compute and naming (seconds to minutes), holding back
vacuum with a connection "idle in transaction". A session advisory lock needs no open
transaction, is passed over the same way (``pg_try_advisory_lock``), and ends with its
session all the same.

The theme stage is run by one worker only: the one that takes the run's theme lock
(another advisory lock, on its own key space) when no firm is left. That lock, too, is
held on a connection of its own (``ThemeLock``), replaced and taken again when lost; the
holder checks it every ``THEME_LOCK_CHECK_S`` while its stage runs, so a lost connection
is found within seconds, not at the end, and a worker whose lock was taken by another
during a failover stops its stage.

With ``LLM_RUN_CONCURRENCY`` set, LLM requests are limited for the whole run, across
workers, the same way: a request is sent while its worker holds one of that many slots
(``LLMSlots``), each an advisory lock of the run.

One worker alone takes every claim it asks for.
"""

from __future__ import annotations

import contextlib
import os
import socket

import anyio
import asyncpg

from app.database import RETRYABLE, retry_connection_errors
from app.errors import first_error
from app.logs import get_logger

log = get_logger("claims")

# Advisory lock key spaces. Firm claims use the two-integer form (run id, hash of the firm
# id); the theme stage the one-bigint form, which PostgreSQL keeps apart from the other.
_THEME_LOCK_BASE = 7_424_002 << 24
# LLM slots: one bigint per (run, slot), above every theme lock key; 1,023 slots at most.
_LLM_SLOT_BASE = 7_424_003 << 40
# Seconds between two checks of the theme lock's connection while its stage runs.
THEME_LOCK_CHECK_S = 1.0


class _LockSession:
    """Advisory locks held on one connection of their own, taken from the pool for as long
    as the ``async with`` block lasts; leaving it (or the process dying) releases them all.

    A lost connection (a restart, a failover) loses its session's locks: the next query
    takes a new connection, first takes again what was held (``_take_again``), and is
    retried, for as long as the run's retry window allows (``retry_connection_errors``)."""

    kind = "locks"  # what the locks are, for the log

    def __init__(self, pool: asyncpg.Pool, *, window_s: float | None = None) -> None:
        self._pool = pool
        self._window_s = window_s  # how long a lost connection is retried (DB_RETRY_WINDOW_S)
        self._acquired = None  # the pool's acquire context of the connection
        self._conn: asyncpg.Connection | None = None
        self._lock = anyio.Lock()  # one query at a time on the connection
        self._connections = 0  # connections taken so far: more than one means one was lost

    async def __aenter__(self):
        await self._connect()
        return self

    async def __aexit__(self, *exc) -> None:
        with anyio.CancelScope(shield=True):
            await self._disconnect()

    async def _connect(self) -> None:
        self._acquired = self._pool.acquire()
        self._conn = await self._acquired.__aenter__()
        # Named, so that ``status`` can say which worker holds which firm (workers_in_flight).
        await self._conn.execute("SELECT set_config('application_name', $1, false)", worker_name())
        self._connections += 1
        if self._connections > 1:
            log.warning("lock_connection_replaced", locks=self.kind,
                        reason="the connection holding them was lost; they are taken again on a new one")

    async def _disconnect(self) -> None:
        acquired, self._acquired, self._conn = self._acquired, None, None
        if acquired is None:
            return
        # The pool resets a connection it takes back, advisory locks included.
        try:
            await acquired.__aexit__(None, None, None)
        except RETRYABLE:
            pass  # the connection is gone, and its session's locks with it

    async def _take_again(self, conn: asyncpg.Connection) -> None:
        """Take again, on a new connection, the locks the lost one held."""

    async def _run(self, action, what: str):
        """``await action(conn)`` on the session's connection, one at a time, surviving a
        lost connection as the class says."""
        def usable() -> bool:
            try:
                return self._conn is not None and not self._conn.is_closed()
            except RETRYABLE:  # a connection the pool took back answers nothing
                return False

        async def attempt():
            if not usable():
                await self._disconnect()
                await self._connect()
                await self._take_again(self._conn)
            try:
                return await action(self._conn)
            except RETRYABLE:
                await self._disconnect()
                raise

        async with self._lock:
            return await retry_connection_errors(attempt, what=what, window_s=self._window_s)


class FirmClaims(_LockSession):
    """The claims of one worker on one run, on a connection of their own.

    Use as ``async with FirmClaims(pool, run_id) as claims:``: it holds one of the pool's
    connections for the stage; leaving the block (or the process dying) releases every
    claim still held."""

    kind = "firm claims"

    def __init__(self, pool: asyncpg.Pool, run_id: int, *, window_s: float | None = None) -> None:
        super().__init__(pool, window_s=window_s)
        self.run_id = run_id
        self.held: set[str] = set()

    async def __aexit__(self, *exc) -> None:
        self.held.clear()
        await super().__aexit__(*exc)

    async def _take_again(self, conn: asyncpg.Connection) -> None:
        for firm_id in sorted(self.held):
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", self.run_id, firm_id):
                # Another worker took it while this one had no connection: it is that
                # worker's now. This one finishes its copy, but the write finds the firm
                # recorded and drops it (write_firm_with_retry).
                self.held.discard(firm_id)
                log.warning("claim_lost", firm=firm_id, reason="taken by another worker during a reconnect")

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
            self.held.add(firm_id)
            return True

        return await self._run(take, what="claim a firm")

    async def release(self, firm_id: str) -> None:
        """Give ``firm_id`` back (after it was written, or dropped)."""
        if firm_id not in self.held:
            return
        self.held.discard(firm_id)
        await self._run(lambda conn: conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))",
                                                  self.run_id, firm_id), what="release a firm")


class LLMSlots(_LockSession):
    """A limit on LLM requests in flight for a whole run, across every worker
    (``LLM_RUN_CONCURRENCY``): ``slots`` advisory locks of the run; a request is sent
    only while its worker holds one. A dead worker's slots end with its session.

    A worker waiting for a slot asks again after a short sleep, growing from
    ``poll_s[0]`` to ``poll_s[1]``: a slot freed is taken within that time
    (``bench/workers.py`` measures what that costs against one worker's own semaphore).
    Only one of a worker's waiting requests asks at a time."""

    kind = "LLM slots"

    def __init__(self, pool: asyncpg.Pool, run_id: int, slots: int, *,
                 poll_s: tuple[float, float] = (0.01, 0.05), window_s: float | None = None) -> None:
        super().__init__(pool, window_s=window_s)
        if not 0 < slots < 1024:
            raise ValueError(f"slots must be between 1 and 1023, not {slots}")
        self.slots = slots
        self._first_key = _LLM_SLOT_BASE + (run_id << 10)
        self._poll_s = poll_s
        self._held: set[int] = set()
        self._waiting = anyio.Lock()  # the queue of this worker's requests waiting for a slot
        self._next = 0  # where the next search starts, so slots are used round the ring

    async def _take_again(self, conn: asyncpg.Connection) -> None:
        for slot in sorted(self._held):
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1::bigint)", self._first_key + slot):
                self._held.discard(slot)  # another worker has it now: one request over, briefly

    async def _try_take(self) -> int | None:
        async def take(conn: asyncpg.Connection) -> int | None:
            # The first free slot from ``_next`` on. Evaluated row by row under LIMIT 1,
            # so at most one lock is taken. Advisory locks are re-entrant within a
            # session, so the slots this worker holds are passed over first (CASE keeps
            # that order: the lock is not even tried for them).
            slot = await conn.fetchval(
                "SELECT s FROM (SELECT ($2 + i) % $3 AS s FROM generate_series(0, $3 - 1) AS i) AS ring"
                " WHERE CASE WHEN s = ANY($4::int[]) THEN false ELSE pg_try_advisory_lock($1::bigint + s) END"
                " LIMIT 1", self._first_key, self._next, self.slots, sorted(self._held))
            if slot is not None:
                self._held.add(slot)
                self._next = (slot + 1) % self.slots
            return slot

        return await self._run(take, what="take an LLM slot")

    @contextlib.asynccontextmanager
    async def slot(self):
        """``async with slots.slot():`` waits for a free slot of the run and holds it for
        the block."""
        async with self._waiting:
            # One request of this worker at a time asks the database; the others queue
            # here, in order. So a worker polls at most 1 / poll_s[0] times a second
            # however many of its requests wait, and at most 1 / poll_s[1] once it has
            # waited a while: the server's load grows with workers, not with requests.
            wait = self._poll_s[0]
            while (slot := await self._try_take()) is None:
                await anyio.sleep(wait)
                wait = min(wait * 2, self._poll_s[1])
        try:
            yield slot
        finally:
            with anyio.CancelScope(shield=True):
                if slot in self._held:
                    self._held.discard(slot)
                    await self._run(lambda conn: conn.execute("SELECT pg_advisory_unlock($1::bigint)",
                                                              self._first_key + slot), what="release an LLM slot")


class ThemeLock(_LockSession):
    """The run's theme lock, held by the one worker that runs the theme stage (and an
    update), on a connection of its own.

    Use as ``async with ThemeLock(pool, run_id) as lock:``, then ``await lock.take()``
    (False: another worker holds it) and ``await lock.hold_while(work)``. Leaving the
    block gives it back (the pool resets the connection; a dead connection has lost it
    already, so giving it back cannot fail)."""

    kind = "theme lock"

    def __init__(self, pool: asyncpg.Pool, run_id: int, *, window_s: float | None = None) -> None:
        super().__init__(pool, window_s=window_s)
        self.run_id = run_id
        self.held = False
        self.lost = False  # another worker took it while this one had no connection

    async def _take_again(self, conn: asyncpg.Connection) -> None:
        if self.held and not await take_theme_lock(conn, self.run_id):
            self.held, self.lost = False, True
            log.warning("theme_lock_lost", run_id=self.run_id,
                        reason="another worker took the theme stage during a reconnect; this one stops its stage")

    async def take(self) -> bool:
        """Try to become the worker that runs the run's theme stage; returns whether it did."""
        async def take(conn: asyncpg.Connection) -> bool:
            self.held = await take_theme_lock(conn, self.run_id)
            return self.held

        return await self._run(take, what="take the theme lock")

    async def hold_while(self, work, *, check_s: float = THEME_LOCK_CHECK_S):
        """``await work()`` while the lock is held, checking its connection every
        ``check_s`` seconds (a lost one is replaced and the lock taken again). Returns what
        ``work`` returns, or None with ``lost`` set when another worker took the lock: the
        work is then cancelled (its open transaction rolls back)."""
        result = None

        async def keep(scope: anyio.CancelScope) -> None:
            while not self.lost:
                await anyio.sleep(check_s)
                await self._run(lambda conn: conn.fetchval("SELECT 1"), what="check the theme lock")
            scope.cancel()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(keep, tg.cancel_scope)
                result = await work()
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        return None if self.lost else result


def worker_name() -> str:
    """This worker as ``status`` shows it: ``firmtopics worker HOST pid PID``."""
    return f"firmtopics worker {socket.gethostname()[:40]} pid {os.getpid()}"


async def take_theme_lock(conn: asyncpg.Connection, run_id: int) -> bool:
    """Try to take the theme lock of ``run_id`` on ``conn`` (``ThemeLock`` is what the
    stages use); the lock is held by ``conn``'s session until it is closed or
    ``release_theme_lock``. Returns whether it was taken."""
    return await conn.fetchval("SELECT pg_try_advisory_lock($1)", _THEME_LOCK_BASE + run_id)


async def release_theme_lock(conn: asyncpg.Connection, run_id: int) -> None:
    """Give the theme stage's lock back."""
    await conn.execute("SELECT pg_advisory_unlock($1)", _THEME_LOCK_BASE + run_id)
