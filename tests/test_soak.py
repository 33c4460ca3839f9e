"""Soak: many small firms, an LLM that fails a quarter of its requests, and a SIGKILL
every few seconds until the run completes. Not in the default suite; run it with

    python -m pytest -m soak tests/test_soak.py -s

It prints firms done, kills survived (by the stage each kill hit), duplicate rows and
rows lost -- both must be 0 -- and how many sentence -> topic assignments differ from an
uninterrupted run of the same corpus (must be 0 too).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import anyio.from_thread
import pytest

from app.sample import FIRMS, sample_rows
from fake_llm_server import FakeLLMServer, ok, rate_limited, server_error
from support import Job, duplicates, fetch, fresh_database, half_written_firms, job_env, run_in_process, value

N_FIRMS = int(os.environ.get("SOAK_FIRMS", "60"))
FIRM_KILLS = int(os.environ.get("SOAK_FIRM_KILLS", "20"))  # random kills in the firm stage, at most
LATE_KILLS = int(os.environ.get("SOAK_LATE_KILLS", "2"))  # kills in the theme stage, and as many in the index build
SEED = int(os.environ.get("SOAK_SEED", "1"))


class FlakyLLM(FakeLLMServer):
    """The fake LLM, answering 20% of requests with a 5xx and 5% with a 429 (Retry-After)."""

    def _unscripted(self):
        draw = self._random.random()
        if draw < 0.20:
            return server_error(self._random.choice((500, 502, 503, 504)))
        if draw < 0.25:
            return rate_limited(retry_after=0.5)
        return ok()


def soak_corpus(path: Path, n_firms: int) -> Path:
    """``n_firms`` generated firms of 48 to 64 sentences (every tenth one too small to
    cluster), each a sample firm's subjects in sentences of its own."""
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for k in range(n_firms):
            template_id, name, _ = FIRMS[k % len(FIRMS)]
            rows = [r for r in sample_rows(seed=1000 + k, sentences_per_subject=16, firms=k % len(FIRMS) + 1)
                    if r["firm_id"] == template_id]
            if k % 10 == 9:
                rows = rows[:5]
            for row in rows:
                out.write(json.dumps({**row, "firm_id": f"F{k:03d}", "firm_name": f"{name} #{k}",
                                      "doc_id": f"F{k:03d}_{row['doc_id']}"}) + "\n")
    return path


def assignments(url: str) -> dict:
    rows = fetch(url, "SELECT st.firm_id, s.doc_id, s.text, t.topic_no FROM sentence_topics st"
                      " JOIN sentences s USING (sentence_id) LEFT JOIN topics t USING (topic_id)")
    return {(r["firm_id"], r["doc_id"], r["text"]): r["topic_no"] for r in rows}


def rows_lost(url: str, corpus_rows: int) -> dict:
    """What should be in the database and is not."""
    return {
        "sentences not ingested": corpus_rows - value(url, "SELECT count(*) FROM sentences"),
        "firms not recorded": value(url, "SELECT count(*) FROM firms f WHERE NOT EXISTS"
                                         " (SELECT 1 FROM run_firms r WHERE r.firm_id = f.firm_id)"),
        "sentences without their result": value(url, """
            SELECT count(*) FROM sentences s JOIN run_firms r USING (firm_id)
            WHERE r.status IN ('done', 'skipped')
              AND NOT EXISTS (SELECT 1 FROM sentence_topics st WHERE st.sentence_id = s.sentence_id)"""),
        "topics without a theme": value(url, "SELECT count(*) FROM topics WHERE theme_id IS NULL")
        if value(url, "SELECT count(*) FROM themes") else 0,
        "half-written firms": len(half_written_firms(url)),
    }


@pytest.mark.results
@pytest.mark.soak
def test_random_sigkills_until_the_run_completes(database_url, server_url, tmp_path, monkeypatch):
    rng = random.Random(SEED)
    corpus = soak_corpus(tmp_path / "soak.jsonl.gz", N_FIRMS)
    with gzip.open(corpus, "rt") as f:
        corpus_rows = sum(1 for _ in f)
    started = time.monotonic()
    kills: Counter = Counter()
    statuses: dict = {"firms": [], "themes": [], "index": []}  # the run's status after each kill
    late_kills = ["themes"] * LATE_KILLS + ["index"] * LATE_KILLS
    processes = 0

    with anyio.from_thread.start_blocking_portal() as portal:
        llm = FlakyLLM(latency=0.2, seed=SEED, record=False)
        portal.call(llm.start)
        try:
            env = job_env(database_url, tmp_path, XAI_API_KEY="xai-soak", XAI_BASE_URL=llm.base_url,
                          XAI_MODEL="fake-model")
            while True:
                processes += 1
                job = Job(env, "--input", str(corpus))  # the same command every time, as an entrypoint would
                try:
                    first = job.wait_for("stage_started", timeout=600)["stage"]
                except AssertionError:
                    first = None  # it ended before any stage: checked below
                kill = False
                if first == "firms" and kills["firms"] < FIRM_KILLS:
                    time.sleep(rng.uniform(0.5, 6.0))  # somewhere in the firm stage
                    kill = True
                elif first is not None and late_kills:
                    # The theme and index stages take a second or two: kill right in them.
                    try:
                        job.wait_for("stage_started", stage=late_kills[0], timeout=600)
                        time.sleep(rng.uniform(0.0, 0.2))
                        kill = True
                    except AssertionError:
                        pass  # the stage did not come (the run ended)
                if kill and job.proc.poll() is None:
                    stage = job.find("stage_started")[-1]["stage"]
                    job.kill()
                    kills[stage] += 1
                    if late_kills and stage == late_kills[0]:
                        late_kills.pop(0)
                    statuses[stage].append(value(database_url, "SELECT status FROM runs"))
                    assert half_written_firms(database_url) == [] and duplicates(database_url) == 0
                    continue
                code = job.finish(600)
                assert code == 0, job.tail()
                break
        finally:
            served = llm.stats()
            portal.call(llm.stop)
    wall = time.monotonic() - started

    with fresh_database(server_url) as reference_url:
        assert run_in_process(monkeypatch, job_env(reference_url, tmp_path), "run", "--input", str(corpus)) == 0
        reference = assignments(reference_url)

    resumed = assignments(database_url)
    differing = sum(1 for key in reference.keys() | resumed.keys() if reference.get(key) != resumed.get(key))
    firms = {r["status"]: r["n"] for r in fetch(database_url,
                                                "SELECT status, count(*) AS n FROM run_firms GROUP BY status")}
    lost = rows_lost(database_url, corpus_rows)
    usage = json.loads(value(database_url, "SELECT llm_usage FROM runs"))
    figures = {
        "firms": N_FIRMS, "sentences": corpus_rows, "firms done": firms.get("done", 0),
        "firms skipped": firms.get("skipped", 0), "firms failed": firms.get("failed", 0),
        "processes": processes, "kills survived": kills.total(), "kills by stage": dict(kills),
        "run status after the kills in the theme stage": statuses["themes"],
        "run status after the kills in the index build": statuses["index"],
        "duplicate rows": duplicates(database_url), "rows lost": sum(lost.values()), "lost by kind": lost,
        "assignments differing from an uninterrupted run": differing,
        "LLM requests served": served["requests"], "topics named from keywords (LLM gave up)":
            value(database_url, "SELECT count(*) FROM topics WHERE name_source = 'keywords'"),
        "last process llm usage": {k: usage.get(k) for k in ("requests", "retries", "failures")},
        "themes": value(database_url, "SELECT count(*) FROM themes"), "wall s": round(wall, 1),
    }
    print("\nSOAK " + json.dumps(figures, indent=2))
    assert value(database_url, "SELECT status FROM runs") == "complete"
    assert figures["duplicate rows"] == 0 and figures["rows lost"] == 0 and differing == 0
    assert firms.get("done", 0) + firms.get("skipped", 0) == N_FIRMS
