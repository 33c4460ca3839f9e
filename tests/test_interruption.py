"""Interruptions of a real ``python -m app run`` process: SIGTERM and SIGINT (drain, or
drop on a second signal) and SIGKILL at each stage of a run, then resume; and, at the job
level, a stop that comes once every firm has been taken.

The subprocess logs JSON lines on stderr; the tests act on those events (``firm_finished``,
``stage_started``), on the fake LLM server's count of requests in flight, and on what
PostgreSQL shows in ``pg_locks`` and ``pg_stat_activity``. To stop the run *inside* a
database write, the test holds a table lock that the write needs: the write waits,
mid-transaction, and the process is killed right then. No test hook in the program is
needed.

The helpers here (``Job``, ``FakeLLM``, ``Database``, ``snapshot``, ...) are shared with
``test_secrets.py`` and ``test_soak.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import anyio.from_thread
import asyncpg
import pytest

from app.cli import main
from app.sample import write_sample_corpus
from support import TABLES, create_database, drop_database, fetch, with_database

ROOT = Path(__file__).resolve().parents[1]

# The corpus of these tests: five firms of 72 to 96 sentences (UMAP and HDBSCAN both run)
# and one firm too small to cluster. With the fake LLM's names it gives 18 topics and 3
# themes, in about a quarter of the time of the full sample corpus.
CORPUS = {"firms": 5, "sentences_per_subject": 24}


# --- helpers ----------------------------------------------------------------------------


def value(url: str, sql: str, *args):
    return fetch(url, sql, *args)[0][0]


class Database:
    """A connection the test keeps open across a subprocess's life (to hold a lock, or
    to watch ``pg_stat_activity``), on an event loop of its own in a thread."""

    def __init__(self, url: str):
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self.conn = self._portal.call(asyncpg.connect, url)
        self.database = self.call("fetchval", "SELECT current_database()")

    def call(self, method: str, *args):
        return self._portal.call(getattr(self.conn, method), *args)

    def others(self) -> list:
        """The other backends connected to this database."""
        # Inside a transaction PostgreSQL keeps showing the first view of pg_stat_activity.
        self.call("execute", "SELECT pg_stat_clear_snapshot()")
        return self.call(
            "fetch",
            "SELECT pid, state, wait_event_type, query FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )

    def waiting_for(self, table: str, mode: str) -> list:
        """The backends waiting for a ``mode`` lock on ``table`` (one the test holds)."""
        return self.call(
            "fetch",
            "SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " WHERE NOT l.granted AND c.relname = $1 AND l.mode = $2",
            table, mode,
        )

    def wait_until(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.05)

    def close(self) -> None:
        self._portal.call(self.conn.close)
        self._portal_cm.__exit__(None, None, None)


@contextmanager
def database(url: str):
    db = Database(url)
    try:
        yield db
    finally:
        db.close()


class FakeLLM:
    """``tests/fake_llm_server.py`` run standalone, as a process of its own."""

    def __init__(self, *, latency: float = 0.0, error_rate: float = 0.0, api_key: str | None = None,
                 seed: int = 0):
        command = [sys.executable, str(ROOT / "tests" / "fake_llm_server.py"), "--port", "0",
                   "--latency", str(latency), "--error-rate", str(error_rate), "--seed", str(seed)]
        if api_key:
            command += ["--api-key", api_key]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.base_url = self.proc.stdout.readline().strip()
        assert self.base_url.startswith("http://127.0.0.1:"), self.proc.stderr.read()

    def stats(self) -> dict:
        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/stats", timeout=5) as reply:
            return json.load(reply)

    def stop(self) -> dict:
        """Stop the server; returns its final counts."""
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=10)
        lines = [line for line in err.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


@contextmanager
def fake_llm(**kwargs):
    server = FakeLLM(**kwargs)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.stop()


def job_env(database_url: str, tmp_path: Path, **extra: str) -> dict:
    """The environment of a ``python -m app`` subprocess: the test's database, JSON logs,
    offline model; no key unless given."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "XAI_API_KEY", "XAI_BASE_URL")}
    env.update(DATABASE_URL=database_url, LOG_FORMAT="json", FIRMTOPICS_DATA_DIR=str(tmp_path / "data"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def llm_env(server: FakeLLM, key: str = "xai-test-key") -> dict:
    return {"XAI_API_KEY": key, "XAI_BASE_URL": server.base_url, "XAI_MODEL": "fake-model"}


class Job:
    """A ``python -m app run ...`` subprocess; its JSON log events are read as they come."""

    def __init__(self, env: dict, *args: str):
        self.args = args
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "app", "run", *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self._changed = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stderr, True), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stdout, False), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, is_stderr: bool) -> None:
        for line in stream:
            with self._changed:
                (self.stderr if is_stderr else self.stdout).append(line)
                if is_stderr and line.startswith("{"):
                    try:
                        self.events.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def find(self, event: str, **fields) -> list[dict]:
        with self._changed:
            return [e for e in self.events
                    if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())]

    def wait_for(self, event: str, timeout: float = 240, **fields) -> dict:
        """The first log event named ``event`` with ``fields``; fails if the process ends first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [e for e in self.events
                         if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())]
                if found:
                    return found[0]
                if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                    raise AssertionError(f"the run ended (code {self.proc.returncode}) before {event} {fields}:\n"
                                         + self.tail())
                if time.monotonic() > deadline:
                    raise AssertionError(f"no {event} {fields} within {timeout} s:\n" + self.tail())
                self._changed.wait(0.2)

    def wait_until(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"the run ended (code {self.proc.returncode}) before {what}:\n" + self.tail())
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n" + self.tail())
            time.sleep(0.02)

    def signal(self, signum: int) -> float:
        self.proc.send_signal(signum)
        return time.monotonic()

    def finish(self, timeout: float = 300) -> int:
        """Wait for the process to end (and its output to be read); returns its exit code."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the run did not end within {timeout} s:\n" + self.tail()) from None
        for reader in self._readers:
            reader.join(10)
        return code

    def kill(self) -> None:
        """SIGKILL, as a spot instance's end or the OOM killer would."""
        self.proc.kill()
        self.finish(30)

    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def tail(self, lines: int = 30) -> str:
        return "".join(self.stderr[-lines:])


def run_in_process(monkeypatch, env: dict, *argv: str) -> int:
    """``firmtopics`` in this process (the model and UMAP's compiled code are then shared
    with the other in-process runs of the session), with ``env`` as its environment."""
    for key in ("DATABASE_URL", "XAI_API_KEY", "XAI_BASE_URL", "XAI_MODEL"):
        monkeypatch.delenv(key, raising=False)
    for key, val in env.items():
        if key in ("DATABASE_URL", "LOG_FORMAT", "FIRMTOPICS_DATA_DIR") or key.startswith(("XAI_", "FIRMTOPICS_", "DB_")):
            monkeypatch.setenv(key, val)
    return main(list(argv))


# --- what a database holds after a run, for comparisons and invariants -------------------



def duplicates(url: str) -> int:
    """Rows that are there twice: by the natural key of every table of results."""
    checks = [
        "SELECT count(*) - count(DISTINCT (firm_id, doc_id, md5(text))) FROM sentences",
        "SELECT count(*) - count(DISTINCT (run_id, firm_id)) FROM run_firms",
        "SELECT count(*) - count(DISTINCT (run_id, firm_id, topic_no)) FROM topics",
        "SELECT count(*) - count(DISTINCT (run_id, level, theme_no)) FROM themes",
        "SELECT count(*) - count(DISTINCT (run_id, sentence_id)) FROM sentence_topics",
    ]
    return sum(value(url, sql) for sql in checks)


def half_written_firms(url: str) -> list[str]:
    """Firms whose rows do not match their ``run_firms`` record: topics or sentence rows
    of a firm the run has not recorded, or fewer or more than it recorded. (For a
    database holding one run, as every database of these tests does.)"""
    rows = fetch(url, """
        SELECT f.firm_id FROM firms f
        LEFT JOIN run_firms rf ON rf.firm_id = f.firm_id
        WHERE (SELECT count(*) FROM topics t WHERE t.firm_id = f.firm_id) <> coalesce(rf.n_topics, 0)
           OR (SELECT count(*) FROM sentence_topics st WHERE st.firm_id = f.firm_id)
              <> CASE WHEN rf.status IN ('done', 'skipped') THEN rf.n_sentences ELSE 0 END
        ORDER BY 1""")
    return [r["firm_id"] for r in rows]


def snapshot(url: str) -> dict:
    """Everything a run produced, keyed by content rather than by generated ids, so the
    databases of two runs can be compared with ``==``."""
    assignments = fetch(url, """
        SELECT st.firm_id, s.doc_id, s.text, t.topic_no FROM sentence_topics st
        JOIN sentences s USING (sentence_id) LEFT JOIN topics t USING (topic_id)""")
    topics = fetch(url, """
        SELECT t.firm_id, t.topic_no, t.name, t.keywords, t.n_sentences, t.theme_id IS NOT NULL AS linked,
               th.theme_no, t.theme_assignment
        FROM topics t LEFT JOIN themes th USING (theme_id)""")
    return {
        "counts": {t: value(url, f"SELECT count(*) FROM {t}") for t in TABLES},
        "firms": {r["firm_id"]: (r["status"], r["n_sentences"], r["n_topics"], r["n_outliers"])
                  for r in fetch(url, "SELECT * FROM run_firms")},
        "assignments": {(r["firm_id"], r["doc_id"], r["text"]): r["topic_no"] for r in assignments},
        "topics": {(r["firm_id"], r["topic_no"]): tuple(r)[2:] for r in topics},
        "themes": sorted(tuple(r) for r in fetch(url, "SELECT theme_no, name, n_topics, n_firms FROM themes")),
        "indexes": sorted(r[0] for r in fetch(url, "SELECT indexname FROM pg_indexes WHERE indexname LIKE '%hnsw%'")),
        "status": [r[0] for r in fetch(url, "SELECT status FROM runs")],
    }


def check_whole(url: str, where: str) -> None:
    """The invariants that must hold at any moment: no firm half-written, no row twice."""
    assert half_written_firms(url) == [], f"{where}: half-written firms"
    assert duplicates(url) == 0, f"{where}: duplicate rows"


@contextmanager
def fresh_database(server_url: str):
    """The URL of a new, empty database on the test server; dropped afterwards."""
    name = "ft_" + uuid.uuid4().hex[:12]
    create_database(server_url, name)
    try:
        yield with_database(server_url, name)
    finally:
        drop_database(server_url, name)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_sample_corpus(tmp_path_factory.mktemp("corpus") / "small.jsonl.gz", **CORPUS)


# --- SIGTERM / SIGINT -------------------------------------------------------------------


def test_sigterm_stops_taking_firms_drains_the_ones_in_flight_and_exits_3(database_url, tmp_path, corpus):
    with fake_llm(latency=1.0) as llm:
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


def test_interrupted_at_every_stage_then_resumed_gives_the_uninterrupted_result(
    database_url, server_url, tmp_path, corpus, monkeypatch
):
    """One run interrupted four times -- two SIGINTs (the firms in flight dropped); a
    SIGKILL inside a firm's write while LLM requests are pending and the next firm is in
    compute; a SIGKILL in the theme stage; a SIGKILL inside the index build -- and resumed
    after each, ends equal to an uninterrupted run of the same corpus and settings."""
    kills = []
    with fake_llm(latency=0.5) as llm:
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

    async def name_topic(self, topic):
        if topic.firm_id == self._firm:
            self._stop.set()
        return await self._namer.name_topic(topic)

    async def name_theme(self, theme):
        if self._firm is None:
            self._stop.set()
        return await self._namer.name_theme(theme)


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
