"""Interruptions of a real ``python -m app run`` process: SIGTERM and SIGINT (drain, or
drop on a second signal) and SIGKILL at each stage of a run, then resume; and, at the job
level, a stop that comes once every firm has been taken.

The subprocess logs JSON lines on stderr; the tests act on those events (``firm_finished``,
``stage_started``), on the fake LLM server's count of requests in flight, and on what
PostgreSQL shows in ``pg_locks`` and ``pg_stat_activity``. To stop the run *inside* a
database write, the test holds a table lock that the write needs: the write waits,
mid-transaction, and the process is killed right then. No test hook in the program is
needed. The harness (``Job``, ``Database``, ``snapshot``, ...) is in ``support.py``.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import pytest

from app.sample import write_sample_corpus
from support import (
    CORPUS,
    Job,
    check_whole,
    database,
    duplicates,
    fake_llm_process,
    fetch,
    fresh_database,
    job_env,
    llm_env,
    run_in_process,
    snapshot,
    value,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_sample_corpus(tmp_path_factory.mktemp("corpus") / "small.jsonl.gz", **CORPUS)


# --- SIGTERM / SIGINT -------------------------------------------------------------------


@pytest.mark.results
def test_sigterm_stops_taking_firms_drains_the_ones_in_flight_and_exits_3(database_url, tmp_path, corpus):
    with fake_llm_process(latency=1.0) as llm:
        job = Job(job_env(database_url, tmp_path, **llm_env(llm)), "--input", str(corpus))
        job.wait_for("firm_finished")
        sent = job.signal(signal.SIGTERM)
        code = job.finish(60)
    took = time.monotonic() - sent
    assert code == 3, job.tail()
    assert took < 30, f"exited {took:.1f} s after SIGTERM"
    assert "interrupted" in "".join(job.stdout) and "run the same command again to resume" in "".join(job.stdout)
    assert job.find("signal_received", signal="SIGTERM")

    # What was in flight is logged, and every firm in flight was finished, not dropped.
    in_flight = job.wait_for("stop_requested", timeout=1)["in_flight"]
    finished = {e["firm"] for e in job.find("firm_finished")}
    assert in_flight and set(in_flight) <= finished
    assert not job.find("firms_dropped")
    # No new stage after a stop: the theme stage is left to the resume.
    assert not job.find("stage_started", stage="themes")

    check_whole(database_url, "after SIGTERM")
    recorded = {r[0] for r in fetch(database_url, "SELECT firm_id FROM run_firms")}
    assert recorded == finished
    assert value(database_url, "SELECT status FROM runs") in ("interrupted", "firms_done")


@pytest.mark.results
def test_sigterm_before_the_job_starts_also_exits_3(database_url, tmp_path, corpus):
    # During the model load the run's own signal handler is not installed yet.
    job = Job(job_env(database_url, tmp_path), "--input", str(corpus))
    job.wait_for("llm_off")  # next: the model load
    sent = job.signal(signal.SIGTERM)
    code = job.finish(60)
    assert code == 3, job.tail()
    assert time.monotonic() - sent < 30
    assert "firmtopics: error: interrupted" in "".join(job.stderr)
    assert "Traceback" not in "".join(job.stderr)
    assert not job.find("run_started")


# --- interrupted at every stage, then resumed ---------------------------------------------


@pytest.mark.results
def test_interrupted_at_every_stage_then_resumed_gives_the_uninterrupted_result(
    database_url, server_url, tmp_path, corpus, monkeypatch
):
    """One run interrupted four times -- two SIGINTs (the firms in flight dropped); a
    SIGKILL inside a firm's write while LLM requests are pending and the next firm is in
    compute; a SIGKILL in the theme stage; a SIGKILL inside the index build -- and resumed
    after each, ends equal to an uninterrupted run of the same corpus and settings."""
    kills = []
    with fake_llm_process(latency=0.5) as llm:
        env = job_env(database_url, tmp_path, **llm_env(llm))

        # 1. SIGINT right after the first firm is written (the next one is being computed,
        #    or waits for its names), then a second SIGINT at once: the firms in flight
        #    are dropped whole, not drained.
        job = Job(env, "--input", str(corpus))
        job.wait_for("firm_finished")
        job.signal(signal.SIGINT)
        job.wait_for("signal_received", timeout=10)
        sent = job.signal(signal.SIGINT)
        assert job.finish(60) == 3, job.tail()
        assert time.monotonic() - sent < 15
        assert job.find("second_signal", signal="SIGINT")
        dropped = job.wait_for("firms_dropped", timeout=1)["firms"]
        recorded = {r[0] for r in fetch(database_url, "SELECT firm_id FROM run_firms")}
        assert dropped and not recorded & set(dropped)
        assert value(database_url, "SELECT status FROM runs") == "interrupted"
        kills.append(("second SIGINT", len(job.find("firm_finished"))))
        check_whole(database_url, "after a second SIGINT")

        # 2. SIGKILL inside a firm's write, with LLM requests pending and the next firm in
        #    compute: the test holds a lock that the COPY of sentence rows waits for, so the
        #    process dies with the firm's transaction open (its run_firms and topics rows
        #    already inserted) while the next firm waits for its names (the fake server
        #    holds each request 0.5 s) and the one after it is being embedded.
        with database(database_url) as db:
            job = Job(env)
            job.wait_for("stage_started", stage="firms")
            db.call("execute", "BEGIN")
            db.call("execute", "LOCK TABLE sentence_topics IN SHARE MODE")
            job.wait_until(lambda: db.waiting_for("sentence_topics", "RowExclusiveLock"), 120,
                           "the firm's COPY waiting inside its transaction")
            job.wait_until(lambda: llm.stats()["in_flight"] > 0, 120, "LLM requests in flight")
            recorded_before = value(database_url, "SELECT count(*) FROM run_firms")
            job.kill()
            db.call("execute", "ROLLBACK")
            db.wait_until(lambda: not db.others(), 10, "the killed writer's backend to go")
        assert value(database_url, "SELECT count(*) FROM run_firms") == recorded_before
        kills.append(("write, llm, compute", len(job.find("firm_finished"))))
        check_whole(database_url, "killed inside a firm's write")

        # 3. SIGKILL in the theme stage (the remaining firms are processed first).
        job = Job(env)
        job.wait_for("stage_started", stage="themes")
        job.kill()
        kills.append(("themes", len(job.find("firm_finished"))))
        assert value(database_url, "SELECT status FROM runs") == "firms_done"
        check_whole(database_url, "killed in the theme stage")

        # 4. SIGKILL inside the index build: the test holds a lock the first CREATE INDEX
        #    waits for. The killed process's build must not go on alone on the server.
        with database(database_url) as db:
            db.call("execute", "BEGIN")
            db.call("execute", "LOCK TABLE sentence_topics IN ROW EXCLUSIVE MODE")
            job = Job(env)
            job.wait_for("stage_started", stage="index")
            job.wait_until(lambda: db.waiting_for("sentence_topics", "ShareLock"), 60,
                           "the index build waiting for its lock")
            themes_before = fetch(database_url, "SELECT theme_id, name FROM themes ORDER BY 1")
            job.kill()
            db.wait_until(lambda: not db.others(), 10, "the killed index build to stop on the server")
            db.call("execute", "ROLLBACK")
        kills.append(("index", 0))
        assert value(database_url, "SELECT status FROM runs") == "themes_done"
        assert fetch(database_url, "SELECT indexname FROM pg_indexes WHERE indexname LIKE '%hnsw%'") == []
        check_whole(database_url, "killed inside the index build")

        # 5. The last resume finishes; the themes stored before the index stage stand.
        job = Job(env)
        assert job.finish() == 0, job.tail()
        assert "complete" in "".join(job.stdout)
        assert job.find("stage_skipped", stage="themes") and not job.find("stage_started", stage="themes")
        assert fetch(database_url, "SELECT theme_id, name FROM themes ORDER BY 1") == themes_before
        resumed = snapshot(database_url)

        # The uninterrupted reference: same corpus, same settings, same fake LLM.
        with fresh_database(server_url) as reference_url:
            assert run_in_process(monkeypatch, job_env(reference_url, tmp_path, **llm_env(llm)),
                                  "run", "--input", str(corpus)) == 0
            reference = snapshot(reference_url)

    assert [k for k, _ in kills] == ["second SIGINT", "write, llm, compute", "themes", "index"]
    assert resumed["counts"] == reference["counts"]
    assert resumed["firms"] == reference["firms"]
    assert resumed["assignments"] == reference["assignments"]  # same sentence -> topic_no, per firm
    assert resumed["topics"] == reference["topics"]
    assert resumed["themes"] == reference["themes"] and len(reference["themes"]) >= 2
    assert all(linked for _, _, _, linked, _, _ in resumed["topics"].values())
    assert resumed["indexes"] == reference["indexes"] and len(resumed["indexes"]) == 3
    assert resumed["status"] == ["complete"]
    assert duplicates(database_url) == 0


# --- a stop between stages (the job level) ------------------------------------------------


class StoppingNamer:
    """The offline namer, which also requests a stop (as a signal would) while it names
    the topics of ``firm`` or, with ``firm=None``, the first theme."""

    def __init__(self, stop, firm: str | None):
        from app.naming import OfflineNamer

        self._namer, self._stop, self._firm = OfflineNamer(), stop, firm

    def __getattr__(self, name):
        return getattr(self._namer, name)

    @contextlib.asynccontextmanager
    async def for_run(self, pool, run_id):  # itself, bound: the offline namer keeps nothing
        yield self

    async def name_topic(self, topic):
        if topic.firm_id == self._firm:
            self._stop.set()
        return await self._namer.name_topic(topic)

    async def name_theme(self, theme):
        if self._firm is None:
            self._stop.set()
        return await self._namer.name_theme(theme)


@pytest.mark.results
@pytest.mark.parametrize("stop_in, status", [("last firm", "firms_done"), ("theme stage", "themes_done")])
async def test_a_stop_after_the_last_firm_was_taken_starts_no_further_stage(pool, embedder, stop_in, status):
    import anyio

    from app.backend import CPU
    from app.job import run_job
    from app.runs import firms_to_do
    from app.sample import sample_rows
    from app.schema import vector_indexes_present
    from app.settings import RunSettings
    from support import insert_corpus

    # Two firms, the last of them with topics: when its topics are named, every firm has
    # been taken, so the firm stage ends complete and only the job can notice the stop.
    rows = [r for r in sample_rows(firms=2) if r["firm_id"] != "TNY"]
    await insert_corpus(pool, rows)
    async with pool.acquire() as conn:
        last_firm = (await firms_to_do(conn, run_id=0))[-1].firm_id
    stop = anyio.Event()
    namer = StoppingNamer(stop, last_firm if stop_in == "last firm" else None)
    with anyio.fail_after(300):
        outcome = await run_job(pool, RunSettings(), run_name="r", embedder=embedder,
                                backend=CPU, namer=namer, stop=stop)
    assert outcome.status == "interrupted" and stop.is_set()
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT status FROM runs") == status
        assert await conn.fetchval("SELECT count(*) FROM run_firms") == 2  # both drained, none dropped
        themes = await conn.fetchval("SELECT count(*) FROM themes")
        assert (themes == 0) if stop_in == "last firm" else (themes > 0)
        assert await vector_indexes_present(conn, await conn.fetchval("SELECT run_id FROM runs")) == []
