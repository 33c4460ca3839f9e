"""``firmtopics search`` on a real run: the generated corpus (always) and real earnings-call
sentences (when the shared research data is present).
"""

from __future__ import annotations

import json

import anyio
import asyncpg
import numpy as np
import pytest

from app.cli import main
from app.search import nearest, search
from conftest import drop_database, finished_run, one_line_error

async def run_id(conn) -> int:
    return await conn.fetchval("SELECT run_id FROM runs WHERE name = 'default'")


# --- search on the sample run -----------------------------------------------------------


async def test_a_sentence_finds_itself(conn, embedder):
    sentences = await conn.fetch("SELECT sentence_id, firm_id, text FROM sentences ORDER BY sentence_id"
                                 " LIMIT 5 OFFSET 100")
    for sentence in sentences:
        hits = await search(conn, sentence["text"], level="sentence", limit=3, embedder=embedder)
        assert hits[0]["text"] == sentence["text"]
        assert hits[0]["distance"] == pytest.approx(0, abs=1e-3)
        assert [h["rank"] for h in hits] == [1, 2, 3]
        assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)


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
    # The nearest theme is the one about returning capital, and it holds the nearest topic.
    keywords = await conn.fetchval("SELECT keywords FROM themes WHERE theme_id = $1", themes[0]["theme_id"])
    assert {"dividend", "shareholders", "repurchase", "cash"} & set(keywords)
    assert themes[0]["theme_id"] == topics[0]["theme_id"]


async def test_hits_are_the_exact_nearest_rows(conn, embedder):
    """On data this small the index must agree with a brute-force scan."""
    vector = embedder.encode(["labour shortages and wage increases"])[0]
    rid = await run_id(conn)
    for level, table, key in (("topic", "topics", "topic_id"), ("sentence", "sentence_topics", "sentence_id")):
        rows = await conn.fetch(f"SELECT {key}, embedding FROM {table} WHERE run_id = $1", rid)
        matrix = np.stack([r["embedding"].to_numpy() for r in rows])
        distances = 1 - matrix @ vector
        best = sorted(zip(distances, [r[key] for r in rows]))[:8]
        hits = await nearest(conn, vector, run_id=rid, level=level, limit=8)
        assert [h[key] for h in hits] == [k for _, k in best]
        assert [h["distance"] for h in hits] == pytest.approx([d for d, _ in best], abs=1e-5)


async def test_firm_restricts_the_hits(conn, embedder):
    topics = await search(conn, "cloud software", level="topic", firm_id="NWL", limit=10, embedder=embedder)
    expected = await conn.fetchval("SELECT count(*) FROM topics WHERE firm_id = 'NWL'")
    assert len(topics) == expected and {h["firm_id"] for h in topics} == {"NWL"}
    # A selective filter still fills the limit (NWL has 160 of the 1,120 sentences).
    sentences = await search(conn, "cloud software", level="sentence", firm_id="NWL", limit=100, embedder=embedder)
    assert len(sentences) == 100 and {h["firm_id"] for h in sentences} == {"NWL"}
    themes = await search(conn, "cloud software", level="theme", firm_id="NWL", limit=10, embedder=embedder)
    nwl_themes = {r["theme_id"] for r in await conn.fetch("SELECT theme_id FROM topics WHERE firm_id = 'NWL'")}
    assert {h["theme_id"] for h in themes} == nwl_themes


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


def test_cli_search_usage_errors_exit_2(cli_env, capsys):
    assert "no run named 'nope'" in one_line_error(capsys, ["search", "costs", "--run", "nope"])
    assert "no firm 'NOPE'" in one_line_error(capsys, ["search", "costs", "--firm", "NOPE"])
    assert "--limit" in one_line_error(capsys, ["search", "costs", "--limit", "0"])
    assert main(["search", "costs", "--level", "paragraph"]) == 2


async def test_a_run_that_is_not_complete_is_refused(pool):
    from app.cli import UsageError

    async with pool.acquire() as connection:
        await connection.execute(
            "INSERT INTO runs (name, settings, model, embedding_dim, package_versions, status)"
            " VALUES ('half', '{}', 'all-MiniLM-L6-v2', 384, '{}', 'firms_done')")
        with pytest.raises(UsageError, match="run 'half' is not complete"):
            await search(connection, "costs", run_name="half")


# --- real earnings calls ----------------------------------------------------------------


def test_search_and_show_on_real_earnings_calls(server_url, ectsum_subset, tmp_path, monkeypatch, capsys):
    name, url = finished_run(server_url, ectsum_subset, tmp_path)
    try:
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("LOG_FORMAT", "json")
        monkeypatch.setenv("FIRMTOPICS_DATA_DIR", str(tmp_path / "data"))
        capsys.readouterr()

        async def a_sentence():
            connection = await asyncpg.connect(url)
            try:
                return await connection.fetchrow(
                    "SELECT s.text, s.firm_id FROM sentence_topics st JOIN sentences s USING (sentence_id)"
                    " WHERE st.topic_id IS NOT NULL ORDER BY s.sentence_id LIMIT 1 OFFSET 50")
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
