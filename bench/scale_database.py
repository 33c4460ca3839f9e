"""The database part of a large study, on synthetic data: ``python bench/scale.py
--sentences N``.

A run's firm stage over N synthetic sentences is written straight into the database
(``tests/synthetic_run.py``: no model; firms of 200 to 4,000 sentences, a topic per 39
sentences, binary COPY). Then the program's own later stages run on it, each timed:

* ``themes``: ``app.themes.run_theme_stage`` (topics represented by their sentences'
  centres, Ward, the levels above, offline names; the sentences in no topic attached to
  their nearest theme inside it, as in a run) and the run's quality figures, with the
  model loaded as the job has it;
* ``attaching``: that attaching alone (``attach_sentences_to_themes``), once more;
* ``indexes``: ``app.schema.build_vector_indexes``, the HNSW indexes and ANALYZE;
* ``periods``: what ``trends`` reads, the counts of each theme per period kept by the
  theme stage (``app.read.trends.trend_rows``), side by side with the aggregation of every
  sentence of the run that the ``theme_periods`` view made before it read those counts
  (each the fastest of three), and the counting itself (``count_theme_periods``);
* each search below with the model loaded already (``app.read.search.search`` given the
  embedder): what a search costs the database, apart from starting Python and loading
  the model, which do not grow with the run.

Then each reading command, as a user runs it (``python -m app ...``, the whole process
timed: start, imports, the model where the command loads one, the queries, the output):
``status``, ``search`` at every level with and without ``--firm`` (the largest firm),
``show firm`` (the largest), ``show theme`` (the largest top-level theme), ``show topic``
(the largest topic), ``trends``, ``export`` and ``report``.

Every step is a process of its own, so each ``peak_rss_gb`` (from ``wait4``) is its own.
One JSON line each: ``what``, ``seconds``, ``peak_rss_gb``, and where it says more
(counts; ``bytes`` written by export and report). The first line is the load (``load``),
the last the database's sizes (``sizes``: rows, and bytes of each table's heap, TOAST,
and each index, from ``pg_relation_size``/``pg_total_relation_size``).

The database is ``DATABASE_URL`` when set (an empty one: the run is written into it),
else an embedded PostgreSQL in a temporary folder, deleted at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCALE = Path(__file__).resolve().parent / "scale.py"
RUN = "default"
SEARCH_TEXT = "supply chain costs"
STAGES = ("themes", "attaching", "indexes", "periods")
GB = 2**20  # ru_maxrss is in KiB


def child(argv: list[str], env: dict, out_dir: Path) -> tuple[float, float, str]:
    """Run ``argv`` to its end; returns (wall seconds, peak resident GB, stdout).

    The child's own peak comes from ``wait4``, so it is never mixed with this process's
    or an earlier child's. A child that fails ends the benchmark with its stderr."""
    stdout, stderr = out_dir / "stdout", out_dir / "stderr"
    started = time.perf_counter()
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if proc.returncode:
        sys.exit(f"{' '.join(argv[1:])} failed (exit {proc.returncode}):\n{stderr.read_text()[-3000:]}")
    return seconds, round(usage.ru_maxrss / GB, 3), stdout.read_text()


def folder_bytes(folder: Path) -> int:
    """Bytes of the files in ``folder``."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def commands(picks: dict, out: Path) -> list[tuple[str, list[str], Path | None]]:
    """The reading commands timed: (what, arguments, folder whose size is reported)."""
    firm = ["--firm", picks["firm"]]
    searches = [(f"search {level}{' --firm' if extra else ''}", ["search", SEARCH_TEXT, "--level", level, *extra], None)
                for level in ("theme", "topic", "sentence") for extra in ([], firm)]
    return [("status", ["status"], None), *searches,
            ("show firm", ["show", "firm", picks["firm"]], None),
            ("show theme", ["show", "theme", str(picks["theme"])], None),
            ("show topic", ["show", "topic", str(picks["topic"])], None),
            ("trends", ["trends"], None),
            ("export", ["export", "--out", str(out / "export")], out / "export"),
            ("report", ["report", "--out", str(out / "report")], out / "report")]


def measure(n_sentences: int) -> None:
    """Write the run, time the stages and the commands; print one JSON line each."""
    from common import embedded_database  # bench/ is on the path: scale.py is run as a script

    url = os.environ.get("DATABASE_URL") or embedded_database()
    env = {k: v for k, v in os.environ.items() if k not in ("XAI_API_KEY", "XAI_BASE_URL")}
    env.update(DATABASE_URL=url, LOG_FORMAT="json", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory(prefix="firmtopics-scale-") as folder:
        out = Path(folder)
        for stage in ("load", *STAGES, "searches"):
            _, peak, lines = child([sys.executable, str(SCALE), "--sentences", str(n_sentences), "--stage", stage],
                                   env, out)
            for line in lines.splitlines():
                print(json.dumps({**json.loads(line), "peak_rss_gb": peak}), flush=True)
        picks = asyncio.run(_picks(url))
        for what, argv, written in commands(picks, out):
            seconds, peak, _ = child([sys.executable, "-m", "app", *argv], env, out)
            extra = {"bytes": folder_bytes(written)} if written else {}
            print(json.dumps({"what": what, "seconds": round(seconds, 2), "peak_rss_gb": peak, **extra}), flush=True)
        _, peak, line = child([sys.executable, str(SCALE), "--sentences", str(n_sentences), "--stage", "sizes"],
                              env, out)
        print(json.dumps({**json.loads(line), "peak_rss_gb": peak}), flush=True)


async def _picks(url: str) -> dict:
    """What the commands are run on: the largest firm, top-level theme and topic."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        run_id = await conn.fetchval("SELECT run_id FROM runs WHERE name = $1", RUN)
        return {
            "firm": await conn.fetchval("SELECT firm_id FROM run_firms WHERE run_id = $1"
                                        " ORDER BY n_sentences DESC, firm_id LIMIT 1", run_id),
            "theme": await conn.fetchval("SELECT theme_id FROM themes WHERE run_id = $1 AND parent_theme_id IS NULL"
                                         " ORDER BY n_topics DESC, theme_id LIMIT 1", run_id),
            "topic": await conn.fetchval("SELECT topic_id FROM topics WHERE run_id = $1"
                                         " ORDER BY n_sentences DESC, topic_id LIMIT 1", run_id),
        }
    finally:
        await conn.close()


# --- each step, in a process of its own ---------------------------------------------------


def run_stage(stage: str, n_sentences: int) -> None:
    """One step in this process, against ``DATABASE_URL``; prints its JSON line (without
    the peak memory, which the parent reads from ``wait4``)."""
    from app import logs
    from app.settings import Settings

    settings = Settings.from_env()
    logs.configure(settings.log_format, settings.secrets())  # to stderr, as the commands log
    steps = {"load": _load, "themes": _themes, "attaching": _attaching, "periods": _periods, "indexes": _indexes,
             "searches": _searches, "sizes": _sizes}
    result = asyncio.run(_with_pool(settings, steps[stage], n_sentences))
    for line in result if isinstance(result, list) else [{"what": stage, **result}]:
        print(json.dumps(line), flush=True)


async def _with_pool(settings, step, n_sentences: int) -> dict:
    from app.database import open_database

    async with open_database(settings) as pool:
        return await step(pool, settings, n_sentences)


async def _run_id(pool) -> int:
    async with pool.acquire() as conn:
        return await conn.fetchval("SELECT run_id FROM runs WHERE name = $1", RUN)


async def _load(pool, settings, n_sentences: int) -> dict:
    from synthetic_run import write_synthetic_run

    async with pool.acquire() as conn:
        if await conn.fetchval("SELECT count(*) FROM firms"):
            sys.exit("the database holds firms already: give bench/scale.py an empty one (or no DATABASE_URL)")
    started = time.perf_counter()
    run = await write_synthetic_run(pool, n_sentences, run_name=RUN)
    return {"seconds": round(time.perf_counter() - started, 2), "firms": run.firms, "sentences": run.sentences,
            "topics": run.topics, "documents": run.documents}


async def _themes(pool, settings, n_sentences: int) -> dict:
    """The theme stage and the run's quality figures, as the job runs them (with OpenBLAS
    on one thread, as the job has it)."""
    from threadpoolctl import threadpool_limits

    from app.embedding import load_embedder
    from app.llm import make_namer
    from app.runs import set_status, store_run_quality
    from app.themes import run_theme_stage

    run_id = await _run_id(pool)
    embedder = load_embedder(settings.run.embedding_model)
    threadpool_limits(limits=1, user_api="blas")
    async with make_namer(settings) as namer:
        started = time.perf_counter()
        outcome = await run_theme_stage(pool, run_id, settings.run, embedder, namer)
        async with pool.acquire() as conn:
            await store_run_quality(conn, run_id, topics=outcome.topics, linked=outcome.linked_by_cluster)
            seconds = time.perf_counter() - started
            await set_status(conn, run_id, "themes_done")
    return {"seconds": round(seconds, 2), "topics": outcome.topics, "levels": outcome.levels}


async def _attaching(pool, settings, n_sentences: int) -> dict:
    from app.themes import attach_sentences_to_themes

    run_id = await _run_id(pool)
    async with pool.acquire() as conn, conn.transaction():
        started = time.perf_counter()
        attached = await attach_sentences_to_themes(conn, run_id, settings.run.theme_outlier_threshold)
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "attached": attached}


# What the theme_periods view aggregated at each read before its counts were kept (schema 14).
_TRENDS_BY_AGGREGATION = """
WITH periods AS MATERIALIZED (
  SELECT theme_id, period, n_firms, n_sentences,
         round(n_sentences::numeric / sum(n_sentences) OVER (PARTITION BY period), 4) AS share_of_period
  FROM (SELECT coalesce(t.theme_id, st.theme_id) AS theme_id, d.period,
               count(DISTINCT st.firm_id)::int AS n_firms, count(*)::int AS n_sentences
        FROM sentence_topics st JOIN sentences s USING (sentence_id)
        JOIN documents d ON d.firm_id = s.firm_id AND d.doc_id = s.doc_id
        LEFT JOIN topics t ON t.topic_id = st.topic_id
        WHERE st.run_id = $1 AND coalesce(t.theme_id, st.theme_id) IS NOT NULL GROUP BY 1, 2) counted),
sized AS (SELECT theme_id, sum(n_sentences) AS total FROM periods GROUP BY theme_id ORDER BY total DESC, theme_id
          LIMIT 10)
SELECT p.* FROM periods p JOIN sized USING (theme_id) ORDER BY sized.total DESC, p.theme_id, p.period
"""


async def _periods(pool, settings, n_sentences: int) -> dict:
    from app.read.trends import trend_rows
    from app.themes import count_theme_periods

    async def fastest(action) -> tuple[float, object]:
        times, result = [], None
        for _ in range(3):
            started = time.perf_counter()
            result = await action()
            times.append(time.perf_counter() - started)
        return min(times), result

    run_id = await _run_id(pool)
    async with pool.acquire() as conn:
        counting, _ = await fastest(lambda: count_theme_periods(conn, run_id))
        kept, rows = await fastest(lambda: trend_rows(conn, RUN))
        aggregated, old = await fastest(lambda: conn.fetch(_TRENDS_BY_AGGREGATION, run_id))
    same = [(r["theme_id"], r["period"], r["n_sentences"]) for r in rows] == \
        [(r["theme_id"], r["period"], r["n_sentences"]) for r in old]
    return {"seconds": round(kept, 3), "aggregated_seconds": round(aggregated, 3),
            "ratio": round(aggregated / kept, 1), "counting_seconds": round(counting, 2), "same_rows": same}


async def _indexes(pool, settings, n_sentences: int) -> dict:
    from app.runs import set_status
    from app.schema import build_vector_indexes

    run_id = await _run_id(pool)
    async with pool.acquire() as conn:
        started = time.perf_counter()
        await build_vector_indexes(conn, run_id)
        seconds = time.perf_counter() - started
        await set_status(conn, run_id, "complete")
    return {"seconds": round(seconds, 2)}


async def _searches(pool, settings, n_sentences: int) -> list[dict]:
    """Each search of the commands with the model loaded already (as the notebook API's
    ``run.search`` has it): the part of ``search`` that depends on the database, apart
    from starting Python and loading the model, which do not."""
    from app.embedding import load_embedder
    from app.read.search import search

    embedder = load_embedder(settings.run.embedding_model)
    embedder.encode([SEARCH_TEXT])  # the model's first call pays a one-time set-up
    lines = []
    async with pool.acquire() as conn:
        firm = await conn.fetchval("SELECT firm_id FROM run_firms ORDER BY n_sentences DESC, firm_id LIMIT 1")
        for level in ("theme", "topic", "sentence"):
            for firm_id in (None, firm):
                started = time.perf_counter()
                hits = await search(conn, SEARCH_TEXT, run_name=RUN, level=level, firm_id=firm_id, embedder=embedder)
                lines.append({"what": f"search {level}{' --firm' if firm_id else ''}, model loaded",
                              "seconds": round(time.perf_counter() - started, 3), "hits": len(hits)})
    return lines


_SIZES = """
SELECT c.relname AS table_name, pg_relation_size(c.oid) AS heap,
       coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0) AS toast,
       pg_total_relation_size(c.oid) AS total,
       (SELECT jsonb_object_agg(i.relname, pg_relation_size(i.oid)) FROM pg_index x
          JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = c.oid) AS indexes
FROM pg_class c
WHERE c.relkind = 'r' AND c.relnamespace = to_regnamespace(current_schema()) AND c.relname = ANY($1::text[])
ORDER BY c.relname
"""
TABLES = ("firms", "documents", "sentences", "runs", "run_firms", "topics", "themes", "sentence_topics")


async def _sizes(pool, settings, n_sentences: int) -> dict:
    """Rows and bytes of each table: its heap, its TOAST (long values kept apart), the
    whole (with every index) and each index."""
    started = time.perf_counter()
    async with pool.acquire() as conn:
        rows = await conn.fetch(_SIZES, list(TABLES))
        counts = {table: await conn.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES}
        database = await conn.fetchval("SELECT pg_database_size(current_database())")
    return {"seconds": round(time.perf_counter() - started, 2), "database_bytes": database,
            "tables": {r["table_name"]: {"rows": counts[r["table_name"]],
                                         **{k: r[k] for k in ("heap", "toast", "total", "indexes")}} for r in rows}}
