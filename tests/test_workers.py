"""Several workers share one run through PostgreSQL (app.claims): three ``firmtopics run``
processes on one database and 12 generated firms, one of them SIGKILLed mid-run; every
firm is done once, no row is written twice, the themes are formed once, and each firm
gets the topics a single worker gives it."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from app.backend import CPU
from app.claims import FirmClaims, release_theme_lock, take_theme_lock, worker_name
from app.job import run_job
from app.naming import OfflineNamer
from app.runs import open_run, workers_in_flight
from app.sample import sample_rows
from app.schema import fix_embedding_dimension
from app.settings import RunSettings
from support import ROOT, bare_run, fetch, insert_corpus, job_env


def twelve_firms() -> list[dict]:
    """The sample's 8 firms and 4 more (another seed, other ids), without the small firm."""
    rows = [r for r in sample_rows() if r["firm_id"] != "TNY"]
    rows += [{**r, "firm_id": "X" + r["firm_id"], "doc_id": "X" + r["doc_id"]}
             for r in sample_rows(seed=8, firms=4) if r["firm_id"] != "TNY"]
    return rows


def environment(database_url: str, tmp_path: Path, name: str) -> dict:
    """A worker's environment: ``job_env`` with a data folder of its own."""
    return job_env(database_url, tmp_path, FIRMTOPICS_DATA_DIR=str(tmp_path / name))


def worker(database_url: str, tmp_path: Path, name: str, run: str = "shared") -> subprocess.Popen:
    """``firmtopics run --run RUN`` as a process of its own. Its output goes to files, so a
    full pipe never blocks it."""
    out = open(tmp_path / f"{name}.out", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "app", "run", "--run", run], cwd=ROOT,
                            env=environment(database_url, tmp_path, name), stdout=out, stderr=subprocess.STDOUT,
                            text=True)


def topics_by_firm(url: str, run: str) -> dict[str, list[tuple]]:
    rows = fetch(url, "SELECT t.firm_id, t.topic_no, t.keywords, t.n_sentences FROM topics t JOIN runs r USING (run_id)"
                      " WHERE r.name = $1 ORDER BY t.firm_id, t.topic_no", run)
    found: dict[str, list[tuple]] = {}
    for r in rows:
        found.setdefault(r["firm_id"], []).append((r["topic_no"], tuple(r["keywords"]), r["n_sentences"]))
    return found


def ingest_twelve_firms(database_url: str, tmp_path: Path) -> Path:
    """Write the twelve firms to a corpus file and ingest it; returns the file."""
    corpus = tmp_path / "twelve.jsonl.gz"
    with gzip.open(corpus, "wt", encoding="utf-8") as out:
        for row in twelve_firms():
            out.write(json.dumps(row) + "\n")
    ingest = subprocess.run([sys.executable, "-m", "app", "ingest", str(corpus)], cwd=ROOT,
                            env=environment(database_url, tmp_path, "ingest"), capture_output=True, text=True)
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    return corpus


def assert_every_firm_done_once(database_url: str, run: str = "shared") -> None:
    assert fetch(database_url, "SELECT status FROM runs WHERE name = $1", run)[0]["status"] == "complete"
    assert fetch(database_url, "SELECT count(*) AS n FROM run_firms")[0]["n"] == 12
    assert fetch(database_url, "SELECT count(*) - count(DISTINCT sentence_id) AS d FROM sentence_topics")[0]["d"] == 0
    assert fetch(database_url, "SELECT count(*) AS n FROM sentence_topics")[0]["n"] == \
        fetch(database_url, "SELECT count(*) AS n FROM sentences")[0]["n"]
    assert fetch(database_url, "SELECT count(DISTINCT theme_no) = count(*) AS once FROM themes WHERE level = 1")[0]["once"]


@pytest.mark.results
def test_three_workers_one_killed_share_a_run(database_url, tmp_path):
    ingest_twelve_firms(database_url, tmp_path)
    workers = [worker(database_url, tmp_path, f"w{i}") for i in range(3)]
    # Kill the first worker once it has written a firm (its claims die with its session).
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if fetch(database_url, "SELECT count(*) AS n FROM run_firms")[0]["n"] >= 2:
            break
        time.sleep(0.5)
    workers[0].send_signal(signal.SIGKILL)
    codes = [w.wait(600) for w in workers]
    outputs = [(tmp_path / f"w{i}.out").read_text()[-3000:] for i in range(3)]
    assert codes[0] == -signal.SIGKILL and codes[1:] == [0, 0], outputs[1:]
    if fetch(database_url, "SELECT status FROM runs WHERE name = 'shared'")[0]["status"] != "complete":
        # The killed worker held the last firms or the theme stage: any worker's next start finishes.
        resumed = worker(database_url, tmp_path, "w3")
        assert resumed.wait(600) == 0
    assert_every_firm_done_once(database_url)
    # Each worker's log says which firms it took: between them, every firm.
    claimed = {json.loads(line)["firm"] for name in ("w0", "w1", "w2", "w3") if (tmp_path / f"{name}.out").exists()
               for line in (tmp_path / f"{name}.out").read_text().splitlines() if '"firm_claimed"' in line}
    assert len(claimed) == 12

    # A worker with other result-changing settings is refused, as a resume is.
    other = subprocess.run([sys.executable, "-m", "app", "run", "--run", "shared"], cwd=ROOT, capture_output=True,
                           text=True, env={**environment(database_url, tmp_path, "other"), "FIRMTOPICS_SEED": "7"})
    assert other.returncode == 2 and "other settings" in other.stderr

    # The same topics a single worker gives each firm.
    alone = worker(database_url, tmp_path, "alone", run="alone")
    assert alone.wait(600) == 0, (tmp_path / "alone.out").read_text()[-3000:]
    assert topics_by_firm(database_url, "shared") == topics_by_firm(database_url, "alone")


@pytest.mark.results
def test_two_workers_ride_out_every_connection_dropped_at_once(database_url, tmp_path):
    # A failover as the workers see it: every session of the database ends at once, the
    # claims with them, while both workers hold firms. Each takes its claims again (or
    # gives up one the other took first) and the run completes with every firm once.
    ingest_twelve_firms(database_url, tmp_path)
    workers = [worker(database_url, tmp_path, f"w{i}") for i in range(2)]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        holders = fetch(database_url, "SELECT count(DISTINCT pid) AS n FROM pg_locks WHERE locktype = 'advisory'"
                                      " AND objsubid = 2 AND granted")[0]["n"]
        if holders == 2:  # both workers hold a claim
            break
        time.sleep(0.2)
    dropped = fetch(database_url, "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity"
                                  " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                                  " AND backend_type = 'client backend'")[0]["n"]
    assert dropped >= 2
    codes = [w.wait(600) for w in workers]
    logs = [(tmp_path / f"w{i}.out").read_text() for i in range(2)]
    assert codes == [0, 0], [log[-3000:] for log in logs]
    assert all('"lock_connection_replaced"' in log for log in logs)  # each saw its claims connection go
    assert_every_firm_done_once(database_url)


async def test_a_firm_is_claimed_by_one_worker_at_a_time(pool):
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO firms (firm_id) VALUES ('A'), ('B')")
        run_id = await bare_run(conn)
        await conn.execute("INSERT INTO run_firms (run_id, firm_id, status, n_sentences, n_topics, n_outliers)"
                           " VALUES ($1, 'B', 'done', 0, 0, 0)", run_id)
    async with FirmClaims(pool, run_id) as first, FirmClaims(pool, run_id) as second:
        assert await first.take("A") and not await second.take("A")  # held by the first worker
        async with pool.acquire() as conn:  # what status shows: which worker holds which firm
            held = await workers_in_flight(conn, run_id)
        assert [(h["worker"], h["firm_id"]) for h in held] == [(worker_name(), "A")]
        assert not await first.take("B")  # recorded already: nobody takes it
        await first.release("A")
        assert await second.take("A")
    async with FirmClaims(pool, run_id) as third:  # leaving the block released every claim
        assert await third.take("A")


async def test_two_workers_at_the_theme_stage_at_once_one_runs_it(pool):
    async with pool.acquire() as one, pool.acquire() as two:
        assert await take_theme_lock(one, 7) and not await take_theme_lock(two, 7)
        assert await take_theme_lock(two, 8)  # another run's theme stage is free
        await release_theme_lock(one, 7)
        assert await take_theme_lock(two, 7)
        await release_theme_lock(two, 7)
        await release_theme_lock(two, 8)


async def test_a_claim_another_worker_took_during_a_reconnect_is_given_up(pool):
    # A failover ends the claims connection and its locks with it. The worker takes its
    # claims again on a new connection, except one another worker took meanwhile.
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO firms (firm_id) VALUES ('A'), ('B'), ('C')")
        run_id = await bare_run(conn)
    async with FirmClaims(pool, run_id) as first, FirmClaims(pool, run_id) as second:
        assert await first.take("A") and await first.take("C")
        async with pool.acquire() as conn:
            holder = await conn.fetchval("SELECT DISTINCT pid FROM pg_locks WHERE locktype = 'advisory'"
                                         " AND objsubid = 2 AND classid = $1::oid", run_id)
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", holder)
        assert await second.take("A")  # the first worker's session, and its claims, are gone
        assert await first.take("B")  # a new connection: C is taken again, A is the second's now
        assert first.held == {"B", "C"} and second.held == {"A"}
        assert not await second.take("C")


async def test_a_stopped_worker_leaves_the_run_running_while_others_hold_firms(pool, embedder):
    # A spot loss with notice drains one worker; while other workers hold firms of the run,
    # the run is theirs and stays "running" rather than "interrupted".
    await insert_corpus(pool, [r for r in sample_rows(firms=2) if r["firm_id"] != "TNY"])
    async with pool.acquire() as conn:
        await fix_embedding_dimension(conn, embedder.dimension)
        run = await open_run(conn, "r", RunSettings(), embedding_dim=embedder.dimension, backend={})
        firm = await conn.fetchval("SELECT min(firm_id) FROM firms")
    stop = anyio.Event()
    stop.set()

    async def stopped_worker() -> str:
        outcome = await run_job(pool, RunSettings(), run_name="r", embedder=embedder, backend=CPU,
                                namer=OfflineNamer(), stop=stop)
        assert outcome.status == "interrupted"
        return await pool.fetchval("SELECT status FROM runs WHERE run_id = $1", run.run_id)

    assert await stopped_worker() == "interrupted"  # alone: the run is interrupted
    async with FirmClaims(pool, run.run_id) as other:
        assert await other.take(firm)
        # Resumed (the run shows "running" again), then stopped while the other works.
        assert await stopped_worker() == "running"


def test_workers_ingesting_the_same_file_at_once_store_it_once(database_url, tmp_path):
    # Workers each given the same --input read the whole file; the rows are stored once.
    corpus = tmp_path / "twelve.jsonl.gz"
    with gzip.open(corpus, "wt", encoding="utf-8") as out:
        for row in twelve_firms():
            out.write(json.dumps(row) + "\n")
    ingests = [subprocess.Popen([sys.executable, "-m", "app", "ingest", str(corpus)], cwd=ROOT,
                                env=environment(database_url, tmp_path, f"i{i}"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for i in range(3)]
    assert [p.wait(300) for p in ingests] == [0, 0, 0], [p.stderr.read()[-2000:] for p in ingests]
    assert fetch(database_url, "SELECT count(*) AS n FROM sentences")[0]["n"] == len(
        {(r["firm_id"], r["doc_id"], r["sentence"]) for r in twelve_firms()})
    assert fetch(database_url, "SELECT count(*) AS n FROM firms")[0]["n"] == 12
