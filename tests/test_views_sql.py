"""The views have one text, ``sql/views.sql``: created after the migrations, made again
when that text changes or a view is missing, and left alone by a start that changes
nothing."""

from app.database import create_pool
from app.schema import apply_migrations, sql_file


async def _views(conn) -> dict[str, str]:
    rows = await conn.fetch("SELECT viewname, definition FROM pg_views WHERE schemaname = current_schema()")
    return {r["viewname"]: r["definition"] for r in rows}


async def test_views_come_from_views_sql_and_follow_it(database_url):
    pool = await create_pool(database_url, vector=False)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
            first = await _views(conn)
            assert set(first) >= {"sentence_assignments", "theme_sentences", "firm_themes", "topic_overview",
                                  "theme_overview", "theme_lineage", "sentence_top_themes", "theme_periods",
                                  "firm_theme_periods"}
            assert sql_file("views.sql").count("CREATE VIEW") == len(first)

            # A database whose views were made by another text (an earlier release): made again.
            await conn.execute("UPDATE database_meta SET value = 'older' WHERE key = 'views_sha256'")
            await conn.execute("DROP VIEW theme_periods")
            assert await apply_migrations(conn) == []
            assert await _views(conn) == first

            # Nothing changed: the views are not touched (their oids stay).
            oids = await conn.fetchval("SELECT array_agg(oid ORDER BY relname) FROM pg_class WHERE relkind = 'v'")
            await apply_migrations(conn)
            assert await conn.fetchval(
                "SELECT array_agg(oid ORDER BY relname) FROM pg_class WHERE relkind = 'v'") == oids
    finally:
        await pool.close()
