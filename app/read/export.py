"""``firmtopics export --out DIR``: a run's results as Parquet files, for pandas, polars or R.

Files written to DIR:

| file | one row per | columns |
| --- | --- | --- |
| ``firms.parquet`` | firm of the run | firm_id, firm_name, status, reason, n_sentences, n_topics, n_outliers |
| ``themes.parquet`` | theme (every level) | theme_id, theme_no, level (1 = fine), parent_theme_id (null at the top), name, summary, keywords, name_source, n_topics, n_firms, embedding |
| ``topics.parquet`` | firm topic | topic_id, firm_id, topic_no, name, summary, keywords, name_source, n_sentences, evidence_sentence_ids, theme_id, theme_assignment, embedding |
| ``sentences.parquet`` | sentence of the run | sentence_id, firm_id, doc_id, text, topic_id (null = in no topic), topic_assignment (cluster / nearest), theme_id (its topic's, or the nearest theme's for a sentence in no topic), theme_via (topic / nearest), embedding |
| ``run.json`` | | the run's settings, model, package versions, timings, quality figures, and the files written |

Embeddings are fixed-size lists of float32 (``numpy.stack(df.embedding)`` gives the
matrix). The ids join the files to each other exactly as the tables join in SQL.

Memory stays flat however large the run: rows are read through a server-side cursor in
chunks and each chunk is written as it comes (pyarrow's ``ParquetWriter``). All files
are read in one read-only, repeatable-read transaction, so they are one consistent
snapshot. The files are written into a temporary folder inside DIR and moved into place
when all are whole (``app.read.staging``): an export that fails or is killed leaves the
previous export as it was, and a link at a file's name is replaced, never written through.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import numpy as np

from app.database import as_array, open_database
from app.logs import get_logger
from app.read.staging import staged_files
from app.runs import load_run

log = get_logger("export")

CHUNK_ROWS = 10_000  # rows a cursor fetch; one Parquet row group each

# (file stem, query, columns with their Arrow type names). The run id is $1.
# "embedding" is the fixed-size vector column; its length is the run's dimension.
TABLES: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("firms",
     "SELECT rf.firm_id, f.firm_name, rf.status, rf.reason, rf.n_sentences, rf.n_topics, rf.n_outliers"
     " FROM run_firms rf JOIN firms f ON f.firm_id = rf.firm_id WHERE rf.run_id = $1 ORDER BY rf.firm_id",
     [("firm_id", "string"), ("firm_name", "string"), ("status", "string"), ("reason", "string"),
      ("n_sentences", "int32"), ("n_topics", "int32"), ("n_outliers", "int32")]),
    ("themes",
     "SELECT theme_id, theme_no, level, parent_theme_id, name, summary, keywords, name_source, n_topics, n_firms,"
     " embedding FROM themes WHERE run_id = $1 ORDER BY theme_id",
     [("theme_id", "int64"), ("theme_no", "int32"), ("level", "int32"), ("parent_theme_id", "int64"),
      ("name", "string"), ("summary", "string"),
      ("keywords", "list<string>"), ("name_source", "string"), ("n_topics", "int32"), ("n_firms", "int32"),
      ("embedding", "vector")]),
    ("topics",
     "SELECT topic_id, firm_id, topic_no, name, summary, keywords, name_source, n_sentences,"
     " evidence_sentence_ids, theme_id, theme_assignment, embedding"
     " FROM topics WHERE run_id = $1 ORDER BY topic_id",
     [("topic_id", "int64"), ("firm_id", "string"), ("topic_no", "int32"), ("name", "string"),
      ("summary", "string"), ("keywords", "list<string>"), ("name_source", "string"), ("n_sentences", "int32"),
      ("evidence_sentence_ids", "list<int64>"), ("theme_id", "int64"), ("theme_assignment", "string"),
      ("embedding", "vector")]),
    ("sentences",
     "SELECT st.sentence_id, st.firm_id, s.doc_id, s.text, st.topic_id, st.topic_assignment,"
     " coalesce(t.theme_id, st.theme_id) AS theme_id,"
     " CASE WHEN t.theme_id IS NOT NULL THEN 'topic' WHEN st.theme_id IS NOT NULL THEN 'nearest' END AS theme_via,"
     " st.embedding"
     " FROM sentence_topics st"
     " JOIN sentences s ON s.sentence_id = st.sentence_id"
     " LEFT JOIN topics t ON t.topic_id = st.topic_id"
     " WHERE st.run_id = $1 ORDER BY st.sentence_id",
     [("sentence_id", "int64"), ("firm_id", "string"), ("doc_id", "string"), ("text", "string"),
      ("topic_id", "int64"), ("topic_assignment", "string"), ("theme_id", "int64"), ("theme_via", "string"),
      ("embedding", "vector")]),
]


def arrow_schema(columns: list[tuple[str, str]], dim: int, metadata: dict[str, str]):
    """The Arrow schema of one file: typed up front, so an empty table has typed columns too."""
    import pyarrow as pa

    types = {
        "string": pa.string(), "int32": pa.int32(), "int64": pa.int64(),
        "list<string>": pa.list_(pa.string()), "list<int64>": pa.list_(pa.int64()),
        "vector": pa.list_(pa.float32(), dim),  # a list size makes it fixed-size
    }
    return pa.schema([pa.field(name, types[kind]) for name, kind in columns], metadata=metadata)


def record_batch(rows: list[asyncpg.Record], schema):
    """One Arrow record batch from database rows, column by column.

    The vector column is built from one stacked float32 matrix (fast, no per-value
    Python objects); a NULL vector becomes a null list.
    """
    import pyarrow as pa

    arrays = []
    for field in schema:
        values = [row[field.name] for row in rows]
        if pa.types.is_fixed_size_list(field.type):
            arrays.append(_vectors(values, field.type))
        else:
            arrays.append(pa.array([list(v) if isinstance(v, (list, tuple)) else v for v in values],
                                   type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _vectors(values: list, arrow_type):
    import pyarrow as pa

    dim = arrow_type.list_size
    missing = np.array([v is None for v in values])
    matrix = np.zeros((len(values), dim), dtype=np.float32)
    for i, v in enumerate(values):
        if v is not None:
            matrix[i] = as_array(v)
    flat = pa.array(matrix.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(missing) if missing.any() else None)


async def write_table(conn: asyncpg.Connection, path: Path, query: str, run_id: int, schema,
                      *, chunk_rows: int = CHUNK_ROWS) -> int:
    """Stream one query's rows into the Parquet file ``path``; returns the rows written.

    Must be called inside a transaction (a server-side cursor lives in one).
    """
    import pyarrow.parquet as pq

    rows_written = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        cursor = await conn.cursor(query, run_id)
        while rows := await cursor.fetch(chunk_rows):
            writer.write_batch(record_batch(rows, schema))
            rows_written += len(rows)
    return rows_written


def run_manifest(run: asyncpg.Record, files: dict[str, int]) -> dict:
    """What ``run.json`` holds: everything a result depends on, and what was exported.

    Only what the ``runs`` table records (which holds no secret) plus the export's own
    facts; never a setting of the process (database URL, API key).
    """
    from app.runs import package_versions

    def when(value):
        return value.isoformat() if value else None

    return {
        "run": {"run_id": run["run_id"], "name": run["name"], "status": run["status"],
                "created_at": when(run["created_at"]), "started_at": when(run["started_at"]),
                "finished_at": when(run["finished_at"])},
        "model": run["model"],
        "embedding_dim": run["embedding_dim"],
        "settings": run["settings"],
        "backend": run["backend"],
        "package_versions": run["package_versions"],
        "timings": run["timings"],
        "llm_usage": run["llm_usage"],
        "quality": run["quality"],
        "export": {
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "package_versions": package_versions(),
            "files": {f"{stem}.parquet": rows for stem, rows in files.items()},
        },
    }


async def export_run(conn: asyncpg.Connection, run_name: str, out_dir: Path,
                     *, chunk_rows: int = CHUNK_ROWS) -> dict[str, int]:
    """Write run ``run_name``'s Parquet files and ``run.json`` into ``out_dir``.

    Returns ``{file stem: rows written}``. Raises ``UsageError`` for an unknown or
    unfinished run.
    """
    run = await load_run(conn, run_name)
    # Each file says where it came from, so a copy found later is still traceable.
    metadata = {"firmtopics.run": run["name"], "firmtopics.run_id": str(run["run_id"]),
                "firmtopics.model": run["model"]}
    counts: dict[str, int] = {}
    with staged_files(out_dir) as staging:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            for stem, query, columns in TABLES:
                schema = arrow_schema(columns, run["embedding_dim"], metadata)
                counts[stem] = await write_table(conn, staging / f"{stem}.parquet", query, run["run_id"], schema,
                                                 chunk_rows=chunk_rows)
                log.info("exported", file=f"{stem}.parquet", rows=counts[stem])
        manifest = run_manifest(run, counts)
        (staging / "run.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
    return counts


def format_counts(run_name: str, out_dir: Path, counts: dict[str, int]) -> str:
    """The lines ``export`` prints: each file with its row count."""
    lines = [f"exported run {run_name!r} to {out_dir}:"]
    for stem, rows in counts.items():
        lines.append(f"  {stem + '.parquet':<18} {rows:>10,} rows")
    lines.append(f"  {'run.json':<18} settings, model, package versions")
    return "\n".join(lines)


async def command(settings, args) -> int:
    """``firmtopics export --out DIR [--run NAME]``."""
    async with open_database(settings) as pool, pool.acquire() as conn:
        counts = await export_run(conn, args.run, args.out)
    print(format_counts(args.run, args.out, counts))
    return 0
