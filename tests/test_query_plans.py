"""Every filter the reading commands apply to a large table is served by an index.

The commands' own queries are recorded as they run (asyncpg's query logger), on a
synthetic run of 20,000 sentences (``tests/synthetic_run.py``) whose themes and vector
indexes the program made, and each is explained again with sequential scans switched
off. That is fair here, and the only way to ask this question of a small database: on
a few thousand rows a scan is cheaper and the planner rightly takes it, while on tens of
millions, where a filter keeps one firm, topic, theme or run among many, it takes an
index when one serves the filter. With scans switched off the planner shows which index
that is, and where none serves the filter it still plans a sequential scan (PostgreSQL
plans one when nothing else can answer): so a scan of a large table in such a plan is a
missing index.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import anyio
import asyncpg
import numpy as np
import pytest

from app.database import init_connection, open_database
from app.naming import OfflineNamer
from app.read.export import TABLES
from app.read.search import nearest
from app.read.show import firm_detail, theme_detail, topic_detail
from app.read.status import status_detail
from app.read.trends import trend_rows
from app.runs import set_status
from app.schema import build_vector_indexes
from app.settings import RunSettings, Settings
from app.themes import run_theme_stage
from support import create_database, drop_database, with_database
from synthetic_run import write_synthetic_run

LARGE = {"sentence_topics", "sentences", "topics", "documents"}  # tables that grow with the corpus


@dataclass(frozen=True)
class Run:
    """The synthetic run's database and what the commands are asked about."""

    url: str
    run_id: int
    firm: str  # the largest firm
    top_theme: int
    fine_theme: int
    topic: int


@pytest.fixture(scope="module")
async def run(server_url, embedder, tmp_path_factory) -> Run:
    name = "ft_plans_" + uuid.uuid4().hex[:10]
    await anyio.to_thread.run_sync(create_database, server_url, name)
    url = with_database(server_url, name)
    settings = Settings.from_env({"DATABASE_URL": url, "LOG_FORMAT": "json",
                                  "FIRMTOPICS_DATA_DIR": str(tmp_path_factory.mktemp("unused"))})
    async with open_database(settings) as pool:
        written = await write_synthetic_run(pool, 20_000)
        await run_theme_stage(pool, written.run_id, RunSettings(), embedder, OfflineNamer())
        async with pool.acquire() as conn:
            await build_vector_indexes(conn, written.run_id)
            await set_status(conn, written.run_id, "complete")
            picks = [await conn.fetchval(sql) for sql in (
                "SELECT theme_id FROM themes WHERE parent_theme_id IS NULL ORDER BY n_topics DESC, theme_id LIMIT 1",
                "SELECT theme_id FROM themes WHERE level = 1 ORDER BY n_topics DESC, theme_id LIMIT 1",
                "SELECT topic_id FROM topics ORDER BY n_sentences DESC, topic_id LIMIT 1")]
    yield Run(url, written.run_id, written.largest_firm, *picks)
    await anyio.to_thread.run_sync(drop_database, server_url, name)


@dataclass(frozen=True)
class Scan:
    """One scan of a table in a plan."""

    node: str  # Seq Scan, Index Scan, Index Only Scan, Bitmap Heap Scan, ...
    table: str
    indexes: frozenset[str]  # the index it walks (a bitmap heap scan: those of its bitmap)
    bounded: bool  # it reads only what an index condition keeps, or the nearest rows of a vector index


def _bitmap_indexes(plan: dict) -> set[str]:
    """The indexes of the bitmap index scans under a bitmap heap scan."""
    own = {plan["Index Name"]} if plan["Node Type"] == "Bitmap Index Scan" else set()
    return own.union(*(_bitmap_indexes(below) for below in plan.get("Plans", [])))


def _scans(plan: dict) -> list[Scan]:
    """Every scan of a table in a JSON plan. A bitmap heap scan reads what its bitmap index
    scans found, each by an index condition; a vector index hands up rows by distance
    (its ``Order By``) until the limit is reached."""
    found = []
    if "Relation Name" in plan:
        bitmap = plan["Node Type"] == "Bitmap Heap Scan"
        indexes = _bitmap_indexes(plan) if bitmap else {plan["Index Name"]} if "Index Name" in plan else set()
        found.append(Scan(plan["Node Type"], plan["Relation Name"], frozenset(indexes),
                          bitmap or "Index Cond" in plan or "Order By" in plan))
        if bitmap:
            return found
    for below in plan.get("Plans", []):
        found += _scans(below)
    return found


async def _plans(url: str, command) -> list[tuple[str, list]]:
    """Run ``command(pool, conn)`` on a pool whose connections record every query; return
    each query the command ran (its text and the scans of its plan, sequential scans off)."""
    queries: list[tuple[str, tuple]] = []

    async def recording(conn: asyncpg.Connection) -> None:
        await init_connection(conn)
        conn.add_query_logger(lambda q: queries.append((q.query, q.args)))

    pool = await asyncpg.create_pool(url, min_size=1, max_size=2, init=recording)
    try:
        async with pool.acquire() as conn:
            await command(pool, conn)
        # Queries only: not the SET statements, nor asyncpg's own (its type lookups, and the
        # reset of a connection given back to the pool, several statements in one).
        ran = [(sql, args) for sql, args in queries if sql.lstrip()[:4].upper() in ("SELE", "WITH")
               and "typeinfo" not in sql and ";" not in sql.strip().rstrip(";")]
        plans = []
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            for sql, args in ran:
                plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
                plans.append((" ".join(sql.split()), _scans(json.loads(plan)[0]["Plan"])))
        return plans
    finally:
        await pool.close()


def _nodes(plan: dict) -> list[str]:
    """The type of every node of a JSON plan."""
    return [plan["Node Type"]] + [node for below in plan.get("Plans", []) for node in _nodes(below)]


def _vector(seed: int = 0) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    return vector / np.linalg.norm(vector)


# The reading commands whose filters keep a small part of a large table (a firm, a theme,
# a topic, the nearest rows), each with the indexes that serve those filters. ``trends``
# reads the counts the theme stage wrote, no large table. ``export`` reads every row of
# the run (checked below); without a firm, a search of topics or themes may read them all (see the
# test of the sentences' search).
FIRM_TOPICS = "topics_run_id_firm_id_topic_no_key"  # a run's topics, or one firm's (the unique key)
SENTENCE_HNSW = "sentence_topics_embedding_hnsw_run_1"
SERVED_BY = {
    "status": {FIRM_TOPICS, "sentences_firm_sentence"},  # the run's topics; the firms with a sentence
    "show firm": {FIRM_TOPICS},
    "show theme (top)": {"topics_theme", "sentences_pkey"},  # the topics under it; their evidence
    "show theme (fine)": {"topics_theme", "sentences_pkey"},
    "show topic": {"sentence_topics_topic", "sentences_pkey"},  # its sentences
    "search theme": set(),
    "search theme --firm": {FIRM_TOPICS},
    "search topic": set(),
    "search topic --firm": {FIRM_TOPICS},
    "search sentence": {SENTENCE_HNSW},
    "search sentence --firm": {SENTENCE_HNSW},
    "trends": set(),
}


def _selective(run: Run) -> dict:
    """The commands of ``SERVED_BY``, each as the command calls its work."""
    commands = {
        "status": lambda pool, conn: status_detail(pool, "default"),
        "show firm": lambda pool, conn: firm_detail(conn, run.firm, "default"),
        "show theme (top)": lambda pool, conn: theme_detail(conn, run.top_theme),
        "show theme (fine)": lambda pool, conn: theme_detail(conn, run.fine_theme),
        "show topic": lambda pool, conn: topic_detail(conn, run.topic),
        "trends": lambda pool, conn: trend_rows(conn, "default"),
    }
    for level in ("theme", "topic", "sentence"):
        for firm in (None, run.firm):
            commands[f"search {level}{' --firm' if firm else ''}"] = (
                lambda pool, conn, level=level, firm=firm: nearest(conn, _vector(), run_id=run.run_id, level=level,
                                                                   firm_id=firm))
    return commands


@pytest.mark.results
async def test_the_reading_commands_filters_are_served_by_their_indexes(run):
    """Each command's filters on a large table go through the indexes that serve them, and
    no query of it reads a large table whole."""
    assert run.run_id == 1  # SENTENCE_HNSW is run 1's
    whole, missing, ran = [], [], 0
    for name, command in _selective(run).items():
        used = set()
        for sql, scans in await _plans(run.url, command):
            ran += 1
            used |= {index for scan in scans if scan.table in LARGE for index in scan.indexes}
            whole += [f"{name}: {scan.node} of {scan.table} in {sql[:120]}" for scan in scans
                      if not scan.bounded and scan.table in LARGE]
        if not SERVED_BY[name] <= used:
            missing.append(f"{name}: {sorted(SERVED_BY[name] - used)} not used (used: {sorted(used)})")
    assert ran >= 25  # the commands' queries were seen
    assert not whole, "\n".join(whole)
    assert not missing, "\n".join(missing)


@pytest.mark.results
async def test_searching_sentences_walks_their_vector_index(run):
    """Sentences are the rows a search cannot read in full. (Here 513 topics and 31 themes
    are cheaper to sort than to walk a graph for, and the planner sorts them; at 200,000
    sentences, 5,128 topics, it walks the topics' index: docs/benchmarks.md, section 10.)"""
    plans = await _plans(run.url, lambda pool, conn: nearest(conn, _vector(), run_id=run.run_id, level="sentence"))
    indexes = {index for _, scans in plans for scan in scans for index in scan.indexes}
    assert SENTENCE_HNSW in indexes, plans


@pytest.mark.results
async def test_export_streams_a_runs_sentences_in_the_order_of_an_index(run):
    """The sentences file is read in sentence order through the primary key (run,
    sentence): no sort, which at tens of millions of rows would spill gigabytes of
    vectors to disk before the first row came out."""
    conn = await asyncpg.connect(run.url)
    try:
        await init_connection(conn)
        sql = next(sql for stem, sql, _ in TABLES if stem == "sentences")
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, run.run_id))[0]["Plan"]
    finally:
        await conn.close()
    assert Scan("Index Scan", "sentence_topics", frozenset({"sentence_topics_pkey"}), True) in _scans(plan), plan
    assert not [node for node in _nodes(plan) if "Sort" in node], plan
