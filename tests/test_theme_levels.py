"""Themes in levels, on a real run of the generated corpus: broader themes above the fine
ones, each theme's parent one level up, names at every level, and the views that go from
a sentence up to its top theme and from a top theme down to its sentences."""

from __future__ import annotations

import pytest

from app.backend import CPU
from app.job import run_job
from app.naming import OfflineNamer
from app.sample import sample_rows
from app.settings import RunSettings
from support import insert_corpus, is_broader_theme


@pytest.fixture
async def levelled_run(pool, embedder):
    """The sample corpus run with a top level of at most 3 themes, so there are levels."""
    await insert_corpus(pool, list(sample_rows()))
    outcome = await run_job(pool, RunSettings(theme_top_level_size=3), run_name="levels", embedder=embedder,
                            backend=CPU, namer=OfflineNamer())
    assert outcome.status == "complete"
    return pool


@pytest.mark.results
async def test_every_theme_below_the_top_has_a_parent_one_level_up(levelled_run):
    async with levelled_run.acquire() as conn:
        themes = await conn.fetch("SELECT theme_id, level, parent_theme_id, name, summary, n_topics FROM themes")
    by_id = {t["theme_id"]: t for t in themes}
    top = max(t["level"] for t in themes)
    assert top >= 2
    assert 2 <= sum(1 for t in themes if t["level"] == top) <= 3
    for theme in themes:
        assert theme["name"] and theme["summary"]  # named at every level
        if theme["level"] == top:
            assert theme["parent_theme_id"] is None
        else:
            assert by_id[theme["parent_theme_id"]]["level"] == theme["level"] + 1
    # A broader theme holds exactly the topics of its narrower ones.
    for theme in themes:
        if theme["level"] > 1:
            children = [t for t in themes if t["parent_theme_id"] == theme["theme_id"]]
            assert children and sum(c["n_topics"] for c in children) == theme["n_topics"]


@pytest.mark.results
async def test_topics_link_to_the_fine_level(levelled_run):
    async with levelled_run.acquire() as conn:
        levels = await conn.fetch("SELECT DISTINCT th.level FROM topics t JOIN themes th USING (theme_id)")
        unlinked = await conn.fetchval("SELECT count(*) FROM topics WHERE theme_id IS NULL")
    assert [r["level"] for r in levels] == [1] and unlinked == 0


@pytest.mark.results
async def test_the_top_theme_view_agrees_with_the_joins(levelled_run):
    async with levelled_run.acquire() as conn:
        view = await conn.fetch("SELECT sentence_id, top_theme_id FROM sentence_top_themes ORDER BY sentence_id")
        # The same by walking the parent links by hand.
        parents = dict(await conn.fetch("SELECT theme_id, parent_theme_id FROM themes"))
        # A sentence's fine theme: its topic's, or the one it was attached to (schema 6).
        rows = await conn.fetch("SELECT st.sentence_id, coalesce(t.theme_id, st.theme_id) AS theme_id"
                                " FROM sentence_topics st LEFT JOIN topics t USING (topic_id)"
                                " WHERE coalesce(t.theme_id, st.theme_id) IS NOT NULL ORDER BY st.sentence_id")
    expected = []
    for row in rows:
        theme = row["theme_id"]
        while parents[theme] is not None:
            theme = parents[theme]
        expected.append((row["sentence_id"], theme))
    assert [(r["sentence_id"], r["top_theme_id"]) for r in view] == expected


@pytest.mark.results
async def test_a_run_with_few_themes_has_one_level(pool, embedder):
    await insert_corpus(pool, list(sample_rows()))
    await run_job(pool, RunSettings(), run_name="flat", embedder=embedder, backend=CPU, namer=OfflineNamer())
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT max(level) FROM themes") == 1
        assert await conn.fetchval("SELECT count(*) FROM themes WHERE parent_theme_id IS NOT NULL") == 0
    from app.read.status import run_status

    assert "theme levels: one" in await run_status(pool, "flat")


@pytest.mark.results
async def test_a_broader_theme_counts_the_sentences_under_it(levelled_run):
    async with levelled_run.acquire() as conn:
        rows = await conn.fetch("SELECT theme_id, level, parent_theme_id, n_sentences FROM theme_overview")
        assert all(r["n_sentences"] > 0 for r in rows)
        for row in rows:
            if row["level"] == 2:
                children = sum(c["n_sentences"] for c in rows if c["parent_theme_id"] == row["theme_id"])
                assert row["n_sentences"] == children


@pytest.mark.results
async def test_status_says_how_many_levels(levelled_run):
    from app.read.status import run_status

    text = await run_status(levelled_run, "levels")
    fine, top = [line for line in text.splitlines() if "theme levels" in line][0].split(": ")[-1].split(" -> ")
    async with levelled_run.acquire() as conn:
        assert int(fine) == await conn.fetchval("SELECT count(*) FROM themes WHERE level = 1")
        assert int(top) == await conn.fetchval("SELECT count(*) FROM themes WHERE parent_theme_id IS NULL")
    assert f"themes: {fine}" in text


class FailsOnABroaderTheme(OfflineNamer):
    """Offline names, except that naming the first broader theme fails: the process dies
    inside the level stage, after the fine themes were named."""

    async def name_theme(self, theme):
        if is_broader_theme(theme):
            raise RuntimeError("died while naming a broader theme")
        return await super().name_theme(theme)


@pytest.mark.results
async def test_a_run_that_dies_in_the_level_stage_resumes_to_the_same_tree(pool, embedder):
    await insert_corpus(pool, list(sample_rows()))
    settings = RunSettings(theme_top_level_size=3)
    with pytest.raises(RuntimeError, match="broader theme"):
        await run_job(pool, settings, run_name="dies", embedder=embedder, backend=CPU, namer=FailsOnABroaderTheme())
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT status FROM runs WHERE name = 'dies'") == "failed"
        assert await conn.fetchval("SELECT count(*) FROM themes") == 0  # nothing half-stored
    resumed = await run_job(pool, settings, run_name="dies", embedder=embedder, backend=CPU, namer=OfflineNamer())
    assert resumed.status == "complete"
    await run_job(pool, settings, run_name="clean", embedder=embedder, backend=CPU, namer=OfflineNamer())

    async def tree(name):
        async with pool.acquire() as conn:
            return sorted(tuple(r) for r in await conn.fetch(
                "SELECT th.level, th.theme_no, th.name, th.n_topics, p.theme_no AS parent_no"
                " FROM themes th JOIN runs r USING (run_id) LEFT JOIN themes p ON p.theme_id = th.parent_theme_id"
                " WHERE r.name = $1", name))

    async def attached(name):  # the sentences in no topic attached to a theme, and to which
        async with pool.acquire() as conn:
            return sorted(tuple(r) for r in await conn.fetch(
                "SELECT st.sentence_id, th.theme_no FROM sentence_topics st JOIN themes th USING (theme_id)"
                " JOIN runs r ON r.run_id = st.run_id WHERE r.name = $1", name))

    assert await tree("dies") == await tree("clean")
    assert max(level for level, *_ in await tree("dies")) == 2
    assert await attached("dies") == await attached("clean") != []
