"""Is the writer as fast as a bare binary COPY?

``app.writer.write_firm`` stores a firm in one transaction: its ``run_firms`` row, its
topics, then each sentence's topic and embedding by binary COPY into ``sentence_topics``
(which has a primary key, foreign keys and a topic index). The reference is the bare
minimum: ``copy_records_to_table`` of the same sentence rows into a table with no index,
key or constraint. Side by side, firm by firm, in one process (the order of the methods
rotates from firm to firm):

  bare COPY             the reference: same rows, unindexed table, no transaction around it
  COPY, keys no FKs     bare COPY into a copy of ``sentence_topics`` with its primary key and
                        index but without its foreign keys (``LIKE ... INCLUDING ALL``)
  COPY, keys + FK x     the same with one of the table's three foreign keys (x = run,
                        sentence_firm: the composite key to sentences (firm_id, sentence_id),
                        or topic): what each costs
  COPY, keys + v2 keys  the same with the two keys schema version 2 had where version 3
                        has the composite one (sentence_id -> sentences, firm_id -> firms)
  COPY, same table      bare COPY into ``sentence_topics`` itself (keys, index and three
                        foreign keys): what the table costs, apart from the writer's own steps
  write_firm            the program's writer, whole
  executemany           one prepared INSERT run for every row (asyncpg ``executemany``)
  per-row INSERT        one ``execute`` per row, all in one transaction

Ratio = bare COPY seconds / method seconds for the same firm (1.0 = as fast as bare COPY),
median over firms and repeats. The two INSERT methods are slow, so they run on every
``--insert-every``-th firm only; their ratios are still against bare COPY of those firms.

    python bench/writer.py [--firms 20] [--sentences 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import logs  # noqa: E402
from app.database import open_database  # noqa: E402
from app.ingest import ingest_file  # noqa: E402
from app.naming import Label  # noqa: E402
from app.runs import open_run  # noqa: E402
from app.schema import fix_embedding_dimension  # noqa: E402
from app.settings import RunSettings, Settings  # noqa: E402
from app.writer import FirmResult, TopicResult, insert_topics, write_firm  # noqa: E402
from common import ECTSUM, embedded_database, machine, table  # noqa: E402

DIM = 384
TOPICS_PER_FIRM = 12
OUTLIER_SHARE = 0.3
COLUMNS = ["run_id", "sentence_id", "firm_id", "topic_id", "embedding", "topic_assignment"]
BARE_TABLE = f"""
CREATE TABLE bare_copy (
    run_id integer, sentence_id bigint, firm_id text, topic_id bigint, embedding halfvec({DIM}),
    topic_assignment text
)"""
# Created after the embedding column is typed halfvec(DIM), so LIKE copies that type.
NO_FK_TABLE = "CREATE TABLE keys_no_fk (LIKE sentence_topics INCLUDING ALL)"
# A copy of sentence_topics with only these foreign keys, one table each.
FOREIGN_KEYS = {
    "run": ["(run_id) REFERENCES runs"],
    "sentence_firm": ["(firm_id, sentence_id) REFERENCES sentences (firm_id, sentence_id)"],
    "topic": ["(topic_id) REFERENCES topics"],
    "v2_keys": ["(sentence_id) REFERENCES sentences", "(firm_id) REFERENCES firms"],
}


def key_method(key: str) -> str:
    return "COPY, keys + v2 keys" if key == "v2_keys" else f"COPY, keys + FK {key}"


def corpus_file(folder: Path, n_firms: int, per_firm: int) -> tuple[Path, str]:
    """The first ``n_firms`` ECTSum firms with at least ``per_firm`` sentences, ``per_firm``
    sentences each (made-up sentences when the shared data is absent)."""
    target = folder / "writer.jsonl.gz"
    with gzip.open(target, "wt", encoding="utf-8") as out:
        if ECTSUM.exists():
            rows_by_firm: dict[str, list[dict]] = {}
            with gzip.open(ECTSUM, "rt", encoding="utf-8") as src:
                for line in src:
                    row = json.loads(line)
                    rows_by_firm.setdefault(row["firm_id"], []).append(row)
            chosen = [rows for rows in rows_by_firm.values() if len(rows) >= per_firm][:n_firms]
            for rows in chosen:
                for row in rows[:per_firm]:
                    out.write(json.dumps(row) + "\n")
            return target, f"ECTSum, first {len(chosen)} firms with >= {per_firm} sentences"
        for f in range(n_firms):
            for i in range(per_firm):
                out.write(json.dumps({"firm_id": f"F{f:03d}", "doc_id": "d",
                                      "sentence": f"Made-up sentence number {i} of firm {f}."}) + "\n")
        return target, "made-up sentences (no shared data here)"


def firm_result(firm_id: str, sentence_ids: np.ndarray, rng: np.random.Generator) -> FirmResult:
    """A realistic firm result: unit vectors, a dozen topics, about 30% outliers."""
    n = len(sentence_ids)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = rng.integers(0, TOPICS_PER_FIRM, n)
    labels[rng.random(n) < OUTLIER_SHARE] = -1
    topics = [
        TopicResult(t, [f"word{t}_{k}" for k in range(10)],
                    Label(f"Topic {t} of {firm_id}", "A two-sentence summary of the topic. It is made up.", "keywords"),
                    int((labels == t).sum()), [int(i) for i in sentence_ids[labels == t][:8]])
        for t in range(TOPICS_PER_FIRM)
    ]
    return FirmResult(firm_id, firm_id, "done", sentence_ids=sentence_ids, embeddings=vectors, labels=labels,
                      topics=topics, seconds={"embed": 1.0, "cluster": 1.0})


def rows_of(result: FirmResult, run_id: int, topic_ids: dict[int, int]) -> list[tuple]:
    """The sentence rows exactly as the writer builds them (no sentence attached by nearness)."""
    return [(run_id, int(sid), result.firm_id, topic_ids.get(int(label)), vector, None if label < 0 else "cluster")
            for sid, label, vector in zip(result.sentence_ids, result.labels, result.embeddings)]


async def new_run(conn, name: str) -> int:
    run = await open_run(conn, name, RunSettings(), embedding_dim=DIM, backend={"clustering": "cpu"})
    return run.run_id


async def main(args) -> None:
    folder = Path(tempfile.mkdtemp(prefix="firmtopics-writer-"))
    logs.configure("json", stream=open(folder / "log.jsonl", "w"))
    settings = Settings.from_env({"DATABASE_URL": embedded_database()})
    path, description = corpus_file(folder, args.firms, args.sentences)
    rng = np.random.default_rng(0)
    seconds: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    async with open_database(settings) as pool:
        await ingest_file(pool, path)
        async with pool.acquire() as conn:
            await fix_embedding_dimension(conn, DIM)
            await conn.execute(BARE_TABLE)
            await conn.execute(NO_FK_TABLE)
            for key, references in FOREIGN_KEYS.items():
                await conn.execute(f"CREATE TABLE keys_fk_{key} (LIKE sentence_topics INCLUDING ALL)")
                for reference in references:
                    await conn.execute(f"ALTER TABLE keys_fk_{key} ADD FOREIGN KEY {reference}")
            firms = [r["firm_id"] for r in await conn.fetch("SELECT firm_id FROM firms ORDER BY firm_id")]
            results = []
            for firm in firms:
                ids = await conn.fetch("SELECT sentence_id FROM sentences WHERE firm_id = $1 ORDER BY 1", firm)
                results.append(firm_result(firm, np.array([r["sentence_id"] for r in ids], dtype=np.int64), rng))
            n_rows = sum(r.n_sentences for r in results)
            print(f"corpus: {description}: {len(results)} firms, {n_rows} sentence rows of {DIM}-d vectors, "
                  f"{TOPICS_PER_FIRM} topics a firm; {machine()}", flush=True)

            for rep in range(args.repeats):
                writer_run = await new_run(conn, f"writer-{rep}")
                table_run = await new_run(conn, f"copy-same-table-{rep}")
                for i, result in enumerate(results):
                    fake_ids = {t.topic_no: 1_000_000 + t.topic_no for t in result.topics}

                    async def bare_copy():
                        await conn.copy_records_to_table("bare_copy", records=rows_of(result, 1, fake_ids),
                                                         columns=COLUMNS)

                    async def copy_same_table():
                        await conn.copy_records_to_table("sentence_topics", records=rows_of(result, table_run, ids),
                                                         columns=COLUMNS)

                    async def copy_no_fk():
                        await conn.copy_records_to_table("keys_no_fk", records=rows_of(result, table_run, ids),
                                                         columns=COLUMNS)

                    def copy_one_fk(key):
                        async def copy():
                            await conn.copy_records_to_table(f"keys_fk_{key}", records=rows_of(result, table_run, ids),
                                                             columns=COLUMNS)
                        return copy

                    async def writer():
                        await write_firm(conn, writer_run, result)

                    async def executemany():
                        async with conn.transaction():
                            await conn.executemany("INSERT INTO bare_copy VALUES ($1, $2, $3, $4, $5, $6)",
                                                   rows_of(result, 1, fake_ids))

                    async def per_row_insert():
                        async with conn.transaction():
                            for row in rows_of(result, 1, fake_ids):
                                await conn.execute("INSERT INTO bare_copy VALUES ($1, $2, $3, $4, $5, $6)", *row)

                    # The same-table COPY needs the firm's topics to point at (not timed).
                    ids = await insert_topics(conn, table_run, result)
                    methods = {"bare COPY": bare_copy, "COPY, keys no FKs": copy_no_fk}
                    methods |= {key_method(key): copy_one_fk(key) for key in FOREIGN_KEYS}
                    methods |= {"COPY, same table": copy_same_table, "write_firm": writer}
                    if i % args.insert_every == 0:
                        methods |= {"executemany": executemany, "per-row INSERT": per_row_insert}
                    names = list(methods)
                    shift = (i + rep) % len(names)
                    timed = {}
                    for name in names[shift:] + names[:shift]:
                        started = time.perf_counter()
                        await methods[name]()
                        timed[name] = time.perf_counter() - started
                    for name, s in timed.items():
                        seconds.setdefault(name, []).append(s)
                        ratios.setdefault(name, []).append(timed["bare COPY"] / s)
                # Back to the same starting point for the next repeat (not timed).
                await conn.execute("TRUNCATE bare_copy, keys_no_fk, "
                                   + ", ".join(f"keys_fk_{key}" for key in FOREIGN_KEYS))
                await conn.execute("DELETE FROM runs WHERE run_id = ANY($1::int[])", [writer_run, table_run])
                print(f"repeat {rep + 1}/{args.repeats}: write_firm {statistics.median(ratios['write_firm']):.2f} "
                      "x bare COPY so far", flush=True)
            settings_row = await conn.fetchrow("SELECT current_setting('synchronous_commit') AS sc, "
                                               "current_setting('wal_level') AS wal, version() AS v")

    print()
    rows = []
    for name in ["bare COPY", "COPY, keys no FKs", *(key_method(key) for key in FOREIGN_KEYS),
                 "COPY, same table", "write_firm", "executemany", "per-row INSERT"]:
        per_firm = statistics.median(seconds[name])
        rows.append([name, len(seconds[name]), f"{per_firm * 1000:.0f}", f"{args.sentences / per_firm:,.0f}",
                     f"**{statistics.median(ratios[name]):.2f}**" if name == "write_firm"
                     else f"{statistics.median(ratios[name]):.2f}"])
    print(table(["method", "firm writes timed", "median ms a firm", "rows/s", "ratio to bare COPY (median)"], rows))
    print(f"\n{args.sentences} rows a firm, {DIM}-d float32 vectors; goal: write_firm >= 0.8 x bare COPY. "
          f"PostgreSQL: {settings_row['v'].split(' on ')[0]}, synchronous_commit={settings_row['sc']}, "
          f"wal_level={settings_row['wal']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--firms", type=int, default=20)
    parser.add_argument("--sentences", type=int, default=500, help="sentences a firm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--insert-every", type=int, default=4, help="run the INSERT methods on every Nth firm")
    asyncio.run(main(parser.parse_args()))
