"""Sentence embeddings stored as pgvector's ``halfvec`` (16-bit floats) against ``vector``
(32-bit), side by side on the embeddings of a real run.

The sentences' embeddings are the largest table and its HNSW index the largest index
(docs/benchmarks.md, section 10: 1,536 of a row's 1,878 bytes, and 2,048 bytes of
graph). This copies a run's sentence embeddings into two scratch tables, one of each
type, builds the HNSW (cosine) index the program builds on each, with the same
``maintenance_work_mem``, and prints one JSON line: rows; each table's and index's
bytes; each build's seconds; and each index's recall@10 against an exact search of the
32-bit vectors (the ten nearest by cosine, no index), over seeded query sentences taken
from the run, with pgvector's default ``hnsw.ef_search`` (40). The scratch schema
``bench_halfvec`` is dropped at the end.

It was measured on a run stored before schema version 16, whose sentence embeddings were
``vector``: the decision it led to. Since then they are stored as ``halfvec``, and the
``vector`` copy holds those 16-bit values widened, so on a newer run the exact search it
is held against is already the 16-bit one.

    FIRMTOPICS_DATA_DIR=... python bench/halfvec.py --run NAME [--queries 200]
    DATABASE_URL=... python bench/halfvec.py --run NAME
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = {"vector": "vector_cosine_ops", "halfvec": "halfvec_cosine_ops"}


async def measure(run_name: str, n_queries: int, seed: float) -> dict:
    """Copy, index and search each kind; returns the JSON line's fields."""
    from app.database import open_database
    from app.settings import Settings

    async with open_database(Settings.from_env()) as pool, pool.acquire() as conn:
        run_id = await conn.fetchval("SELECT run_id FROM runs WHERE name = $1", run_name)
        if run_id is None:
            sys.exit(f"no run {run_name!r}")
        dimension = await conn.fetchval("SELECT embedding_dim FROM runs WHERE run_id = $1", run_id)
        await conn.execute("DROP SCHEMA IF EXISTS bench_halfvec CASCADE; CREATE SCHEMA bench_halfvec")
        await conn.execute("SET maintenance_work_mem = '1GB'")
        result: dict = {"run": run_name}
        try:
            for kind, ops in KINDS.items():
                await conn.execute(
                    f"CREATE TABLE bench_halfvec.{kind} AS SELECT sentence_id AS id,"
                    f" embedding::{kind}({dimension}) AS e FROM sentence_topics WHERE run_id = $1", run_id)
                started = time.perf_counter()
                await conn.execute(f"CREATE INDEX {kind}_hnsw ON bench_halfvec.{kind} USING hnsw (e {ops})")
                result[f"{kind}_build_s"] = round(time.perf_counter() - started, 1)
                result[f"{kind}_table_bytes"] = await conn.fetchval(
                    f"SELECT pg_table_size('bench_halfvec.{kind}')")
                result[f"{kind}_index_bytes"] = await conn.fetchval(
                    f"SELECT pg_relation_size('bench_halfvec.{kind}_hnsw')")
            result["rows"] = await conn.fetchval("SELECT count(*) FROM bench_halfvec.vector")
            await conn.execute("SELECT setseed($1)", seed)
            queries = await conn.fetch(
                "SELECT id, e FROM bench_halfvec.vector ORDER BY random() LIMIT $1", n_queries)
            found = {kind: 0 for kind in KINDS}
            for query in queries:
                async with conn.transaction():
                    await conn.execute("SET LOCAL enable_indexscan = off")
                    exact = {r["id"] for r in await conn.fetch(
                        "SELECT id FROM bench_halfvec.vector ORDER BY e <=> $1 LIMIT 10", query["e"])}
                for kind in KINDS:
                    nearest = await conn.fetch(
                        f"SELECT id FROM bench_halfvec.{kind} ORDER BY e <=> $1::vector::{kind}({dimension}) LIMIT 10",
                        query["e"])
                    found[kind] += len(exact & {r["id"] for r in nearest})
            for kind in KINDS:
                result[f"{kind}_recall_at_10"] = round(found[kind] / (10 * len(queries)), 4)
            result["queries"] = len(queries)
        finally:
            await conn.execute("DROP SCHEMA IF EXISTS bench_halfvec CASCADE")
    result["recall_ratio"] = round(result["halfvec_recall_at_10"] / result["vector_recall_at_10"], 4)
    result["table_ratio"] = round(result["halfvec_table_bytes"] / result["vector_table_bytes"], 3)
    result["index_ratio"] = round(result["halfvec_index_bytes"] / result["vector_index_bytes"], 3)
    result["build_ratio"] = round(result["halfvec_build_s"] / result["vector_build_s"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the run whose sentence embeddings are copied")
    parser.add_argument("--queries", type=int, default=200, help="query sentences for recall@10")
    parser.add_argument("--seed", type=float, default=0.42, help="seed of the query sample (-1 .. 1)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.run, args.queries, args.seed))), flush=True)


if __name__ == "__main__":
    main()
