"""``firmtopics search`` on a real run: the generated corpus (always) and real earnings-call
sentences (when the shared research data is present).
"""

from __future__ import annotations

import collections
import json

import anyio
import asyncpg
import numpy as np
import pytest

from app.cli import main
from app.database import as_array
from app.read.search import nearest, search
from support import drop_database, finished_run, one_line_error, share_exports, subject_of


async def run_id(conn) -> int:
    return await conn.fetchval("SELECT run_id FROM runs WHERE name = 'default'")


async def subject_of_sentences(conn, key: str, value: int) -> str:
    """The generated subject most of a topic's or a theme's sentences speak about
    (``key`` is ``topic_id`` or ``theme_id``)."""
    rows = await conn.fetch(f"SELECT s.text FROM topics t JOIN sentence_topics st USING (topic_id)"
                            f" JOIN sentences s USING (sentence_id) WHERE t.{key} = $1", value)
    return collections.Counter(subject_of(r["text"]) for r in rows).most_common(1)[0][0]


def assert_the_exact_nearest(hits: list, key: str, ids: list, distances, limit: int) -> None:
    """``hits`` are the ``limit`` rows nearest by a brute-force scan (``ids`` and their
    ``distances``), nearest first: the distances are the ``limit`` smallest, in order, and
    each hit is a row at the distance it says. Rows at the same distance (a tie, within
    rounding) may come in either order, so ids are not compared position by position."""
    brute = dict(zip(ids, (float(d) for d in distances)))
    assert len(hits) == limit and len({h[key] for h in hits}) == limit
    assert [h["distance"] for h in hits] == pytest.approx(sorted(brute.values())[:limit], abs=1e-5)
    assert [brute[h[key]] for h in hits] == pytest.approx([h["distance"] for h in hits], abs=1e-5)


# --- search on the sample run -----------------------------------------------------------


@pytest.mark.results
async def test_a_sentence_finds_itself(conn, embedder):
    sentences = await conn.fetch("SELECT sentence_id, firm_id, text FROM sentences ORDER BY sentence_id"
                                 " LIMIT 5 OFFSET 100")
    for sentence in sentences:
        hits = await search(conn, sentence["text"], level="sentence", limit=3, embedder=embedder)
        assert hits[0]["text"] == sentence["text"]
        assert hits[0]["distance"] == pytest.approx(0, abs=1e-3)
        assert [h["rank"] for h in hits] == [1, 2, 3]
        assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)


@pytest.mark.results
async def test_sentence_hits_carry_their_place_in_the_hierarchy(conn, embedder):
    hits = await search(conn, "freight costs and supplier delays", level="sentence", limit=10, embedder=embedder)
    assert len(hits) == 10
    for hit in hits:
        truth = await conn.fetchrow(
            "SELECT s.firm_id, f.firm_name, s.doc_id, s.text, st.topic_id, t.name AS topic_name,"
            "       t.theme_id, th.name AS theme_name"
            " FROM sentence_topics st JOIN sentences s USING (sentence_id) JOIN firms f ON f.firm_id = s.firm_id"
            " LEFT JOIN topics t ON t.topic_id = st.topic_id LEFT JOIN themes th ON th.theme_id = t.theme_id"
            " WHERE st.sentence_id = $1", hit["sentence_id"])
        assert {k: hit[k] for k in truth.keys()} == dict(truth)


@pytest.mark.results
async def test_topic_and_theme_hits_carry_their_place_in_the_hierarchy(conn, embedder):
    topics = await search(conn, "share buybacks and dividends", level="topic", limit=5, embedder=embedder)
    assert len(topics) == 5
    for hit in topics:
        truth = await conn.fetchrow(
            "SELECT t.firm_id, f.firm_name, t.name AS topic_name, t.theme_id, th.name AS theme_name"
            " FROM topics t JOIN firms f USING (firm_id) LEFT JOIN themes th USING (theme_id)"
            " WHERE t.topic_id = $1", hit["topic_id"])
        assert {k: hit[k] for k in truth.keys()} == dict(truth)
        assert hit["theme_id"] is not None

    themes = await search(conn, "share buybacks and dividends", level="theme", limit=3, embedder=embedder)
    assert {"theme_id", "theme_name", "theme_summary", "n_topics", "n_firms", "distance"} <= set(themes[0])
    # The nearest topic and the nearest theme are about returning capital (what their
    # sentences and keywords say), and the nearest topic's theme is among the first theme
    # hits. Not that the nearest theme holds the nearest topic: capital return can be two
    # themes (dividends; buybacks) at nearly the same distance, and which of them is
    # nearer turns on rounding.
    assert await subject_of_sentences(conn, "topic_id", topics[0]["topic_id"]) == "capital return"
    assert await subject_of_sentences(conn, "theme_id", themes[0]["theme_id"]) == "capital return"
    keywords = await conn.fetchval("SELECT keywords FROM themes WHERE theme_id = $1", themes[0]["theme_id"])
    assert {"dividend", "shareholders", "repurchase", "cash"} & set(keywords)
    assert topics[0]["theme_id"] in [h["theme_id"] for h in themes]


@pytest.mark.results
async def test_hits_are_the_exact_nearest_rows(conn, embedder):
    """On data this small the index must agree with a brute-force scan. Sentences are
    stored as 16-bit floats, and the query is compared with them as one: their cosine
    distance is that of the query rounded to 16 bits."""
    vector = embedder.encode(["labour shortages and wage increases"])[0]
    rid = await run_id(conn)
    for level, table, key in (("topic", "topics", "topic_id"), ("sentence", "sentence_topics", "sentence_id")):
        rows = await conn.fetch(f"SELECT {key}, embedding FROM {table} WHERE run_id = $1", rid)
        matrix = np.stack([as_array(r["embedding"]) for r in rows]).astype(np.float64)
        query = (vector.astype(np.float16) if level == "sentence" else vector).astype(np.float64)
        distances = 1 - (matrix @ query) / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
        hits = await nearest(conn, vector, run_id=rid, level=level, limit=8)
        assert_the_exact_nearest(hits, key, [r[key] for r in rows], distances, limit=8)


@pytest.mark.results
async def test_firm_restricts_the_hits(conn, embedder):
    # A limit above any topic count NWL can have (9 or so), so every one of its topics comes back.
    topics = await search(conn, "cloud software", level="topic", firm_id="NWL", limit=100, embedder=embedder)
    expected = await conn.fetchval("SELECT count(*) FROM topics WHERE firm_id = 'NWL'")
    assert expected and len(topics) == expected and {h["firm_id"] for h in topics} == {"NWL"}
    # A selective filter still fills the limit (NWL has 160 of the 1,120 sentences).
    sentences = await search(conn, "cloud software", level="sentence", firm_id="NWL", limit=100, embedder=embedder)
    assert len(sentences) == 100 and {h["firm_id"] for h in sentences} == {"NWL"}
    themes = await search(conn, "cloud software", level="theme", firm_id="NWL", limit=100, embedder=embedder)
    nwl_themes = {r["theme_id"] for r in await conn.fetch("SELECT theme_id FROM topics WHERE firm_id = 'NWL'")}
    assert {h["theme_id"] for h in themes} == nwl_themes


@pytest.mark.results
async def test_a_firms_rows_are_found_through_an_index(conn, embedder):
    """``--firm`` reads one firm's rows of the run through a b-tree on (run_id, firm_id),
    not every row of the run. On the sample run a scan is cheaper, so scans are switched
    off: the plan shows which index the filter can use."""
    from app.read.search import _query

    vector, rid = embedder.encode(["cloud software"])[0], await run_id(conn)
    for level, index in (("sentence", "sentence_topics_run_firm"), ("topic", "topics_run_id_firm_id_topic_no_key")):
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = await conn.fetch("EXPLAIN " + _query(level, run_id=rid, firm=True, exact=True),
                                    vector, rid, 10, "NWL")
        assert index in "\n".join(row[0] for row in plan), (level, plan)


@pytest.mark.results
def test_cli_search_prints_a_table_and_json_lines(cli_env, capsys):
    assert main(["search", "supply chain disruptions", "--level", "sentence", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 sentences nearest to 'supply chain disruptions'" in out
    assert "distance" in out and "theme" in out and "sentence" in out

    assert main(["search", "supply chain disruptions", "--level", "topic", "--limit", "4", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    hits = [json.loads(line) for line in lines]
    assert len(hits) == 4 and hits[0]["rank"] == 1
    assert {"distance", "theme_id", "theme_name", "topic_id", "topic_name", "firm_id", "firm_name"} <= set(hits[0])


@pytest.mark.results
def test_cli_search_usage_errors_exit_2(cli_env, capsys):
    assert "no run named 'nope'" in one_line_error(capsys, ["search", "costs", "--run", "nope"])
    assert "no firm 'NOPE'" in one_line_error(capsys, ["search", "costs", "--firm", "NOPE"])
    assert "--limit" in one_line_error(capsys, ["search", "costs", "--limit", "0"])
    assert main(["search", "costs", "--level", "paragraph"]) == 2


async def test_a_limit_above_the_cap_is_refused_before_the_database_is_asked():
    from app.errors import UsageError
    from app.read.search import MAX_LIMIT

    with pytest.raises(UsageError, match=f"between 1 and {MAX_LIMIT}, got {MAX_LIMIT + 1}"):
        await search(None, "costs", limit=MAX_LIMIT + 1)  # no connection: refused before one is needed
    with pytest.raises(UsageError, match="--limit"):
        await search(None, "costs", limit=0)


async def test_a_run_that_is_not_complete_is_refused(pool):
    from app.errors import UsageError

    async with pool.acquire() as connection:
        await connection.execute(
            "INSERT INTO runs (name, settings, model, embedding_dim, package_versions, status)"
            " VALUES ('half', '{}', 'all-MiniLM-L6-v2', 384, '{}', 'firms_done')")
        with pytest.raises(UsageError, match="run 'half' is not complete"):
            await search(connection, "costs", run_name="half")


# --- theme levels: the levelled run (fine themes, and 2-3 broader ones above them) -----


@pytest.fixture
def levelled_cli_env(cli_env, levelled_run, monkeypatch):
    """``cli_env``, pointed at the levelled run's database."""
    monkeypatch.setenv("DATABASE_URL", levelled_run)
    return levelled_run


async def themes_by_level(conn) -> dict[int, dict[int, asyncpg.Record]]:
    rows = await conn.fetch("SELECT theme_id, level, parent_theme_id, name FROM themes"
                            " WHERE run_id = (SELECT run_id FROM runs WHERE name = 'default')")
    levels: dict[int, dict[int, asyncpg.Record]] = {}
    for row in rows:
        levels.setdefault(row["level"], {})[row["theme_id"]] = row
    return levels


@pytest.mark.results
async def test_the_levelled_run_has_two_theme_levels(levelled_conn):
    """What the tests below rely on: otherwise they would pass for want of a second level."""
    levels = await themes_by_level(levelled_conn)
    assert sorted(levels) == [1, 2]
    assert 2 <= len(levels[2]) <= 3 < len(levels[1])


@pytest.mark.results
async def test_theme_level_2_gives_only_the_top_themes_without_parent(levelled_conn, embedder):
    top = (await themes_by_level(levelled_conn))[2]
    hits = await search(levelled_conn, "share buybacks and dividends", level="theme", theme_level=2,
                        limit=10, embedder=embedder)
    assert {h["theme_id"] for h in hits} == set(top)  # all of them: the limit is above their number
    for hit in hits:
        assert hit["level"] == 2
        assert hit["parent_theme_id"] is None and hit["parent_name"] is None
        assert hit["theme_name"] == top[hit["theme_id"]]["name"]
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)


@pytest.mark.results
async def test_theme_level_1_hits_have_their_parent_at_level_2(levelled_conn, embedder):
    levels = await themes_by_level(levelled_conn)
    hits = await search(levelled_conn, "freight costs and supplier delays", level="theme", theme_level=1,
                        limit=5, embedder=embedder)
    assert len(hits) == 5
    for hit in hits:
        assert hit["level"] == 1 and hit["theme_id"] in levels[1]
        assert hit["parent_theme_id"] == levels[1][hit["theme_id"]]["parent_theme_id"]
        parent = levels[2][hit["parent_theme_id"]]  # KeyError: no such level-2 theme
        assert hit["parent_name"] == parent["name"]


@pytest.mark.results
async def test_without_a_theme_level_every_level_competes_by_distance(levelled_conn, embedder):
    """All themes of both levels, in the order of a brute-force scan."""
    vector = embedder.encode(["share buybacks and dividends"])[0]
    rid = await run_id(levelled_conn)
    rows = await levelled_conn.fetch("SELECT theme_id, level, embedding FROM themes WHERE run_id = $1", rid)
    distances = 1 - np.stack([r["embedding"].to_numpy() for r in rows]) @ vector
    ids = [r["theme_id"] for r in rows]
    hits = await nearest(levelled_conn, vector, run_id=rid, level="theme", limit=len(rows))
    assert_the_exact_nearest(hits, "theme_id", ids, distances, limit=len(rows))
    assert {h["level"] for h in hits} == {1, 2}
    # A small limit takes the nearest of either level, not one level first.
    assert_the_exact_nearest(await nearest(levelled_conn, vector, run_id=rid, level="theme", limit=4),
                             "theme_id", ids, distances, limit=4)


@pytest.mark.results
async def test_a_theme_level_the_run_lacks_gives_no_hits(levelled_conn, conn, embedder):
    assert await search(levelled_conn, "costs", level="theme", theme_level=3, embedder=embedder) == []
    # The sample run has one level: its themes are level 1, with no parent.
    assert await search(conn, "costs", level="theme", theme_level=2, embedder=embedder) == []
    hits = await search(conn, "costs", level="theme", theme_level=1, limit=3, embedder=embedder)
    assert len(hits) == 3
    assert all(h["level"] == 1 and h["parent_theme_id"] is None and h["parent_name"] is None for h in hits)


@pytest.mark.results
async def test_a_firm_s_themes_are_its_fine_themes_and_those_above_them(levelled_conn, embedder):
    mine = {r["ancestor_id"]: r["ancestor_level"] for r in await levelled_conn.fetch(
        "SELECT DISTINCT l.ancestor_id, l.ancestor_level FROM topics t"
        " JOIN theme_lineage l ON l.theme_id = t.theme_id WHERE t.firm_id = 'NWL'")}
    assert set(mine.values()) == {1, 2}
    hits = await search(levelled_conn, "cloud software", level="theme", firm_id="NWL", limit=100, embedder=embedder)
    assert {h["theme_id"] for h in hits} == set(mine)
    top = await search(levelled_conn, "cloud software", level="theme", firm_id="NWL", theme_level=2, limit=100,
                       embedder=embedder)
    assert {h["theme_id"] for h in top} == {k for k, level in mine.items() if level == 2}


@pytest.mark.results
def test_cli_search_shows_theme_levels(levelled_cli_env, capsys):
    assert main(["search", "supply chain disruptions", "--level", "theme", "--theme-level", "2", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert hits and all(h["level"] == 2 and h["parent_theme_id"] is None and h["parent_name"] is None
                        for h in hits)
    assert {"level", "parent_theme_id", "parent_name"} <= set(hits[0])

    assert main(["search", "supply chain disruptions", "--level", "theme", "--theme-level", "1", "--limit", "3",
                 "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(hits) == 3 and all(h["level"] == 1 and h["parent_theme_id"] is not None for h in hits)

    assert main(["search", "supply chain disruptions", "--level", "theme", "--limit", "50", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert {h["level"] for h in hits} == {1, 2}

    assert main(["search", "supply chain disruptions", "--level", "theme", "--theme-level", "1", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 level-1 themes nearest to 'supply chain disruptions'" in out
    header = out.splitlines()[1].split()
    assert header[:5] == ["#", "distance", "level", "theme", "parent"]
    assert all(line.split()[2] == "1" for line in out.splitlines()[2:])

    assert main(["search", "costs", "--level", "theme", "--theme-level", "7"]) == 0
    assert "no level-7 theme found in run 'default'" in capsys.readouterr().out


@pytest.mark.results
def test_cli_theme_level_goes_with_theme_searches_only(levelled_cli_env, capsys):
    line = one_line_error(capsys, ["search", "costs", "--level", "topic", "--theme-level", "1"])
    assert "--theme-level" in line and "--level theme" in line
    assert "--theme-level" in one_line_error(capsys, ["search", "costs", "--level", "sentence", "--theme-level", "2"])
    assert "--theme-level" in one_line_error(capsys, ["search", "costs", "--theme-level", "1"])  # topic by default
    assert "at least 1" in one_line_error(capsys, ["search", "costs", "--level", "theme", "--theme-level", "0"])


@pytest.mark.results
async def test_theme_level_with_another_level_is_refused_by_the_functions(levelled_conn, embedder):
    from app.errors import UsageError

    with pytest.raises(UsageError, match="--theme-level"):
        await search(levelled_conn, "costs", level="topic", theme_level=1, embedder=embedder)
    with pytest.raises(UsageError, match="--theme-level"):
        await nearest(levelled_conn, embedder.encode(["costs"])[0], run_id=await run_id(levelled_conn),
                      level="sentence", theme_level=1)


# --- real earnings calls ----------------------------------------------------------------


@pytest.mark.results
def test_search_and_show_on_real_earnings_calls(server_url, ectsum_subset, tmp_path, monkeypatch, capsys,
                                                exports_dir):
    name, url = finished_run(server_url, ectsum_subset, tmp_path)
    try:
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("LOG_FORMAT", "json")
        monkeypatch.setenv("FIRMTOPICS_DATA_DIR", str(tmp_path / "search-data"))
        share_exports(tmp_path / "search-data", exports_dir)
        capsys.readouterr()

        async def a_sentence():
            connection = await asyncpg.connect(url)
            try:
                # A sentence said once by its firm: a repeated one (boilerplate of every call)
                # has twins at distance 0, and the hit may be a twin outside any topic.
                return await connection.fetchrow(
                    "SELECT s.text, s.firm_id FROM sentence_topics st JOIN sentences s USING (sentence_id)"
                    " WHERE st.topic_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM sentences o"
                    "  WHERE o.firm_id = s.firm_id AND o.text = s.text AND o.sentence_id <> s.sentence_id)"
                    " ORDER BY s.sentence_id LIMIT 1 OFFSET 50")
            finally:
                await connection.close()

        sentence = anyio.run(a_sentence)
        assert main(["search", sentence["text"], "--level", "sentence", "--firm", sentence["firm_id"],
                     "--limit", "1", "--json"]) == 0
        hit = json.loads(capsys.readouterr().out)
        assert hit["text"] == sentence["text"] and hit["distance"] < 1e-3
        assert hit["topic_id"] is not None and hit["theme_id"] is not None

        assert main(["show", "topic", str(hit["topic_id"])]) == 0
        out = capsys.readouterr().out
        assert f"topic {hit['topic_id']}: {hit['topic_name']}" in out
        assert f"theme: {hit['theme_id']}: {hit['theme_name']}" in out
        assert main(["show", "firm", sentence["firm_id"]]) == 0
        assert f"topic {hit['topic_id']}: {hit['topic_name']}" in capsys.readouterr().out
    finally:
        drop_database(server_url, name)
