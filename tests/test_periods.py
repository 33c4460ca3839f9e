"""Periods (schema 8): parsed from a corpus's optional ``period`` column, stored per
document, inherited by its sentences, a second period for a document reported as a bad
row; the ``theme_periods`` view equals its join; ``firmtopics trends`` shows it."""

from __future__ import annotations

import gzip
import json

import pytest

from app.cli import main
from app.corpus import IngestReport, check_fields, read_chunks
from app.ingest import ingest_file
from app.read.trends import format_trends
from support import LIVE_THEME_PERIODS


def write_jsonl(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    return path


def test_a_period_is_text_or_a_whole_number_and_needs_a_document():
    row, _ = check_fields({"firm_id": "A", "doc_id": "A_2021", "period": 2021, "sentence": "Sales grew."})
    assert row.period == "2021"
    row, _ = check_fields({"firm_id": "A", "doc_id": "d", "period": " 2020Q4 ", "sentence": "Sales grew."})
    assert row.period == "2020Q4"
    assert check_fields({"firm_id": "A", "doc_id": "d", "sentence": "Sales grew."})[0].period is None


def test_a_period_without_a_document_is_a_bad_row(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl.gz", [{"firm_id": "A", "doc_id": "d", "period": "2021", "sentence": "x"},
                                                 {"firm_id": "A", "period": "2021", "sentence": "y"}])
    report = IngestReport(path=str(path))
    rows = [row for chunk in read_chunks(path, report) for row in chunk]
    assert [r.text for r in rows] == ["x"] and report.bad_rows == 1
    assert "line 2: period given without doc_id" in report.problems[0]


async def test_periods_are_stored_per_document_and_a_second_period_is_a_bad_row(pool, tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl.gz", [
        {"firm_id": "A", "doc_id": "A_q1", "period": "2021Q1", "sentence": "Demand rose."},
        {"firm_id": "A", "doc_id": "A_q1", "sentence": "Costs fell."},  # no period: inherits its document's
        {"firm_id": "A", "doc_id": "A_q1", "period": "2021Q2", "sentence": "Margins widened."},  # conflict
        {"firm_id": "A", "doc_id": "A_q2", "period": "2021Q2", "sentence": "Demand fell."},
        {"firm_id": "B", "doc_id": "B_x", "sentence": "No period here."},
    ])
    report = await ingest_file(pool, first, chunk_rows=2)  # the conflict is in another chunk than its document
    assert (report.rows_read, report.rows_valid, report.bad_rows, report.rows_added) == (5, 4, 1, 4)
    assert any(":line 3: document 'A_q1' of firm 'A' has period '2021Q1'; this row gives '2021Q2'" in p
               for p in report.problems)

    later = write_jsonl(tmp_path / "b.jsonl.gz", [
        {"firm_id": "A", "doc_id": "A_q2", "period": "2021Q3", "sentence": "Another view."},  # conflict across files
        {"firm_id": "A", "doc_id": "A_q2", "period": "2021Q2", "sentence": "Same period again."},
    ])
    report = await ingest_file(pool, later)
    assert (report.bad_rows, report.rows_added) == (1, 1)
    async with pool.acquire() as conn:
        documents = {(r["firm_id"], r["doc_id"]): r["period"]
                     for r in await conn.fetch("SELECT firm_id, doc_id, period FROM documents")}
        periods = {r["text"]: r["period"] for r in await conn.fetch(
            "SELECT s.text, d.period FROM sentences s"
            " LEFT JOIN documents d ON d.firm_id = s.firm_id AND d.doc_id = s.doc_id")}
    assert documents == {("A", "A_q1"): "2021Q1", ("A", "A_q2"): "2021Q2"}
    assert periods == {"Demand rose.": "2021Q1", "Costs fell.": "2021Q1", "Demand fell.": "2021Q2",
                       "No period here.": None, "Same period again.": "2021Q2"}


@pytest.mark.results
async def test_theme_periods_is_its_join(conn):
    view = {tuple(r) for r in await conn.fetch(
        "SELECT run_id, theme_id, period, n_firms, n_sentences, share_of_period FROM theme_periods")}
    join = {tuple(r) for r in await conn.fetch(
        "SELECT run_id, theme_id, period, n_firms, n_sentences,"
        "       round(n_sentences::numeric / sum(n_sentences) OVER (PARTITION BY run_id, period), 4)"
        f" FROM ({LIVE_THEME_PERIODS}) counted")}
    assert view == join and {r[2] for r in view} == {"2024Q1", "2024Q2"}  # the demo corpus's quarters
    for period in ("2024Q1", "2024Q2"):
        assert sum(r[5] for r in view if r[2] == period) == pytest.approx(1, abs=1e-3)


@pytest.mark.results
def test_cli_trends_lists_themes_by_period(cli_env, capsys):
    assert main(["trends"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[1]
    assert "2024Q1" in header and "2024Q2" in header and header.index("2024Q1") < header.index("2024Q2")
    assert main(["trends", "--json", "--top", "3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len({r["theme_id"] for r in rows}) == 3 and {r["period"] for r in rows} == {"2024Q1", "2024Q2"}
    theme = rows[0]["theme_id"]
    assert main(["trends", "--theme", str(theme)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"theme {theme}:") and "2024Q1" in out and "2024Q2" in out
    assert main(["trends", "--theme", "999999"]) == 2


def test_trends_without_periods_says_so():
    assert "has no periods to show" in format_trends([], "default")
