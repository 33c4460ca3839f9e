"""``app.results``, the notebook API, on the finished sample run: each frame equals the
tables it reads, search gives the CLI's hits, and it works from inside a running event
loop (as in Jupyter)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.cli import main
from app.errors import UsageError
from app.results import open_run
from support import fetch


@pytest.fixture(scope="module")
def run(sample_run):
    return open_run("default", database_url=sample_run)


def test_themes_and_topics_are_the_tables(run, sample_run):
    themes = run.themes()
    assert sorted(themes["theme_id"]) == [r["theme_id"] for r in fetch(sample_run, "SELECT theme_id FROM themes ORDER BY 1")]
    assert set(themes.columns) >= {"level", "parent_theme_id", "name", "n_topics", "n_firms", "n_sentences"}
    topics = run.topics()
    stored = fetch(sample_run, "SELECT topic_id, name, theme_id FROM topics ORDER BY topic_id")
    assert sorted(zip(topics["topic_id"], topics["name"], topics["theme_id"])) == [tuple(r) for r in stored]
    assert topics["top_theme_id"].notna().all()  # every topic is linked to a theme, so has a top one


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


def test_periods_are_the_view(run, sample_run):
    periods = run.periods()
    stored = fetch(sample_run, "SELECT theme_id, period, n_sentences FROM theme_periods ORDER BY period, theme_id")
    assert list(zip(periods["theme_id"], periods["period"], periods["n_sentences"])) == [tuple(r) for r in stored]


def test_search_gives_the_clis_hits(run, cli_env, capsys):
    assert main(["search", "supply chain costs", "--json", "--limit", "5"]) == 0
    cli = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    api = run.search("supply chain costs", limit=5).to_dict("records")
    assert [h["topic_id"] for h in api] == [h["topic_id"] for h in cli]
    assert [round(h["distance"], 6) for h in api] == [round(h["distance"], 6) for h in cli]


async def test_it_works_inside_a_running_event_loop(sample_run):
    run = open_run("default", database_url=sample_run)  # as a notebook cell would, with a loop running
    assert len(run.themes()) > 0


def test_an_unknown_run_is_a_clear_error(sample_run):
    with pytest.raises(UsageError, match="no run named 'nope'"):
        open_run("nope", database_url=sample_run)
