"""The schema on a real PostgreSQL: idempotent migrations, the dimension check, indexes."""

import numpy as np
import pytest

from app.database import create_pool
from app.schema import migrations
from app.schema import (
    DimensionMismatch,
    apply_migrations,
    build_vector_indexes,
    drop_vector_indexes,
    fix_embedding_dimension,
    vector_indexes_present,
)


async def test_migrations_applied_twice_is_a_no_op(database_url):
    pool = await create_pool(database_url, vector=False)
    try:
        async with pool.acquire() as conn:
            first = await apply_migrations(conn)
            tables_before = await conn.fetch(
                "SELECT table_name, column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = 'public' ORDER BY 1, 2"
            )
            second = await apply_migrations(conn)
            tables_after = await conn.fetch(
                "SELECT table_name, column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = 'public' ORDER BY 1, 2"
            )
            versions = await conn.fetch("SELECT version FROM schema_migrations")
    finally:
        await pool.close()
    every = [version for version, _, _ in migrations()]
    assert first == every
    assert second == []
    assert tables_before == tables_after
    assert sorted(r["version"] for r in versions) == every
    names = {r["table_name"] for r in tables_after}
    assert {"firms", "sentences", "runs", "topics", "themes", "sentence_topics", "run_firms"} <= names


async def test_schema_has_no_vector_index_until_built(pool):
    async with pool.acquire() as conn:
        assert await vector_indexes_present(conn) == []
        await fix_embedding_dimension(conn, 4)
        await build_vector_indexes(conn)
        assert len(await vector_indexes_present(conn)) == 3
        await drop_vector_indexes(conn)
        assert await vector_indexes_present(conn) == []


async def test_first_run_fixes_the_dimension_and_another_is_refused(pool):
    async with pool.acquire() as conn:
        await fix_embedding_dimension(conn, 4)
        await fix_embedding_dimension(conn, 4)  # same dimension again: fine
        with pytest.raises(DimensionMismatch, match="4-dimensional.*gives 8"):
            await fix_embedding_dimension(conn, 8)
        await conn.execute("INSERT INTO firms (firm_id) VALUES ('F')")
        await conn.execute(
            "INSERT INTO runs (name, settings, model, embedding_dim, package_versions) VALUES ('r', '{}', 'm', 4, '{}')"
        )
        await conn.execute(
            "INSERT INTO themes (run_id, theme_no, name, summary, keywords, name_source, n_topics, n_firms, embedding)"
            " VALUES (1, 0, 'n', 's', '{}', 'keywords', 0, 0, $1)",
            np.array([1, 0, 0, 0], dtype=np.float32),
        )
        stored = await conn.fetchval("SELECT embedding FROM themes")
        assert np.allclose(stored.to_numpy(), [1, 0, 0, 0])


async def test_same_sentence_twice_in_a_document_is_stored_once(pool):
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO firms (firm_id) VALUES ('F')")
        insert = (
            "INSERT INTO sentences (firm_id, doc_id, text) VALUES ($1, $2, $3)"
            " ON CONFLICT ON CONSTRAINT sentences_identity DO NOTHING"
        )
        await conn.execute(insert, "F", None, "Revenue grew.")
        await conn.execute(insert, "F", None, "Revenue grew.")
        await conn.execute(insert, "F", "call-2", "Revenue grew.")
        assert await conn.fetchval("SELECT count(*) FROM sentences") == 2
