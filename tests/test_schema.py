"""The schema on a real PostgreSQL: idempotent migrations, the dimension check, indexes."""

import asyncio
import re

import asyncpg
import numpy as np
import pytest

from app.database import as_array, create_pool, init_connection
from app.read.search import _query, nearest
from app.schema import (
    DimensionMismatch,
    apply_migrations,
    build_vector_indexes,
    drop_vector_indexes,
    fix_embedding_dimension,
    migrations,
    vector_indexes_present,
)
from support import bare_run


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
        assert await vector_indexes_present(conn, 1) == []
        await fix_embedding_dimension(conn, 4)
        await build_vector_indexes(conn, 1)
        await build_vector_indexes(conn, 2)
        assert len(await vector_indexes_present(conn, 1)) == len(await vector_indexes_present(conn, 2)) == 3
        # Partial, each on its run's rows.
        definitions = [r["indexdef"] for r in await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE indexname = ANY($1::text[])", await vector_indexes_present(conn, 2))]
        assert all("hnsw" in d and d.endswith("WHERE (run_id = 2)") for d in definitions), definitions
        # The sentences' index on their 16-bit floats, the topics' and themes' on 32-bit ones.
        assert sorted(re.search(r"ON public\.(\w+) USING hnsw \(embedding (\w+)\)", d).groups()
                      for d in definitions) == [
            ("sentence_topics", "halfvec_cosine_ops"), ("themes", "vector_cosine_ops"), ("topics", "vector_cosine_ops")]
        # Dropping one run's indexes leaves the other's.
        await drop_vector_indexes(conn, 1)
        assert await vector_indexes_present(conn, 1) == []
        assert len(await vector_indexes_present(conn, 2)) == 3


async def test_the_index_build_takes_at_least_a_gigabyte_and_keeps_more_given_by_the_server(pool):
    async with pool.acquire() as conn:
        await fix_embedding_dimension(conn, 4)
        await conn.execute("SET maintenance_work_mem = '64MB'")  # PostgreSQL's default
        await build_vector_indexes(conn, 1)
        assert await conn.fetchval("SHOW maintenance_work_mem") == "1GB"
        await drop_vector_indexes(conn, 1)
        await conn.execute("SET maintenance_work_mem = '3GB'")  # as ALTER DATABASE ... SET would give
        await build_vector_indexes(conn, 1)
        assert await conn.fetchval("SHOW maintenance_work_mem") == "3GB"
        await conn.execute("RESET maintenance_work_mem")


async def test_first_run_fixes_the_dimension_and_another_is_refused(pool):
    async with pool.acquire() as conn:
        await fix_embedding_dimension(conn, 4)
        await fix_embedding_dimension(conn, 4)  # same dimension again: fine
        with pytest.raises(DimensionMismatch, match="4-dimensional.*gives 8"):
            await fix_embedding_dimension(conn, 8)
        await conn.execute("INSERT INTO firms (firm_id) VALUES ('F')")
        await bare_run(conn, embedding_dim=4)
        await conn.execute(
            "INSERT INTO themes (run_id, theme_no, name, summary, keywords, name_source, n_topics, n_firms, embedding)"
            " VALUES (1, 0, 'n', 's', '{}', 'keywords', 0, 0, $1)",
            np.array([1, 0, 0, 0], dtype=np.float32),
        )
        stored = await conn.fetchval("SELECT embedding FROM themes")
        assert np.allclose(stored.to_numpy(), [1, 0, 0, 0])


async def column_types(conn) -> dict[str, str]:
    """The type of each table's embedding column, as SQL writes it."""
    rows = await conn.fetch(
        "SELECT attrelid::regclass::text AS t, format_type(atttypid, atttypmod) AS type FROM pg_attribute"
        " WHERE attrelid = ANY('{sentence_topics,topics,themes}'::regclass[]) AND attname = 'embedding'")
    return {r["t"]: r["type"] for r in rows}


async def test_sentence_embeddings_are_16_bit_floats_and_the_others_32(pool):
    """The sentences' embeddings, the largest table, are halfvec (half the bytes, the same
    search: docs/benchmarks.md); topics' and themes' stay vector, for exact means and
    distances."""
    async with pool.acquire() as conn:
        assert await column_types(conn) == {"sentence_topics": "halfvec", "topics": "vector", "themes": "vector"}
        await fix_embedding_dimension(conn, 4)
        assert await column_types(conn) == {
            "sentence_topics": "halfvec(4)", "topics": "vector(4)", "themes": "vector(4)"}


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


# --- version 3: one composite key from a sentence's result to its sentence and firm -----


# sentence_topics' foreign keys from version 3 on: (columns, referenced table).
VERSION_3_KEYS = {("run_id", "runs"), ("firm_id,sentence_id", "sentences"), ("topic_id", "topics")}
# Version 6 adds the theme a sentence in no topic was attached to.
LATEST_KEYS = VERSION_3_KEYS | {("theme_id", "themes")}


async def foreign_keys(conn, table: str) -> set[tuple[str, str]]:
    """(columns, referenced table) of every foreign key on ``table``."""
    rows = await conn.fetch(
        "SELECT (SELECT string_agg(a.attname, ',' ORDER BY k.n) FROM unnest(c.conkey) WITH ORDINALITY k(attnum, n)"
        "        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum) AS columns,"
        "       c.confrelid::regclass::text AS referenced"
        " FROM pg_constraint c WHERE c.conrelid = $1::regclass AND c.contype = 'f'",
        table,
    )
    return {(r["columns"], r["referenced"]) for r in rows}


async def migrate_to(conn, last: int) -> None:
    """Bring an empty database to schema version ``last``, as a release of that version left it."""
    await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    await conn.execute(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for version, name, sql in migrations():
        if version <= last:
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)


async def type_embeddings_as_before_16(conn, dim: int) -> None:
    """Fix the dimension as releases before version 16 did: every embedding column vector(dim)."""
    for table in ("sentence_topics", "topics", "themes"):
        await conn.execute(f'ALTER TABLE "{table}" ALTER COLUMN embedding TYPE vector({dim})')
    await conn.execute("INSERT INTO database_meta (key, value) VALUES ('embedding_dim', $1)", str(dim))


async def build_indexes_as_before_16(conn, run_id: int) -> None:
    """A run's HNSW indexes as sql/indexes.sql had them before version 16: all on vector."""
    for table in ("sentence_topics", "topics", "themes"):
        await conn.execute(f"CREATE INDEX {table}_embedding_hnsw_run_{run_id} ON {table}"
                           f" USING hnsw (embedding vector_cosine_ops) WHERE run_id = {run_id}")


async def insert_one_result(conn, firm_of_result: str) -> None:
    """A firm F with one sentence, a run, and that sentence's result filed under ``firm_of_result``."""
    await conn.execute("INSERT INTO firms (firm_id) VALUES ('F'), ('G') ON CONFLICT DO NOTHING")
    sentence_id = await conn.fetchval(
        "INSERT INTO sentences (firm_id, doc_id, text) VALUES ('F', 'd', 'Revenue grew.') RETURNING sentence_id"
    )
    run_id = await bare_run(conn)
    await conn.execute(
        "INSERT INTO sentence_topics (run_id, sentence_id, firm_id, topic_id, embedding)"
        " VALUES ($1, $2, $3, NULL, '[1,0]')",
        run_id, sentence_id, firm_of_result,
    )


async def test_a_version_3_database_with_results_migrates_to_version_4(database_url):
    """Results stored before sentences were marked: those in a topic become 'cluster'
    (nothing was attached by nearness then), those in none stay unmarked."""
    pool = await create_pool(database_url, vector=False)
    try:
        async with pool.acquire() as conn:
            await migrate_to(conn, 3)
            await insert_one_result(conn, "F")
            run_id, sentence_id = await conn.fetchrow("SELECT run_id, sentence_id FROM sentence_topics")
            topic_id = await conn.fetchval(
                "INSERT INTO topics (run_id, firm_id, topic_no, name, summary, keywords, name_source, n_sentences)"
                " VALUES ($1, 'F', 0, 'n', 's', '{}', 'keywords', 1) RETURNING topic_id", run_id)
            second = await conn.fetchval(
                "INSERT INTO sentences (firm_id, doc_id, text) VALUES ('F', 'd', 'Costs fell.') RETURNING sentence_id")
            await conn.execute(
                "INSERT INTO sentence_topics (run_id, sentence_id, firm_id, topic_id, embedding)"
                " VALUES ($1, $2, 'F', $3, '[0,1]')", run_id, second, topic_id)

            assert await apply_migrations(conn) == [v for v, _, _ in migrations() if v >= 4]

            marks = dict(await conn.fetch("SELECT sentence_id, topic_assignment FROM sentence_topics"))
            assert marks == {sentence_id: None, second: "cluster"}
            assert await conn.fetchval("SELECT quality FROM runs") is None
            with pytest.raises(asyncpg.CheckViolationError):  # a topic without its mark is refused
                await conn.execute("UPDATE sentence_topics SET topic_assignment = NULL WHERE sentence_id = $1", second)
    finally:
        await pool.close()


async def test_a_theme_is_attached_only_to_a_sentence_in_no_topic_and_goes_with_its_theme(pool):
    """Version 6: sentence_topics.theme_id holds the theme a sentence in no topic joined;
    a sentence in a topic is refused one (its theme is its topic's), and deleting the
    themes (the theme stage redone) clears it."""
    import asyncpg

    async with pool.acquire() as conn:
        await insert_one_result(conn, "F")
        run_id, sentence_id = await conn.fetchrow("SELECT run_id, sentence_id FROM sentence_topics")
        theme_id = await conn.fetchval(
            "INSERT INTO themes (run_id, theme_no, name, summary, keywords, name_source, n_topics, n_firms)"
            " VALUES ($1, 0, 'n', 's', '{}', 'keywords', 1, 1) RETURNING theme_id", run_id)
        await conn.execute("UPDATE sentence_topics SET theme_id = $1", theme_id)
        assert await conn.fetchval("SELECT theme_via FROM sentence_assignments") == "nearest"
        topic_id = await conn.fetchval(
            "INSERT INTO topics (run_id, firm_id, topic_no, name, summary, keywords, name_source, n_sentences)"
            " VALUES ($1, 'F', 0, 'n', 's', '{}', 'keywords', 1) RETURNING topic_id", run_id)
        with pytest.raises(asyncpg.CheckViolationError, match="theme_only_without_topic"):
            await conn.execute("UPDATE sentence_topics SET topic_id = $1, topic_assignment = 'cluster'"
                               " WHERE sentence_id = $2", topic_id, sentence_id)
        await conn.execute("DELETE FROM themes WHERE run_id = $1", run_id)
        assert await conn.fetchval("SELECT theme_id FROM sentence_topics") is None


async def test_a_sentence_result_has_one_key_to_its_sentence_and_firm(pool):
    async with pool.acquire() as conn:
        assert await foreign_keys(conn, "sentence_topics") == LATEST_KEYS
        await insert_one_result(conn, "F")
        assert await conn.fetchval("SELECT count(*) FROM sentence_topics") == 1


async def test_a_sentence_result_under_another_firm_is_refused(pool):
    import asyncpg

    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="sentence_topics_sentence_fkey"):
            await insert_one_result(conn, "G")  # G exists, but the sentence is F's


async def test_a_version_2_database_with_data_migrates_to_version_3(database_url):
    pool = await create_pool(database_url, vector=False)
    try:
        async with pool.acquire() as conn:
            await migrate_to(conn, 2)
            await insert_one_result(conn, "F")
            assert ("firm_id", "firms") in await foreign_keys(conn, "sentence_topics")

            assert await apply_migrations(conn) == [v for v, _, _ in migrations() if v >= 3]

            assert await conn.fetchval("SELECT count(*) FROM sentence_topics") == 1
            assert await foreign_keys(conn, "sentence_topics") == LATEST_KEYS
            indexes = {r["indexname"] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'sentences'")}
            assert "sentences_firm_sentence" in indexes and "sentences_firm" not in indexes
    finally:
        await pool.close()


async def test_the_global_indexes_of_early_releases_are_dropped_and_a_runs_own_kept(database_url):
    """Version 9: the HNSW indexes early releases built over whole columns (every run at
    once) slowed every later load; they go, and the indexes of each run stay."""
    pool = await create_pool(database_url, vector=False)
    try:
        async with pool.acquire() as conn:
            await migrate_to(conn, 8)
            await type_embeddings_as_before_16(conn, 2)
            for table in ("sentence_topics", "topics", "themes"):  # as sql/indexes.sql had it then
                await conn.execute(f"CREATE INDEX {table}_embedding_hnsw ON {table} USING hnsw (embedding vector_cosine_ops)")
            await insert_one_result(conn, "F")
            run_id = await conn.fetchval("SELECT run_id FROM runs")
            await build_indexes_as_before_16(conn, run_id)

            assert await apply_migrations(conn) == [v for v, _, _ in migrations() if v >= 9]

            left = {r["indexname"] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE indexname LIKE '%hnsw%'")}
            assert left == set(await vector_indexes_present(conn, run_id)) and len(left) == 3
    finally:
        await pool.close()


async def test_programs_starting_at_once_on_a_new_database_migrate_it_once(database_url):
    """Several workers started together on a new database: one applies the migrations,
    the others wait for it and find nothing left to do."""
    connections = [await asyncpg.connect(database_url) for _ in range(6)]
    try:
        applied = await asyncio.gather(*(apply_migrations(conn) for conn in connections))
    finally:
        for conn in connections:
            await conn.close()
    assert sorted(map(len, applied)) == [0] * 5 + [len(migrations())]


async def test_a_version_13_database_gets_its_theme_counts_per_period(database_url):
    """Runs stored before the counts were kept are counted by the migration, so ``trends``
    shows them as before: a sentence through its topic's theme, one attached to a theme."""
    pool = await create_pool(database_url, vector=False)
    try:
        async with pool.acquire() as conn:
            await migrate_to(conn, 13)
            await insert_one_result(conn, "F")
            run_id, attached = await conn.fetchrow("SELECT run_id, sentence_id FROM sentence_topics")
            await conn.execute("INSERT INTO documents (firm_id, doc_id, period) VALUES ('F', 'd', '2024Q1')")
            theme_id = await conn.fetchval(
                "INSERT INTO themes (run_id, theme_no, name, summary, keywords, name_source, n_topics, n_firms)"
                " VALUES ($1, 0, 'demand', 's', '{}', 'keywords', 1, 1) RETURNING theme_id", run_id)
            topic_id = await conn.fetchval(
                "INSERT INTO topics (run_id, firm_id, topic_no, name, summary, keywords, name_source, n_sentences,"
                " theme_id) VALUES ($1, 'F', 0, 'n', 's', '{}', 'keywords', 1, $2) RETURNING topic_id",
                run_id, theme_id)
            second = await conn.fetchval(
                "INSERT INTO sentences (firm_id, doc_id, text) VALUES ('F', 'd', 'Costs fell.') RETURNING sentence_id")
            await conn.execute(
                "INSERT INTO sentence_topics (run_id, sentence_id, firm_id, topic_id, embedding, topic_assignment)"
                " VALUES ($1, $2, 'F', $3, '[0,1]', 'cluster')", run_id, second, topic_id)
            await conn.execute("UPDATE sentence_topics SET theme_id = $1 WHERE sentence_id = $2", theme_id, attached)

            assert await apply_migrations(conn) == [v for v, _, _ in migrations() if v >= 14]
            rows = [tuple(r) for r in await conn.fetch(
                "SELECT theme_name, period, n_firms, n_sentences, share_of_period FROM theme_periods")]
            assert rows == [("demand", "2024Q1", 1, 2, 1)]
    finally:
        await pool.close()


async def a_version_15_run(conn, vectors: np.ndarray) -> tuple[int, list[int]]:
    """A database as a version-15 release left it after a finished run: every embedding
    column vector(dim), the run's sentences stored with ``vectors`` and its HNSW indexes
    built as sql/indexes.sql had them (every one on 32-bit floats). Returns the run's id
    and its sentences' ids."""
    dim = vectors.shape[1]
    await migrate_to(conn, 15)
    await type_embeddings_as_before_16(conn, dim)
    await conn.execute("INSERT INTO firms (firm_id) VALUES ('F')")
    run_id = await bare_run(conn, embedding_dim=dim)
    ids = []
    for i, vector in enumerate(vectors):
        ids.append(await conn.fetchval(
            "INSERT INTO sentences (firm_id, doc_id, text) VALUES ('F', 'd', $1) RETURNING sentence_id", f"s{i}"))
        await conn.execute("INSERT INTO sentence_topics (run_id, sentence_id, firm_id, embedding)"
                           " VALUES ($1, $2, 'F', $3::real[])", run_id, ids[-1], vector.tolist())
    await build_indexes_as_before_16(conn, run_id)
    await conn.execute("UPDATE runs SET status = 'complete' WHERE run_id = $1", run_id)
    return run_id, ids


async def test_a_version_15_database_keeps_its_sentence_embeddings_as_16_bit_floats(database_url):
    """Version 16: a stored run's sentence embeddings become halfvec, each value its
    nearest 16-bit float, and the run's sentence index is built again on them, so the
    run is searched through its index as before."""
    vectors = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pool = await create_pool(database_url, vector=False)
    try:
        async with pool.acquire() as conn:
            run_id, ids = await a_version_15_run(conn, vectors)

            assert await apply_migrations(conn) == [v for v, _, _ in migrations() if v >= 16]

            assert await column_types(conn) == {
                "sentence_topics": "halfvec(8)", "topics": "vector(8)", "themes": "vector(8)"}
            await init_connection(conn)  # the codecs, now that halfvec is in use
            stored = {r["sentence_id"]: as_array(r["embedding"])
                      for r in await conn.fetch("SELECT sentence_id, embedding FROM sentence_topics")}
            kept = np.stack([stored[i] for i in ids])
            assert kept.dtype == np.float32
            np.testing.assert_allclose(kept, vectors, rtol=2 ** -11, atol=2 ** -24)  # fp16's rounding
            assert not np.array_equal(kept, vectors)  # and rounded: 16 bits, not 32
            assert await vector_indexes_present(conn, run_id) == sorted(
                f"{t}_embedding_hnsw_run_{run_id}" for t in ("sentence_topics", "themes", "topics"))
            hits = await nearest(conn, vectors[7], run_id=run_id, level="sentence", limit=3)
            assert hits[0]["sentence_id"] == ids[7] and hits[0]["distance"] == pytest.approx(0, abs=1e-3)
            async with conn.transaction():
                await conn.execute("SET LOCAL enable_seqscan = off")
                plan = await conn.fetch("EXPLAIN " + _query("sentence", run_id=run_id, firm=False, exact=False),
                                        vectors[7], run_id, 3)
            assert f"sentence_topics_embedding_hnsw_run_{run_id}" in "\n".join(r[0] for r in plan)
    finally:
        await pool.close()
