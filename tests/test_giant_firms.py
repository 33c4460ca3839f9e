"""A firm above FIRMTOPICS_MAX_FIRM_SENTENCES: clustered on a seeded sample of exactly
that many sentences, its other sentences joined to their nearest topic when close enough
(``nearest``) or left unassigned; the same sample every time; the cap recorded with the run."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from app.clustering import attach_outliers, firm_sample
from app.settings import RunSettings
from support import drop_database, fetch, finished_run, offline_env, one_line_error, subject_of

CAP = 300
BIG = ("BIG", "Bigcorp Holdings Inc.", ["supply chain", "emissions", "capital return"], 300)  # 900 sentences
SMALL = ("SML", "Smallco Ltd.", ["labour", "pricing"], 60)  # 120 sentences: within the cap


# --- which sentences a giant firm is clustered on ---------------------------------------


def test_a_firm_within_the_cap_is_clustered_whole():
    settings = RunSettings(max_firm_sentences=CAP)
    assert firm_sample(CAP, settings, "BIG") is None
    assert firm_sample(10, settings, "BIG") is None


def test_the_sample_is_exactly_the_cap_and_seeded_by_run_and_firm():
    settings = RunSettings(max_firm_sentences=CAP)
    sample = firm_sample(900, settings, "BIG")
    assert len(sample) == CAP and len(set(sample.tolist())) == CAP
    assert sample.min() >= 0 and sample.max() < 900 and (np.diff(sample) > 0).all()  # ascending positions
    assert np.array_equal(sample, firm_sample(900, settings, "BIG"))
    assert not np.array_equal(sample, firm_sample(900, settings, "OTHER"))
    assert not np.array_equal(sample, firm_sample(900, RunSettings(max_firm_sentences=CAP, seed=7), "BIG"))


def test_the_sample_is_the_same_in_every_process():
    # Python salts its string hash per process: a sample seeded by it would differ on a
    # resume or on another worker.
    code = ("from app.clustering import firm_sample; from app.settings import RunSettings;"
            f" print(firm_sample(900, RunSettings(max_firm_sentences={CAP}), 'BIG').tolist())")
    root = Path(__file__).resolve().parents[1]
    samples = [subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": salt, "PYTHONPATH": str(root)}).stdout
               for salt in ("1", "2")]
    here = firm_sample(900, RunSettings(max_firm_sentences=CAP), "BIG").tolist()
    assert json.loads(samples[0]) == json.loads(samples[1]) == here


def test_attaching_in_blocks_places_every_sentence_as_at_once(monkeypatch):
    import app.clustering

    # Two topics along the first two axes; outliers clearly near one, the other, or neither.
    rows = [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0],
            [0.9, 0.1, 0], [0.1, 0.8, 0.1], [0, 0, 1], [0.8, 0, 0.2], [0, 0.1, 0.9]]
    embeddings = np.array(rows, dtype=np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    labels = np.array([0, 0, 1, 1, -1, -1, -1, -1, -1])
    at_once = attach_outliers(embeddings, labels, threshold=0.5)
    monkeypatch.setattr(app.clustering, "ATTACH_BLOCK", 2)  # 3 blocks of outliers
    assert attach_outliers(embeddings, labels, threshold=0.5).tolist() == at_once.tolist()
    assert at_once.tolist() == [0, 0, 1, 1, 0, 1, -1, 0, -1]


# --- a run with a giant firm ------------------------------------------------------------


def giant_corpus(path: Path) -> Path:
    """A firm of 900 sentences on 3 subjects (300 each) and one of 120 on 2, two calls each."""
    from app.sample import sentence_about

    rng = random.Random(11)
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for firm_id, firm_name, subjects, per_subject in (BIG, SMALL):
            for subject in subjects:
                texts: set[str] = set()
                while len(texts) < per_subject:
                    texts.add(sentence_about(rng, subject, firm_name))
                for i, text in enumerate(sorted(texts)):
                    out.write(json.dumps({"firm_id": firm_id, "firm_name": firm_name, "doc_id": f"{firm_id}_{i % 2}",
                                          "period": f"2024Q{i % 2 + 1}", "sentence": text}) + "\n")
    return path


@pytest.fixture(scope="module")
def giant_run(request, server_url, tmp_path_factory) -> str:
    """URL of a database holding run ``default`` of the giant corpus, capped at 300."""
    folder = tmp_path_factory.mktemp("giant")
    name, url = finished_run(server_url, giant_corpus(folder / "giant.jsonl.gz"), folder,
                             FIRMTOPICS_MAX_FIRM_SENTENCES=str(CAP))
    request.addfinalizer(lambda: drop_database(server_url, name))
    return url


def assignments(url: str, run: str, firm: str) -> list:
    """(sentence_id, text, topic_no, topic_assignment) of each sentence of ``firm`` in ``run``."""
    return fetch(url, "SELECT s.sentence_id, s.text, t.topic_no, st.topic_assignment"
                      " FROM sentence_topics st JOIN runs r USING (run_id) JOIN sentences s USING (sentence_id)"
                      " LEFT JOIN topics t ON t.topic_id = st.topic_id"
                      " WHERE r.name = $1 AND st.firm_id = $2 ORDER BY s.sentence_id", run, firm)


@pytest.mark.results
def test_a_giant_firm_gets_topics_from_its_sample_and_the_rest_join_by_nearness(giant_run):
    rows = assignments(giant_run, "default", "BIG")
    assert len(rows) == 900  # every sentence stored, in a topic or not
    sample = set(firm_sample(900, RunSettings(max_firm_sentences=CAP), "BIG").tolist())
    in_sample = [i in sample for i in range(900)]  # positions in sentence-id order, as the firm is loaded
    for row, sampled in zip(rows, in_sample):
        assert (row["topic_no"] is None) == (row["topic_assignment"] is None)
        if not sampled:  # never clustered: joined its nearest topic, or unassigned
            assert row["topic_assignment"] in ("nearest", None)
    assert {r["topic_assignment"] for r, s in zip(rows, in_sample) if s} >= {"cluster"}
    outside = [r for r, s in zip(rows, in_sample) if not s]
    assert sum(r["topic_assignment"] == "nearest" for r in outside) > len(outside) / 2

    # The topics cover the firm's three subjects: each is what most of some topic's
    # clustered sentences are about.
    by_topic: dict[int, Counter] = {}
    for row in rows:
        if row["topic_assignment"] == "cluster":
            by_topic.setdefault(row["topic_no"], Counter())[subject_of(row["text"])] += 1
    assert {counts.most_common(1)[0][0] for counts in by_topic.values()} == set(BIG[2])

    firm = fetch(giant_run, "SELECT f.status, f.n_sentences, f.quality, f.reason FROM run_firms f"
                            " WHERE f.firm_id = 'BIG'")[0]
    assert firm["status"] == "done" and firm["n_sentences"] == 900
    assert json.loads(firm["quality"])["sample"] == CAP and "sample of 300 of its 900 sentences" in firm["reason"]
    small = fetch(giant_run, "SELECT quality, reason FROM run_firms WHERE firm_id = 'SML'")[0]
    assert "sample" not in json.loads(small["quality"]) and small["reason"] is None
    run = fetch(giant_run, "SELECT settings, quality FROM runs WHERE name = 'default'")[0]
    assert json.loads(run["settings"])["max_firm_sentences"] == CAP
    assert json.loads(run["quality"])["firms"]["firms_sampled"] == 1


@pytest.mark.results
def test_a_second_run_clusters_the_same_sample_and_logs_it(giant_run, monkeypatch, tmp_path, capsys):
    from app.cli import main

    offline_env(monkeypatch, giant_run, tmp_path)
    monkeypatch.setenv("FIRMTOPICS_MAX_FIRM_SENTENCES", str(CAP))
    assert main(["run", "--run", "again"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    sampled = [e for e in events if e.get("event") == "firm_sampled"]
    assert [(e["firm"], e["sentences"], e["sample"]) for e in sampled] == [("BIG", 900, CAP)]

    first, second = assignments(giant_run, "default", "BIG"), assignments(giant_run, "again", "BIG")
    clustered = [{r["sentence_id"] for r in rows if r["topic_assignment"] == "cluster"} for rows in (first, second)]
    assert clustered[0] == clustered[1]
    assert [(r["topic_no"], r["topic_assignment"]) for r in first] == \
        [(r["topic_no"], r["topic_assignment"]) for r in second]


@pytest.mark.results
def test_resuming_with_another_cap_is_refused(giant_run, monkeypatch, tmp_path, capsys):
    offline_env(monkeypatch, giant_run, tmp_path)
    monkeypatch.setenv("FIRMTOPICS_MAX_FIRM_SENTENCES", "400")
    error = one_line_error(capsys, ["run"])
    assert "max_firm_sentences: run has 300, now 400" in error
