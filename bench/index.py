"""Load then index, or load into an indexed table? And with which build settings?

The program writes every firm into plain heaps and builds the HNSW (cosine) indexes once
at the end, with ``maintenance_work_mem`` raised to 1GB for that session
(``app.schema.build_vector_indexes``). This checks both choices on one embedded
PostgreSQL, with random unit vectors of the model's dimension (384):

Part A, the same rows two ways, side by side (the order alternates between repeats):
  indexed load      HNSW index first, then the rows by COPY, one transaction per 500 rows
                    (a firm), as a run would write them if the index were kept
  load then index   the same COPYs into a plain heap, then CREATE INDEX with the program's
                    settings (maintenance_work_mem 1GB, the server's parallel workers)
  ratio = indexed-load seconds / load-then-index seconds (> 1: load then index wins)

Part B, the index build alone on more rows, with maintenance_work_mem 64MB (PostgreSQL's
default) or 1GB, and max_parallel_maintenance_workers 0 or the server's default: the
build is much slower once the graph outgrows maintenance_work_mem (PostgreSQL then says
"hnsw graph no longer fits into maintenance_work_mem").

    python bench/index.py [--rows 10000] [--build-rows 50000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import embedded_database, machine, table  # noqa: E402

DIM = 384
CHUNK = 500  # rows per transaction: one firm
INDEX = "USING hnsw (embedding vector_cosine_ops)"  # as in sql/indexes.sql


def unit_vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


async def load(conn: asyncpg.Connection, name: str, vectors: np.ndarray) -> float:
    """COPY ``vectors`` into ``name``, one transaction per CHUNK rows; returns seconds."""
    started = time.perf_counter()
    for start in range(0, len(vectors), CHUNK):
        async with conn.transaction():
            await conn.copy_records_to_table(
                name, records=[(i, vectors[i]) for i in range(start, min(start + CHUNK, len(vectors)))],
                columns=["id", "embedding"])
    return time.perf_counter() - started


async def create_index(conn: asyncpg.Connection, name: str, mwm: str, workers: int | None) -> float:
    await conn.execute(f"SET maintenance_work_mem = '{mwm}'")
    await conn.execute("RESET max_parallel_maintenance_workers" if workers is None
                       else f"SET max_parallel_maintenance_workers = {workers}")
    started = time.perf_counter()
    await conn.execute(f"CREATE INDEX {name}_hnsw ON {name} {INDEX}")
    return time.perf_counter() - started


async def indexed_load(conn: asyncpg.Connection, vectors: np.ndarray) -> float:
    await conn.execute(f"CREATE TABLE indexed (id bigint, embedding vector({DIM}))")
    await conn.execute(f"CREATE INDEX indexed_hnsw ON indexed {INDEX}")
    seconds = await load(conn, "indexed", vectors)
    await conn.execute("DROP TABLE indexed")
    return seconds


async def load_then_index(conn: asyncpg.Connection, vectors: np.ndarray) -> tuple[float, float]:
    await conn.execute(f"CREATE TABLE heap (id bigint, embedding vector({DIM}))")
    load_s = await load(conn, "heap", vectors)
    index_s = await create_index(conn, "heap", "1GB", None)  # the program's settings
    await conn.execute("DROP TABLE heap")
    return load_s, index_s


async def main(args) -> None:
    conn = await asyncpg.connect(embedded_database())
    await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    await register_vector(conn)
    notices: list[str] = []
    conn.add_log_listener(lambda _conn, message: notices.append(message.message))
    facts = {k: await conn.fetchval(f"SHOW {k}") for k in
             ("maintenance_work_mem", "max_parallel_maintenance_workers", "max_worker_processes", "shared_buffers")}
    version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    print(f"{machine()}; pgvector {version}; server defaults: "
          + ", ".join(f"{k}={v}" for k, v in facts.items()), flush=True)

    # Part A
    vectors = unit_vectors(args.rows, 0)
    a_indexed, a_load, a_index, ratios = [], [], [], []
    for rep in range(args.repeats):
        order = ["indexed", "then"] if rep % 2 == 0 else ["then", "indexed"]
        for way in order:
            if way == "indexed":
                a_indexed.append(await indexed_load(conn, vectors))
            else:
                load_s, index_s = await load_then_index(conn, vectors)
                a_load.append(load_s)
                a_index.append(index_s)
        ratios.append(a_indexed[-1] / (a_load[-1] + a_index[-1]))
        print(f"A, repeat {rep + 1}: indexed load {a_indexed[-1]:.1f} s; load {a_load[-1]:.1f} s + "
              f"index {a_index[-1]:.1f} s", flush=True)
    print()
    print(table(
        [f"{args.rows:,} rows x {DIM}-d, COPY by {CHUNK}", "seconds (median)", "ratio indexed / this"],
        [["indexed load (HNSW maintained on every insert)", f"{statistics.median(a_indexed):.1f}", "1.00"],
         ["load into a heap", f"{statistics.median(a_load):.1f}", "-"],
         ["then CREATE INDEX (1GB, server's workers)", f"{statistics.median(a_index):.1f}", "-"],
         ["load then index, total", f"{statistics.median(np.add(a_load, a_index)):.1f}",
          f"**{statistics.median(ratios):.1f}**"]],
    ))
    print(flush=True)

    # Part B
    if args.build_rows:
        await conn.execute(f"CREATE TABLE build (id bigint, embedding vector({DIM}))")
        await load(conn, "build", unit_vectors(args.build_rows, 1))
        await conn.execute("VACUUM ANALYZE build")
        size_mb = await conn.fetchval("SELECT pg_table_size('build') / 1048576.0")
        default_workers = int(facts["max_parallel_maintenance_workers"])
        configs = [("64MB", 0), ("1GB", 0), ("1GB", default_workers)]
        if default_workers == 0:
            configs = configs[:2]
        results = {}
        for _i, (mwm, workers) in enumerate(configs[args.build_shift:] + configs[:args.build_shift]):
            notices.clear()
            seconds = await create_index(conn, "build", mwm, workers)
            index_mb = await conn.fetchval("SELECT pg_relation_size('build_hnsw') / 1048576.0")
            spilled = any("no longer fits" in n for n in notices)
            await conn.execute("DROP INDEX build_hnsw")
            results[(mwm, workers)] = (seconds, index_mb, spilled)
            print(f"B: maintenance_work_mem {mwm}, workers {workers}: {seconds:.1f} s"
                  + (" (graph outgrew maintenance_work_mem)" if spilled else ""), flush=True)
        reference = results[("1GB", 0)][0]
        print()
        print(table(
            [f"CREATE INDEX on {args.build_rows:,} rows ({size_mb:.0f} MB heap)", "seconds",
             "ratio to 1GB, 0 workers", "graph outgrew memory?", "index MB"],
            [[f"maintenance_work_mem {mwm}, max_parallel_maintenance_workers {workers}"
              + (" (program's setting)" if (mwm, workers) == ("1GB", default_workers) else ""),
              f"{s:.1f}", f"{reference / s:.2f}", "yes" if spilled else "no", f"{mb:.0f}"]
             for (mwm, workers), (s, mb, spilled) in results.items()],
        ))
    await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10000, help="part A rows")
    parser.add_argument("--repeats", type=int, default=2, help="part A repeats (the order alternates)")
    parser.add_argument("--build-rows", type=int, default=50000, help="part B rows; 0 skips part B")
    parser.add_argument("--build-shift", type=int, default=0, help="rotate part B's order by this many")
    asyncio.run(main(parser.parse_args()))
