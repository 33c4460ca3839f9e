"""``app.results``, the notebook API, on the finished sample run: each frame equals the
tables it reads, search gives the CLI's hits, and it works from inside a running event
loop (as in Jupyter)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from app.cli import main
from app.errors import UsageError
from app.results import open_run
from support import fetch


@pytest.fixture(scope="module")
def run(sample_run):
    return open_run("default", database_url=sample_run)


@pytest.mark.results
def test_themes_and_topics_are_the_tables(run, sample_run):
    themes = run.themes()
    assert sorted(themes["theme_id"]) == [r["theme_id"] for r in fetch(sample_run, "SELECT theme_id FROM themes ORDER BY 1")]
    assert set(themes.columns) >= {"level", "parent_theme_id", "name", "n_topics", "n_firms", "n_sentences"}
    topics = run.topics()
    stored = fetch(sample_run, "SELECT topic_id, name, theme_id FROM topics ORDER BY topic_id")
    assert sorted(zip(topics["topic_id"], topics["name"], topics["theme_id"])) == [tuple(r) for r in stored]
    assert topics["top_theme_id"].notna().all()  # every topic is linked to a theme, so has a top one


@pytest.mark.results
def test_sentences_carry_their_period_and_embeddings_on_request(run, sample_run):
    frame = run.sentences()
    assert len(frame) == fetch(sample_run, "SELECT count(*) AS n FROM sentence_topics")[0]["n"]
    assert set(frame["period"]) == {"2024Q1", "2024Q2"}
    assert set(frame["theme_via"].dropna()) <= {"topic", "nearest"}
    with_vectors, vectors = run.sentences(embeddings=True)
    assert vectors.shape == (len(with_vectors), 384) and vectors.dtype == np.float32
    first = fetch(sample_run, "SELECT embedding::text AS e FROM sentence_topics WHERE sentence_id = $1",
                  int(with_vectors["sentence_id"].iloc[0]))[0]["e"]
    np.testing.assert_allclose(vectors[0], json.loads(first), rtol=1e-6)


@pytest.mark.results
def test_periods_are_the_view(run, sample_run):
    periods = run.periods()
    stored = fetch(sample_run, "SELECT theme_id, period, n_sentences FROM theme_periods ORDER BY period, theme_id")
    assert list(zip(periods["theme_id"], periods["period"], periods["n_sentences"])) == [tuple(r) for r in stored]


@pytest.mark.results
def test_search_gives_the_clis_hits(run, cli_env, capsys):
    assert main(["search", "supply chain costs", "--json", "--limit", "5"]) == 0
    cli = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    api = run.search("supply chain costs", limit=5).to_dict("records")
    assert [h["topic_id"] for h in api] == [h["topic_id"] for h in cli]
    assert [round(h["distance"], 6) for h in api] == [round(h["distance"], 6) for h in cli]


@pytest.mark.results
async def test_it_works_inside_a_running_event_loop(sample_run):
    run = open_run("default", database_url=sample_run)  # as a notebook cell would, with a loop running
    assert len(run.themes()) > 0


@pytest.mark.results
def test_an_unknown_run_is_a_clear_error(sample_run):
    with pytest.raises(UsageError, match="no run named 'nope'"):
        open_run("nope", database_url=sample_run)


@pytest.mark.results
def test_chunks_hold_at_most_chunk_rows_and_add_up_to_the_whole_run(run):
    whole = run.sentences()
    chunks = list(run.sentences_chunks(chunk_rows=100))
    assert len(chunks) == -(-len(whole) // 100) > 1
    assert all(len(chunk) <= 100 for chunk in chunks)
    together = pd.concat(chunks, ignore_index=True)
    pd.testing.assert_frame_equal(together, whole)  # the same rows, in the same order (by sentence id)


@pytest.mark.results
def test_chunks_with_embeddings_keep_frame_and_vectors_in_step(run):
    whole, vectors = run.sentences(embeddings=True)
    pieces = list(run.sentences_chunks(chunk_rows=300, embeddings=True))
    assert all(len(frame) == len(rows) <= 300 for frame, rows in pieces)
    np.testing.assert_array_equal(np.concatenate([rows for _, rows in pieces]), vectors)
    assert list(pd.concat([frame for frame, _ in pieces])["sentence_id"]) == list(whole["sentence_id"])


@pytest.mark.results
def test_a_firm_or_a_period_filter_gives_those_rows_of_the_whole_run(run):
    whole = run.sentences()
    firm = whole["firm_id"].iloc[0]
    expected = whole[whole["firm_id"] == firm].reset_index(drop=True)
    pd.testing.assert_frame_equal(run.sentences(firm=firm), expected)
    chunked = pd.concat(run.sentences_chunks(chunk_rows=7, firm=firm), ignore_index=True)
    pd.testing.assert_frame_equal(chunked, expected)
    both = run.sentences(firm=firm, period="2024Q2")
    assert len(both) > 0
    pd.testing.assert_frame_equal(
        both, whole[(whole["firm_id"] == firm) & (whole["period"] == "2024Q2")].reset_index(drop=True))
    assert run.sentences(firm="no such firm").empty
    assert list(run.sentences_chunks(period="1999Q1")) == []


@pytest.mark.results
def test_a_theme_filter_takes_the_theme_and_every_theme_under_it(levelled_run):
    run = open_run("default", database_url=levelled_run)
    whole = run.sentences()
    themes = run.themes()
    top = themes[themes["parent_theme_id"].isna() & (themes["level"] > 1)]["theme_id"].iloc[0]
    under_top = run.sentences(theme=int(top))
    assert len(under_top) > 0 and top not in set(under_top["theme_id"])  # a broad theme's rows are its children's
    pd.testing.assert_frame_equal(under_top, whole[whole["top_theme_id"] == top].reset_index(drop=True))
    fine = int(under_top["theme_id"].iloc[0])
    pd.testing.assert_frame_equal(run.sentences(theme=fine), whole[whole["theme_id"] == fine].reset_index(drop=True))


def test_chunk_rows_must_be_positive():
    from app.read.results import Run

    with pytest.raises(ValueError, match="chunk_rows"):
        Run(name="r", run_id=1, url="postgresql://nowhere/db").sentences_chunks(chunk_rows=0)
