"""The ``firmtopics`` command end to end, on a real PostgreSQL with the real model:
``run --input`` on the generated corpus (always) and on real earnings-call sentences
(when the shared research data is present), the demo as a subprocess, and the exit codes
and one-line errors of the contract."""

import os
import subprocess
import sys

import pytest
from threadpoolctl import threadpool_info

from app.cli import main
from support import TABLES, fetch, one_line_error


def table_counts(url):
    return {t: fetch(url, f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in TABLES}


def check_finished_run(url, n_firms):
    """The invariants of a finished run, read back from the database."""
    states = fetch(url, "SELECT firm_id, status, reason FROM run_firms")
    assert len(states) == n_firms
    assert {s["status"] for s in states} <= {"done", "skipped"}
    assert all(s["reason"] for s in states if s["status"] == "skipped")
    # Every sentence stored once, with its embedding, in the run's table.
    assert fetch(url, "SELECT count(*) AS n FROM sentences")[0]["n"] == \
        fetch(url, "SELECT count(DISTINCT sentence_id) AS n FROM sentence_topics WHERE embedding IS NOT NULL")[0]["n"]
    assert fetch(url, "SELECT count(*) AS n FROM (SELECT sentence_id FROM sentence_topics"
                      " GROUP BY run_id, sentence_id HAVING count(*) > 1) d")[0]["n"] == 0
    # Topics named, embedded and linked to themes; themes named and embedded.
    topics = fetch(url, "SELECT name, summary, name_source, theme_id, embedding IS NOT NULL AS e FROM topics")
    assert topics and all(t["name"] and t["summary"] and t["e"] for t in topics)
    assert all(t["name_source"] == "keywords" for t in topics)
    assert all(t["theme_id"] is not None for t in topics)
    themes = fetch(url, "SELECT name, embedding IS NOT NULL AS e FROM themes")
    assert len(themes) >= 2 and all(t["name"] and t["e"] for t in themes)
    # The hierarchy joins both ways: theme -> topics -> sentences -> firm.
    assert fetch(url, "SELECT count(*) AS n FROM themes th JOIN topics t USING (theme_id)"
                      " JOIN sentence_topics st USING (topic_id) JOIN sentences s USING (sentence_id)"
                      " JOIN firms f ON f.firm_id = s.firm_id")[0]["n"] > 0
    # Quality measured and stored: every clustered firm's figures, and the run's.
    assert all(r["quality"] for r in fetch(url, "SELECT quality FROM run_firms WHERE status = 'done'"))
    quality = fetch(url, "SELECT quality FROM runs")[0]["quality"]
    assert '"largest_theme_share"' in quality and '"unlinked": 0' in quality
    # A sentence in a topic says how it got there; a sentence in none says nothing.
    assert fetch(url, "SELECT count(*) AS n FROM sentence_topics"
                      " WHERE (topic_id IS NULL) <> (topic_assignment IS NULL)")[0]["n"] == 0
    # Sentence embeddings in 16 bits (halfvec), topics' and themes' in 32 (vector).
    types = fetch(url, "SELECT attrelid::regclass::text AS t, format_type(atttypid, atttypmod) AS type"
                       " FROM pg_attribute WHERE attname = 'embedding'"
                       " AND attrelid = ANY('{sentence_topics,topics,themes}'::regclass[])")
    assert {r["t"]: r["type"] for r in types} == {
        "sentence_topics": "halfvec(384)", "topics": "vector(384)", "themes": "vector(384)"}
    indexes = {r["indexname"] for r in fetch(url, "SELECT indexname FROM pg_indexes WHERE indexname LIKE '%hnsw%'")}
    run_id = fetch(url, "SELECT run_id FROM runs")[0]["run_id"]
    assert indexes == {f"{table}_embedding_hnsw_run_{run_id}" for table in ("sentence_topics", "topics", "themes")}
    assert fetch(url, "SELECT status FROM runs")[0]["status"] == "complete"


def run_twice(url, corpus, capsys, n_firms):
    assert main(["run", "--input", str(corpus)]) == 0
    out = capsys.readouterr().out
    assert "complete" in out
    check_finished_run(url, n_firms)
    before = table_counts(url)

    assert main(["run", "--input", str(corpus)]) == 0  # same file again, finished run
    out = capsys.readouterr().out
    assert "0 sentences added" in out and "already complete: nothing to do" in out
    assert table_counts(url) == before


@pytest.mark.results
def test_run_end_to_end_on_the_generated_corpus(env, sample_corpus, capsys):
    run_twice(env, sample_corpus, capsys, n_firms=9)
    assert main(["status"]) == 0
    status = capsys.readouterr().out
    assert "complete" in status and "8 done, 1 skipped, 0 failed, 0 left" in status
    # The run's quality figures, stored with it and shown at a glance.
    assert "quality: 8 firms" in status and "unassigned" in status and "themes:" in status
    # A run keeps OpenBLAS on one thread (app/job.py says why).
    assert {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"} == {1}


@pytest.mark.results
def test_run_end_to_end_on_real_earnings_calls(env, ectsum_subset, capsys):
    run_twice(env, ectsum_subset, capsys, n_firms=4)


@pytest.mark.results
def test_demo_runs_on_a_fresh_machine_with_no_settings(tmp_path):
    # A subprocess with no DATABASE_URL and no key: the embedded server, offline names.
    environment = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "XAI_API_KEY")}
    environment["FIRMTOPICS_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run([sys.executable, "-m", "app", "demo"], capture_output=True, text=True, timeout=900,
                          env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run 'demo' complete: 8 done, 1 skipped, 0 failed, 0 left" in done.stdout
    assert "themes found:" in done.stdout and "firmtopics status --run demo" in done.stdout


def test_input_errors_exit_2_with_one_clear_line(env, tmp_path, capsys):
    assert "no-such.jsonl" in one_line_error(capsys, ["ingest", str(tmp_path / "no-such.jsonl")])
    (tmp_path / "corpus.txt").write_text("hello")
    assert "corpus.txt" in one_line_error(capsys, ["ingest", str(tmp_path / "corpus.txt")])
    assert main(["frobnicate"]) == 2


def test_settings_errors_exit_2(env, monkeypatch, capsys):
    monkeypatch.setenv("LLM_CONCURRENCY", "lots")
    assert "LLM_CONCURRENCY" in one_line_error(capsys, ["status"])


def test_unreachable_database_exits_1_without_the_password(env, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone:hunter2-secret@127.0.0.1:1/nothing")
    line = one_line_error(capsys, ["status"], code=1)
    assert "cannot connect to the database" in line
    assert "hunter2-secret" not in line


@pytest.mark.results
def test_resuming_with_other_settings_exits_2(env, sample_corpus, monkeypatch, capsys):
    assert main(["ingest", str(sample_corpus)]) == 0
    monkeypatch.setenv("FIRMTOPICS_MIN_FIRM_SENTENCES", "100000")  # every firm skipped: quick
    assert main(["run"]) == 0
    monkeypatch.setenv("FIRMTOPICS_SEED", "1")
    line = one_line_error(capsys, ["run"])
    assert "seed: run has 42, now 1" in line


# The command as installed (app.cli.console): its exit code is main's, and what is left
# at the end is frozen out of the garbage collector, so the exit skips collecting it.
CONSOLE_EXIT = """
import atexit, gc, sys
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0))
sys.argv = ["firmtopics", "frobnicate"]
from app.cli import console
console()
"""


def test_the_console_command_exits_with_mains_code_its_leftovers_frozen():
    done = subprocess.run([sys.executable, "-c", CONSOLE_EXIT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2  # a usage error, as main returns it
    assert "frozen at exit: True" in done.stdout
