"""The SQL views of ``sql/views.sql`` on the finished sample run: each returns exactly
the rows of the join it stands for; and they do not stop the first run from fixing the
embedding dimension (PostgreSQL refuses to retype a column a view reads)."""

from __future__ import annotations

import pytest

from app.schema import fix_embedding_dimension

VIEWS = ("sentence_assignments", "theme_sentences", "firm_themes", "topic_overview", "theme_overview")


async def rows(conn, sql) -> set[tuple]:
    return {tuple(r.values()) for r in await conn.fetch(sql)}


@pytest.mark.results
async def test_views_are_created_by_the_migrations(conn):
    names = {r["viewname"] for r in await conn.fetch("SELECT viewname FROM pg_views WHERE schemaname = 'public'")}
    assert set(VIEWS) <= names
    assert await conn.fetchval("SELECT max(version) FROM schema_migrations") >= 2


@pytest.mark.results
async def test_theme_sentences_is_the_join_from_themes_to_sentences(conn):
    view = await rows(conn, "SELECT run_id, run_name, theme_id, theme_name, topic_id, topic_name, firm_id,"
                            " firm_name, sentence_id, doc_id, text, theme_via FROM theme_sentences")
    # Through its topics, and the sentences in no topic attached to it (schema 6).
    join = await rows(conn, """
        SELECT th.run_id, r.name, th.theme_id, th.name, t.topic_id, t.name, f.firm_id, f.firm_name,
               s.sentence_id, s.doc_id, s.text, 'topic'
        FROM themes th JOIN runs r USING (run_id) JOIN topics t USING (theme_id)
        JOIN sentence_topics st USING (topic_id) JOIN sentences s USING (sentence_id)
        JOIN firms f ON f.firm_id = s.firm_id
        UNION ALL
        SELECT th.run_id, r.name, th.theme_id, th.name, NULL, NULL, f.firm_id, f.firm_name,
               s.sentence_id, s.doc_id, s.text, 'nearest'
        FROM themes th JOIN runs r USING (run_id) JOIN sentence_topics st ON st.theme_id = th.theme_id
        JOIN sentences s USING (sentence_id) JOIN firms f ON f.firm_id = s.firm_id""")
    assert view == join
    assert len(view) == await conn.fetchval(
        "SELECT count(*) FROM sentence_topics WHERE topic_id IS NOT NULL OR theme_id IS NOT NULL")


@pytest.mark.results
async def test_sentence_assignments_keeps_every_sentence_including_outliers(conn):
    view = await rows(conn, "SELECT run_id, sentence_id, firm_id, doc_id, text, topic_id, topic_name, theme_id,"
                            " theme_name, theme_via FROM sentence_assignments")
    # A sentence's theme: its topic's, else the one it was attached to (schema 6).
    join = await rows(conn, """
        SELECT st.run_id, s.sentence_id, s.firm_id, s.doc_id, s.text, t.topic_id, t.name, th.theme_id, th.name,
               CASE WHEN t.theme_id IS NOT NULL THEN 'topic' WHEN st.theme_id IS NOT NULL THEN 'nearest' END
        FROM sentence_topics st JOIN sentences s USING (sentence_id)
        LEFT JOIN topics t ON t.topic_id = st.topic_id
        LEFT JOIN themes th ON th.theme_id = coalesce(t.theme_id, st.theme_id)""")
    assert view == join
    assert len(view) == await conn.fetchval("SELECT count(*) FROM sentence_topics")


@pytest.mark.results
async def test_firm_themes_counts_each_firms_topics_and_sentences_per_theme(conn):
    view = await rows(conn, "SELECT run_id, firm_id, firm_name, theme_id, theme_name, n_topics, n_sentences"
                            " FROM firm_themes")
    join = await rows(conn, """
        SELECT t.run_id, t.firm_id, f.firm_name, th.theme_id, th.name, count(*)::int, sum(t.n_sentences)::int
        FROM topics t JOIN firms f USING (firm_id) JOIN themes th USING (theme_id)
        GROUP BY 1, 2, 3, 4, 5""")
    assert view == join
    assert sum(r[5] for r in view) == await conn.fetchval("SELECT count(*) FROM topics WHERE theme_id IS NOT NULL")
    # n_sentences agrees with the sentences behind it
    assert sum(r[6] for r in view) == await conn.fetchval(
        "SELECT count(*) FROM theme_sentences WHERE theme_via = 'topic'")


@pytest.mark.results
async def test_topic_and_theme_overviews_have_one_row_each(conn):
    view = await rows(conn, "SELECT topic_id, firm_name, topic_name, theme_name FROM topic_overview")
    join = await rows(conn, "SELECT t.topic_id, f.firm_name, t.name, th.name FROM topics t JOIN firms f USING (firm_id)"
                            " LEFT JOIN themes th USING (theme_id)")
    assert view == join
    themes = await conn.fetch("SELECT theme_id, n_topics, n_firms, n_sentences FROM theme_overview")
    assert len(themes) == await conn.fetchval("SELECT count(*) FROM themes")
    for theme in themes:
        assert theme["n_sentences"] == await conn.fetchval(
            "SELECT count(*) FROM theme_sentences WHERE theme_id = $1 AND theme_via = 'topic'", theme["theme_id"])


async def test_the_views_do_not_block_fixing_the_embedding_dimension(pool):
    async with pool.acquire() as connection:  # a fresh database: views present, columns untyped
        assert await connection.fetchval("SELECT count(*) FROM pg_views WHERE viewname = 'theme_sentences'") == 1
        await fix_embedding_dimension(connection, 384)
        typed = await connection.fetchval(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'topics'::regclass AND attname = 'embedding'")
        assert typed == "vector(384)"
