"""The firm x period x theme panel: the view ``firm_theme_periods``, ``open_run().panel()``
and ``firmtopics panel``.

First on a small run built by hand, whose panel is known row by row (a broader theme
counts its fine themes' sentences, a sentence in no theme counts only in its
firm-period's total, a sentence of a document without a period is left out, zero rows
are kept at the top level only, and runs do not mix); then on the finished sample runs,
against a count made here from the tables, and through the command's files.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pandas as pd
import pytest

from app.cli import main
from app.errors import UsageError
from app.results import open_run
from support import bare_run, insert_corpus, offline_env, one_line_error

COLUMNS = "firm_id, period, level, theme_id, theme_name, n_sentences, period_sentences"


async def theme(conn, run_id, name, level, parent=None) -> int:
    return await conn.fetchval(
        "INSERT INTO themes (run_id, theme_no, level, parent_theme_id, name, summary, keywords, name_source,"
        " n_topics, n_firms) VALUES ($1, (SELECT count(*) FROM themes), $2, $3, $4, '', '{}', 'keywords', 1, 1)"
        " RETURNING theme_id", run_id, level, parent, name)


async def topic(conn, run_id, firm_id, theme_id) -> int:
    return await conn.fetchval(
        "INSERT INTO topics (run_id, firm_id, topic_no, name, summary, keywords, name_source, n_sentences, theme_id)"
        " VALUES ($1, $2, (SELECT count(*) FROM topics), 't', '', '{}', 'keywords', 1, $3) RETURNING topic_id",
        run_id, firm_id, theme_id)


async def place(conn, run_id, text, *, topic_id=None, theme_id=None) -> None:
    """A sentence's result in a run: in a topic, or attached to a theme, or in neither."""
    await conn.execute(
        "INSERT INTO sentence_topics (run_id, sentence_id, firm_id, topic_id, topic_assignment, theme_id, embedding)"
        " SELECT $1, sentence_id, firm_id, $3::bigint, CASE WHEN $3 IS NOT NULL THEN 'cluster' END, $4, '[0,0]'"
        " FROM sentences WHERE text = $2",
        run_id, text, topic_id, theme_id)


@pytest.fixture
async def small_run(pool, env):
    """A complete run 'r' with two top themes over three fine ones, and a run 'other' with
    a single level; returns the ids of the themes by name."""
    await insert_corpus(pool, [{"firm_id": firm, "doc_id": doc, "sentence": text} for firm, doc, text in [
        ("A", "A_q1", "a1"), ("A", "A_q1", "a2"), ("A", "A_q1", "a3"), ("A", "A_q1", "a4"),
        ("A", "A_q2", "a5"), ("B", "B_q1", "b1"), ("B", "B_q1", "b2"), ("B", "B_q1", "b3"),
        ("B", "B_undated", "b4")]])
    async with pool.acquire() as conn:
        await conn.executemany("INSERT INTO documents (firm_id, doc_id, period) VALUES ($1, $2, $3)",
                               [("A", "A_q1", "2024Q1"), ("A", "A_q2", "2024Q2"), ("B", "B_q1", "2024Q1")])
        run = await bare_run(conn, "r")
        ids = {"T1": await theme(conn, run, "T1", 2), "T2": await theme(conn, run, "T2", 2)}
        for name, parent in (("F1", "T1"), ("F2", "T1"), ("F3", "T2")):
            ids[name] = await theme(conn, run, name, 1, ids[parent])
        a_f1, a_f2 = await topic(conn, run, "A", ids["F1"]), await topic(conn, run, "A", ids["F2"])
        b_f3, b_none = await topic(conn, run, "B", ids["F3"]), await topic(conn, run, "B", None)
        for text, topic_id in (("a1", a_f1), ("a2", a_f1), ("a3", a_f2), ("b1", b_f3), ("b2", b_f3),
                               ("b3", b_none), ("b4", b_f3)):
            await place(conn, run, text, topic_id=topic_id)
        await place(conn, run, "a4")  # in no topic and no theme
        await place(conn, run, "a5", theme_id=ids["F3"])  # in no topic, attached to the nearest theme

        other = await bare_run(conn, "other")
        ids["G1"] = await theme(conn, other, "G1", 1)
        await place(conn, other, "a1", topic_id=await topic(conn, other, "A", ids["G1"]))
        await conn.execute("UPDATE runs SET status = 'complete'")
    return ids


async def test_the_view_counts_each_firm_period_in_its_themes_at_every_level(pool, small_run):
    ids = small_run
    expected = {  # firm, period, level, theme, sentences in it, sentences of the firm-period
        ("A", "2024Q1", 1, "F1", 2, 4), ("A", "2024Q1", 1, "F2", 1, 4),
        ("A", "2024Q1", 2, "T1", 3, 4), ("A", "2024Q1", 2, "T2", 0, 4),
        ("A", "2024Q2", 1, "F3", 1, 1), ("A", "2024Q2", 2, "T1", 0, 1), ("A", "2024Q2", 2, "T2", 1, 1),
        ("B", "2024Q1", 1, "F3", 2, 3), ("B", "2024Q1", 2, "T1", 0, 3), ("B", "2024Q1", 2, "T2", 2, 3),
    }
    async with pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT run_name, {COLUMNS}, share FROM firm_theme_periods ORDER BY run_name")
    panel = [(r["firm_id"], r["period"], r["level"], r["theme_name"], r["n_sentences"], r["period_sentences"])
             for r in rows if r["run_name"] == "r"]
    assert sorted(panel) == sorted(expected)
    assert all(ids[r["theme_name"]] == r["theme_id"] for r in rows)
    assert all(r["share"] == r["n_sentences"] / r["period_sentences"] for r in rows)
    # The single-level run: its level 1 is its top, so zero rows are kept there.
    assert [tuple(r)[1:8] for r in rows if r["run_name"] == "other"] == [
        ("A", "2024Q1", 1, ids["G1"], "G1", 1, 1)]


def test_panel_reads_the_view_by_level(small_run, env):
    run = open_run("r", database_url=env)
    panel = run.panel()
    assert list(panel.columns) == ["firm_id", "period", "level", "theme_id", "theme_name", "n_sentences",
                                   "period_sentences", "share"]
    assert len(panel) == 10 and panel["share"].dtype == "float64"
    top = run.panel(level=2)
    assert list(top["theme_name"]) == ["T1", "T2", "T1", "T2", "T1", "T2"]  # by firm, period, theme
    assert list(top["n_sentences"]) == [3, 0, 0, 1, 0, 2]
    assert set(run.panel(level=1)["level"]) == {1}
    with pytest.raises(UsageError, match="levels 1 to 2"):
        run.panel(level=3)


def test_a_bad_file_extension_or_level_is_a_usage_error(small_run, env, capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    line = one_line_error(capsys, ["panel", "--run", "r", "--out", str(out / "panel.xlsx")])
    assert ".parquet" in line and ".csv" in line and "panel.xlsx" in line
    assert "levels 1 to 2" in one_line_error(capsys, ["panel", "--run", "r", "--level", "0",
                                                      "--out", str(out / "panel.csv")])
    assert list(out.iterdir()) == []


# --- on the finished sample runs ---------------------------------------------------------


async def counted_from_the_tables(conn, run_id):
    """The panel counted here, from the tables: each dated sentence of the run counts in
    its fine theme and every theme above it; returns (theme cell counts, firm-period
    totals, firm-period sentences in no theme, themes by id)."""
    themes = {r["theme_id"]: r for r in await conn.fetch(
        "SELECT theme_id, level, parent_theme_id, name FROM themes WHERE run_id = $1", run_id)}
    sentences = await conn.fetch(
        "SELECT st.firm_id, d.period, coalesce(t.theme_id, st.theme_id) AS theme_id"
        " FROM sentence_topics st JOIN sentences s ON s.sentence_id = st.sentence_id"
        " JOIN documents d ON d.firm_id = s.firm_id AND d.doc_id = s.doc_id"
        " LEFT JOIN topics t ON t.topic_id = st.topic_id WHERE st.run_id = $1", run_id)
    cells, totals, unthemed = Counter(), Counter(), Counter()
    for s in sentences:
        key = (s["firm_id"], s["period"])
        totals[key] += 1
        unthemed[key] += s["theme_id"] is None
        theme_id = s["theme_id"]
        while theme_id is not None:
            cells[(*key, theme_id)] += 1
            theme_id = themes[theme_id]["parent_theme_id"]
    return cells, totals, unthemed, themes


async def panel_rows(conn, run_id):
    return await conn.fetch(f"SELECT {COLUMNS}, share FROM firm_theme_periods WHERE run_id = $1", run_id)


@pytest.mark.results
async def test_the_panel_equals_a_count_of_the_tables(levelled_conn):
    run_id = await levelled_conn.fetchval("SELECT run_id FROM runs WHERE name = 'default'")
    cells, totals, _, themes = await counted_from_the_tables(levelled_conn, run_id)
    assert max(t["level"] for t in themes.values()) == 2  # a broader level to count into
    top = [t for t in themes.values() if t["parent_theme_id"] is None]
    expected = {(*key[:2], themes[key[2]]["level"], key[2], themes[key[2]]["name"], n, totals[key[:2]])
                for key, n in cells.items()}
    expected |= {(firm, period, t["level"], t["theme_id"], t["name"], 0, total)
                 for (firm, period), total in totals.items() for t in top
                 if (firm, period, t["theme_id"]) not in cells}
    rows = await panel_rows(levelled_conn, run_id)
    assert len(rows) == len({tuple(r)[:4] for r in rows})  # one row per firm, period and theme
    assert {tuple(r)[:7] for r in rows} == expected
    assert all(r["share"] == pytest.approx(r["n_sentences"] / r["period_sentences"]) for r in rows)
    assert all(r["n_sentences"] > 0 for r in rows if r["level"] == 1)  # zeros at the top level only


@pytest.mark.results
async def test_shares_sum_to_the_themed_share_of_each_firm_period(levelled_conn):
    run_id = await levelled_conn.fetchval("SELECT run_id FROM runs WHERE name = 'default'")
    _, totals, unthemed, _ = await counted_from_the_tables(levelled_conn, run_id)
    shares, counts = defaultdict(float), Counter()
    for r in await panel_rows(levelled_conn, run_id):
        shares[(r["firm_id"], r["period"], r["level"])] += r["share"]
        counts[(r["firm_id"], r["period"], r["level"])] += r["n_sentences"]
    assert {key[2] for key in shares} == {1, 2}
    for (firm, period, level), total in shares.items():
        # Every themed sentence is in one theme of each level; a sentence in no theme in none.
        assert counts[(firm, period, level)] == totals[(firm, period)] - unthemed[(firm, period)]
        assert total <= 1 + 1e-9
        if not unthemed[(firm, period)]:
            assert total == pytest.approx(1)


@pytest.mark.results
async def test_zero_rows_keep_every_top_theme_for_every_firm_period(conn):
    run_id = await conn.fetchval("SELECT run_id FROM runs WHERE name = 'default'")
    assert await conn.fetchval("SELECT count(DISTINCT level) FROM themes WHERE run_id = $1", run_id) == 1
    top = {r[0] for r in await conn.fetch("SELECT theme_id FROM themes WHERE run_id = $1", run_id)}
    rows = await panel_rows(conn, run_id)
    by_firm_period = defaultdict(set)
    for r in rows:
        by_firm_period[(r["firm_id"], r["period"])].add(r["theme_id"])
    assert all(found == top for found in by_firm_period.values())
    # Each firm of the sample speaks of three or four of its six subjects: some cells are zero.
    assert any(r["n_sentences"] == 0 and r["share"] == 0 for r in rows)


@pytest.mark.results
def test_the_command_writes_parquet_and_csv_as_the_panel_reads(levelled_run, monkeypatch, tmp_path, capsys):
    offline_env(monkeypatch, levelled_run, tmp_path)
    assert main(["panel", "--out", str(tmp_path / "panel.parquet")]) == 0
    assert "panel.parquet" in capsys.readouterr().out
    assert main(["panel", "--level", "1", "--out", str(tmp_path / "fine.csv")]) == 0
    run = open_run("default", database_url=levelled_run)
    everything, fine = run.panel(), run.panel(level=1)
    assert set(everything["level"]) == {1, 2} and set(fine["level"]) == {1}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "panel.parquet"), everything, check_dtype=False)
    text_columns = {"firm_id": str, "period": str, "theme_name": str}
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "fine.csv", dtype=text_columns), fine, check_dtype=False)
