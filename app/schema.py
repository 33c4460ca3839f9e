"""The schema: numbered SQL migrations in ``sql/``, applied in order, each once, and the
analysts' views, defined once.

``sql/NNN_name.sql`` files are migrations, each opening with a comment that says what
it changes. The table ``schema_migrations`` records which have been applied, so starting
the program against a database that is already up to date does nothing, and a database
made by an earlier release is brought up to date by starting the program. An advisory
lock serialises concurrent starts.

``sql/views.sql`` holds every view, once. The views are dropped before pending
migrations are applied (so a migration may change a table a view reads) and created
again after them, and also whenever ``views.sql`` differs from the text that made the
database's views (its hash is kept in ``database_meta``) or a view is missing.

``sql/indexes.sql`` is not a migration: it holds the HNSW index DDL of one run (partial
indexes on the run's rows), applied by ``build_vector_indexes`` after that run's theme
stage (see the bulk-loading rule in the README).
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path

import asyncpg

from app.errors import UsageError
from app.logs import get_logger

log = get_logger("schema")

_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 7_424_001  # arbitrary, fixed: "firmtopics schema" advisory lock

# The embedding columns and their types, given the dimension by the first run (HNSW
# needs one). The sentences' are pgvector's halfvec, 16-bit floats: the largest table,
# halved, for 99.4% of vector's search recall (sql/016_halfvec_sentences.sql). Topics'
# and themes' stay vector: small tables, whose means and distances the theme stage uses.
EMBEDDING_COLUMNS = (("sentence_topics", "embedding", "halfvec"), ("topics", "embedding", "vector"),
                     ("themes", "embedding", "vector"))


class DimensionMismatch(UsageError, ValueError):
    """The run's model has another embedding dimension than the database holds."""


def _sql_dir():
    """The folder of SQL files: ``sql/`` beside the package in a source checkout (also an
    editable install), else the copy shipped inside an installed package as ``app.sql``."""
    checkout = Path(__file__).resolve().parent.parent / "sql"
    if (checkout / "001_schema.sql").exists():
        return checkout
    return resources.files("app.sql")


def migrations() -> list[tuple[int, str, str]]:
    """All migrations shipped with the package: ``(version, file name, sql)``, in order."""
    found = []
    for entry in _sql_dir().iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def sql_file(name: str) -> str:
    """The text of one file in ``sql/`` (e.g. ``indexes.sql``)."""
    return _sql_dir().joinpath(name).read_text(encoding="utf-8")


async def apply_migrations(conn: asyncpg.Connection) -> list[int]:
    """Apply the migrations this database lacks; return the versions applied now.

    Idempotent: a second call applies nothing. Each migration runs in its own
    transaction together with its ``schema_migrations`` row, so a failure leaves the
    database at the previous version.
    """
    applied_now = []
    # Taken before anything is created: two programs starting at once on a new database
    # (several workers) would otherwise race even on CREATE TABLE IF NOT EXISTS, which
    # PostgreSQL does not make safe against a concurrent twin (a duplicate pg_type row).
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        pending = [m for m in migrations() if m[0] not in done]
        if pending:
            await _drop_views(conn)
        for version, name, sql in pending:
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            applied_now.append(version)
            log.info("migration_applied", version=version, name=name)
        await _create_views(conn, fresh=bool(applied_now))
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


def _view_names(sql: str) -> list[str]:
    return re.findall(r"^CREATE VIEW (\w+)", sql, flags=re.M)


async def _drop_views(conn: asyncpg.Connection) -> None:
    """Drop every view of ``views.sql`` (those that exist)."""
    for name in reversed(_view_names(sql_file("views.sql"))):
        await conn.execute(f'DROP VIEW IF EXISTS "{name}" CASCADE')


async def _create_views(conn: asyncpg.Connection, *, fresh: bool) -> None:
    """Create the views of ``views.sql`` again, in one transaction, when migrations were
    applied now (``fresh``), the file is not the text that made them, or one is missing;
    else leave them be (a start that changes nothing writes nothing)."""
    sql = sql_file("views.sql")
    digest = hashlib.sha256(sql.encode("utf-8")).hexdigest()
    names = _view_names(sql)
    if not fresh:
        recorded = await conn.fetchval("SELECT value FROM database_meta WHERE key = 'views_sha256'")
        present = await conn.fetchval(
            "SELECT count(*) FROM pg_views WHERE schemaname = current_schema() AND viewname = ANY($1::text[])", names)
        if recorded == digest and present == len(names):
            return
    async with conn.transaction():
        await _drop_views(conn)
        await conn.execute(sql)
        await conn.execute("INSERT INTO database_meta (key, value) VALUES ('views_sha256', $1)"
                           " ON CONFLICT (key) DO UPDATE SET value = excluded.value", digest)
    log.info("views_created", views=len(names))


async def fix_embedding_dimension(conn: asyncpg.Connection, dim: int) -> None:
    """Make sure the database holds embeddings of dimension ``dim``.

    The first run fixes the dimension (recorded in ``database_meta`` and in the column
    types); a later run with another dimension raises ``DimensionMismatch``.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        recorded = await conn.fetchval("SELECT value FROM database_meta WHERE key = 'embedding_dim'")
        if recorded is not None:
            if int(recorded) != dim:
                raise DimensionMismatch(
                    f"this database holds {recorded}-dimensional embeddings, but the model gives {dim}: "
                    "use a model of the same dimension, or another database"
                )
            return
        for table, column, kind in EMBEDDING_COLUMNS:
            # dim is an int we computed, never user text; identifiers and types are our constants.
            await conn.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE "{kind}"({int(dim)})')
        await conn.execute("INSERT INTO database_meta (key, value) VALUES ('embedding_dim', $1)", str(dim))


async def drop_vector_indexes(conn: asyncpg.Connection, run_id: int) -> None:
    """Drop run ``run_id``'s HNSW indexes before its bulk load (they are rebuilt at the end
    of the run); other runs' indexes stay, so their searches are not slowed."""
    for name in _index_names(run_id):
        await conn.execute(f'DROP INDEX IF EXISTS "{name}"')


async def build_vector_indexes(conn: asyncpg.Connection, run_id: int, maintenance_work_mem: str = "1GB") -> None:
    """Build run ``run_id``'s HNSW (cosine) indexes, partial on its rows, once the heaps
    are loaded.

    ``maintenance_work_mem`` is raised to at least that for this session only: the HNSW
    build is much faster when the graph fits in memory (about 1.2 KB a sentence, whose
    embedding is a halfvec; 1 GB holds about 850,000). A larger value given by the server,
    its database or its role (``ALTER DATABASE ... SET maintenance_work_mem = '40GB'``) is
    kept: the program does not know how much memory the server has free, its
    administrator does (docs/deploy.md).
    """
    if not re.fullmatch(r"\d+\s*(kB|MB|GB)", maintenance_work_mem):
        raise ValueError(f"maintenance_work_mem must look like '1GB', got {maintenance_work_mem!r}")
    await conn.execute(
        "SELECT set_config('maintenance_work_mem', $1, false) WHERE pg_size_bytes($1)"
        " > pg_size_bytes(current_setting('maintenance_work_mem'))", maintenance_work_mem)
    await conn.execute(_index_sql(run_id))
    # Fresh statistics after the bulk load, so the planner picks good plans (and the
    # HNSW indexes) for the first queries, not only after autovacuum gets round to it.
    await conn.execute("ANALYZE sentence_topics, topics, themes, sentences, run_firms")


async def vector_indexes_present(conn: asyncpg.Connection, run_id: int) -> list[str]:
    """Names of run ``run_id``'s HNSW indexes that exist now."""
    rows = await conn.fetch(
        "SELECT indexname FROM pg_indexes WHERE indexname = ANY($1::text[])", list(_index_names(run_id))
    )
    return sorted(r["indexname"] for r in rows)


def _index_sql(run_id: int) -> str:
    """``sql/indexes.sql`` for one run (the id is an integer from the database, never user text)."""
    return sql_file("indexes.sql").replace("{run_id}", str(int(run_id)))


def _index_names(run_id: int) -> list[str]:
    return re.findall(r"CREATE INDEX IF NOT EXISTS (\w+)", _index_sql(run_id))
