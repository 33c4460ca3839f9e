"""``firmtopics panel``: the firm x period x theme panel a regression reads, as a Parquet
or CSV file; ``open_run(NAME).panel()`` gives the same rows as a DataFrame.

The rows are the view ``firm_theme_periods`` (``sql/views.sql``), one per firm, period
and theme: ``firm_id``, ``period``, ``level``, ``theme_id``, ``theme_name``,
``n_sentences`` (the firm-period's sentences in the theme), ``period_sentences`` (all the
firm-period's sentences in the run) and ``share`` (the one over the other). Every
firm-period has a row for every top-level theme, zero when it never mentions it; below
the top, only the themes it mentions. Levels are numbered as everywhere else: 1 = the
fine themes, the highest = the top; ``--level N`` keeps one level, and without it every
level is written.

The file's format is its extension's, ``.parquet`` or ``.csv``. It is streamed as
``export`` streams its files: rows through a server-side cursor in chunks, each written as
it comes (memory stays flat however large the panel), into a temporary folder beside
the file and renamed when whole (``app.read.staging``), so a failed write never leaves a
truncated file that looks finished, and a link at its name is replaced, never written
through.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from app.errors import UsageError
from app.read.export import CHUNK_ROWS, record_batch
from app.read.staging import staged_files
from app.runs import load_run

# The panel's columns with their Arrow types, in the order of the file and the DataFrame.
COLUMNS = [("firm_id", "string"), ("period", "string"), ("level", "int32"), ("theme_id", "int64"),
           ("theme_name", "string"), ("n_sentences", "int32"), ("period_sentences", "int32"),
           ("share", "float64")]
COLUMN_NAMES = [name for name, _ in COLUMNS]
FORMATS = {".parquet": "parquet", ".csv": "csv"}

# The run id is $1; $2 is one level, or NULL for every level.
QUERY = (f"SELECT {', '.join(COLUMN_NAMES)} FROM firm_theme_periods"
         " WHERE run_id = $1 AND ($2::integer IS NULL OR level = $2)"
         " ORDER BY firm_id, period, level, theme_id")


def file_format(path: Path) -> str:
    """``'parquet'`` or ``'csv'``, by the extension of ``path``; raises ``UsageError``
    for any other, before anything is read or written."""
    found = FORMATS.get(Path(path).suffix.lower())
    if found is None:
        raise UsageError(f"--out must end in .parquet or .csv (the file's format), got {str(path)!r}")
    return found


async def check_level(conn: asyncpg.Connection, run_id: int, run_name: str, level: int | None) -> None:
    """Raise ``UsageError`` unless ``level`` is None (every level) or one of the run's
    theme levels, naming the levels it has."""
    top = await conn.fetchval("SELECT max(level) FROM themes WHERE run_id = $1", run_id)
    if level is None or (top and 1 <= level <= top):
        return
    levels = "no themes" if not top else "a single theme level, 1" if top == 1 else f"theme levels 1 to {top}"
    raise UsageError(f"run {run_name!r} has {levels} (1 = the finest); there is no level {level}")


async def panel_rows(conn: asyncpg.Connection, run_id: int, run_name: str,
                     level: int | None = None) -> list[asyncpg.Record]:
    """The panel rows of run ``run_id`` (named ``run_name``, for messages) at ``level``
    (None: every level), ordered by firm, period, level and theme. Raises
    ``UsageError`` for a level the run lacks."""
    await check_level(conn, run_id, run_name, level)
    return await conn.fetch(QUERY, run_id, level)


def _schema(run: asyncpg.Record, level: int | None):
    """The Arrow schema of the file, with the run it comes from in its metadata (kept by
    Parquet), so a copy found later is still traceable."""
    import pyarrow as pa

    types = {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float64": pa.float64()}
    metadata = {"firmtopics.run": run["name"], "firmtopics.run_id": str(run["run_id"]),
                "firmtopics.model": run["model"], "firmtopics.level": "every" if level is None else str(level)}
    return pa.schema([pa.field(name, types[kind]) for name, kind in COLUMNS], metadata=metadata)


def _writer(path: Path, schema, kind: str):
    """A writer of Arrow record batches into ``path`` in format ``kind``."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetWriter(path, schema, compression="zstd")
    import pyarrow.csv as csv

    return csv.CSVWriter(path, schema)


async def write_panel(conn: asyncpg.Connection, run_name: str, path: Path, *, level: int | None = None,
                      chunk_rows: int = CHUNK_ROWS) -> int:
    """Write the panel of run ``run_name`` at ``level`` (None: every level) into ``path``,
    Parquet or CSV by its extension; returns the rows written.

    Raises ``UsageError`` for another extension, an unknown or unfinished run, or a level
    the run lacks."""
    kind = file_format(path)
    run = await load_run(conn, run_name)
    await check_level(conn, run["run_id"], run_name, level)
    path = Path(path)
    schema = _schema(run, level)
    written = 0
    with staged_files(path.parent) as staging:
        # A server-side cursor lives in a transaction; a read-only one cannot change anything.
        async with conn.transaction(readonly=True):
            with _writer(staging / path.name, schema, kind) as writer:
                cursor = await conn.cursor(QUERY, run["run_id"], level)
                while rows := await cursor.fetch(chunk_rows):
                    writer.write_batch(record_batch(rows, schema))
                    written += len(rows)
    return written


def format_written(run_name: str, path: Path, level: int | None, rows: int) -> str:
    """The line ``panel`` prints: what was written where, or why it is empty."""
    which = "every level" if level is None else f"level {level}"
    if not rows:
        return (f"the panel of run {run_name!r} ({which}) is empty, written to {path}: its corpus has no "
                "`period` column (e.g. 2020Q4)")
    return f"the panel of run {run_name!r} ({which}): {rows:,} rows (firm x period x theme) written to {path}"


async def command(settings, args) -> int:
    """``firmtopics panel [--run NAME] [--level N] --out FILE``."""
    from app.database import open_database

    file_format(args.out)  # a bad extension is refused before the database is opened
    async with open_database(settings) as pool, pool.acquire() as conn:
        rows = await write_panel(conn, args.run, args.out, level=args.level)
    print(format_written(args.run, args.out, args.level, rows))
    return 0
