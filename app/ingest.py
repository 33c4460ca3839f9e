"""Ingest: store the checked rows of a corpus file in ``firms`` and ``sentences``.

``ingest_file`` is the entry point. It reads the file with ``app.corpus.read_chunks``
(formats, row checks and problem reports live there) and writes it chunk by chunk of
checked rows: COPY into a temporary table, then plain ``INSERT ... SELECT`` statements
that skip what is already stored. Memory stays flat however large the file is.

A file is stored in one transaction: whole, or not at all. A file found unusable halfway
(cut short, damaged, a key or column twice, text that is not UTF-8), an interruption or
a lost database leaves nothing of it stored, never the rows before the break; a dropped
connection is retried by ingesting the file again on a fresh one.

A sentence is identified by (firm, document, text) — the ``sentences_identity``
constraint — so ingesting the same file twice adds nothing, and the same text twice in
one document is stored once.

A period is stored per document (``documents``), from the first row that gives one; its
sentences inherit it. A later row giving the same document another period (in this
file or an earlier one) is a bad row: reported with its line, left out.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg

from app.corpus import IngestError, IngestReport, Row, add_problem, read_chunks
from app.database import with_connection_retry
from app.logs import get_logger

# IngestError and IngestReport are part of ingest_file's contract (what it raises and
# returns), so callers may keep importing them from here.
__all__ = ["IngestError", "IngestReport", "Row", "ingest_corpus", "ingest_file", "write_chunk"]

# The staging table lives only for the file's transaction (ON COMMIT DROP), so nothing is
# left behind on a pooled connection, even after an error; it is emptied after each chunk.
_CREATE_STAGING = """
CREATE TEMPORARY TABLE ingest_staging (
    position  integer NOT NULL,
    firm_id   text NOT NULL,
    firm_name text,
    doc_id    text,
    text      text NOT NULL,
    period    text,
    place     text NOT NULL
) ON COMMIT DROP
"""
_STAGING_COLUMNS = ["position", "firm_id", "firm_name", "doc_id", "text", "period", "place"]

# Each firm of the chunk once, with its first non-empty name in file order.
_FIRST_NAMES = """
SELECT DISTINCT ON (firm_id) firm_id, firm_name
FROM ingest_staging
ORDER BY firm_id, firm_name IS NULL, position
"""
_INSERT_FIRMS = f"""
INSERT INTO firms (firm_id, firm_name)
SELECT firm_id, firm_name FROM ({_FIRST_NAMES}) AS named
ON CONFLICT (firm_id) DO NOTHING
"""
# A firm stored earlier without a name gets one; a name once stored is never replaced.
_FILL_FIRM_NAMES = f"""
UPDATE firms SET firm_name = named.firm_name
FROM ({_FIRST_NAMES}) AS named
WHERE firms.firm_id = named.firm_id AND firms.firm_name IS NULL AND named.firm_name IS NOT NULL
"""
# Each document's period, from its first row with one (in file order); a document stored
# earlier keeps the period it has.
_INSERT_DOCUMENTS = """
INSERT INTO documents (firm_id, doc_id, period)
SELECT DISTINCT ON (firm_id, doc_id) firm_id, doc_id, period
FROM ingest_staging WHERE period IS NOT NULL
ORDER BY firm_id, doc_id, position
ON CONFLICT (firm_id, doc_id) DO NOTHING
"""
# Rows giving their document another period than the stored one: out of the chunk.
_TAKE_OUT_CONFLICTS = """
DELETE FROM ingest_staging s USING documents d
WHERE d.firm_id = s.firm_id AND d.doc_id = s.doc_id AND s.period IS NOT NULL AND s.period <> d.period
RETURNING s.position, s.place, s.firm_id, s.doc_id, s.period, d.period AS stored
"""
# ORDER BY position: sentence_id is handed out in file order.
_INSERT_SENTENCES = """
INSERT INTO sentences (firm_id, doc_id, text)
SELECT firm_id, doc_id, text FROM ingest_staging ORDER BY position
ON CONFLICT ON CONSTRAINT sentences_identity DO NOTHING
"""


async def write_chunk(conn: asyncpg.Connection, rows: list[Row]) -> tuple[int, int, list[str]]:
    """Store one chunk, inside the file's transaction on ``conn`` (which has made the
    staging table); return ``(sentences added, firms added, conflicts)``, where each
    conflict says which row gave its document a second period (``line N: ...``; that row
    is left out).

    Rows already stored (same firm, document and text) are skipped, so a file can be
    written again safely.
    """
    records = [(position, r.firm_id, r.firm_name, r.doc_id, r.text, r.period, r.where)
               for position, r in enumerate(rows)]
    try:
        await conn.copy_records_to_table("ingest_staging", records=records, columns=_STAGING_COLUMNS)
        firms_added = _row_count(await conn.execute(_INSERT_FIRMS))
        await conn.execute(_FILL_FIRM_NAMES)
        await conn.execute(_INSERT_DOCUMENTS)
        conflicts = [f"{c['place']}: document {c['doc_id']!r} of firm {c['firm_id']!r} has period {c['stored']!r};"
                     f" this row gives {c['period']!r} (left out)"
                     for c in sorted(await conn.fetch(_TAKE_OUT_CONFLICTS), key=lambda c: c["position"])]
        sentences_added = _row_count(await conn.execute(_INSERT_SENTENCES))
    finally:
        await conn.execute("TRUNCATE ingest_staging")
    return sentences_added, firms_added, conflicts


def _row_count(status: str) -> int:
    """Rows affected, from a command status such as ``INSERT 0 42``."""
    return int(status.split()[-1])


async def ingest_file(pool: asyncpg.Pool, path: str | Path, *, chunk_rows: int = 5000,
                      window_s: float | None = None) -> IngestReport:
    """Load the corpus file ``path`` into ``firms`` and ``sentences``; return the report.

    Takes a pool on a database with the schema applied, the file, how many rows to read
    per chunk, and how long a dropped connection is retried (``DB_RETRY_WINDOW_S``; its
    default when None). The file is stored in one transaction, read and written chunk by
    chunk, so memory stays flat and the file is stored whole or not at all. A dropped
    connection rolls it back, and the file is ingested again on a fresh one. Progress is
    logged once per chunk.

    Raises ``IngestError`` (one line naming the file, and the line or row where it went
    wrong) for an input that cannot be ingested: unknown extension, missing file,
    directory, empty file, missing or repeated column, Parquet column of the wrong type
    or not UTF-8, a key twice in a JSON object, a file cut short or damaged, no valid
    row; nothing of the file is then stored. Bad rows do not raise: they are counted and
    listed in the report.
    """
    path = Path(path)
    log = get_logger("ingest").bind(path=str(path))

    async def attempt(conn: asyncpg.Connection) -> IngestReport:
        report = IngestReport(path=str(path))
        async with conn.transaction():
            await conn.execute(_CREATE_STAGING)
            await _write_chunks(conn, path, report, chunk_rows, log)
        return report

    started = time.monotonic()
    report = await with_connection_retry(pool, attempt, what="ingest a file", window_s=window_s)
    log.info("ingest_done", rows_read=report.rows_read, rows_valid=report.rows_valid,
             rows_added=report.rows_added, rows_already_present=report.rows_already_present,
             bad_rows=report.bad_rows, cleaned_rows=report.cleaned_rows, firms_seen=report.firms_seen,
             firms_added=report.firms_added, seconds=round(time.monotonic() - started, 2))
    return report


async def _write_chunks(conn: asyncpg.Connection, path: Path, report: IngestReport, chunk_rows: int, log) -> None:
    """Read ``path`` chunk by chunk into the open transaction on ``conn``, filling in
    ``report``. An ``IngestError`` found after rows were read says that none was kept
    (the caller's transaction rolls back)."""
    chunks = read_chunks(path, report, chunk_rows=chunk_rows)
    started = time.monotonic()
    try:
        while True:
            # Reading and parsing is blocking work: a worker thread keeps the event loop free.
            chunk = await asyncio.to_thread(next, chunks, None)
            if chunk is None:
                break
            sentences_added, firms_added, conflicts = await write_chunk(conn, chunk)
            for conflict in conflicts:  # found only now, against what is stored: valid no more
                report.rows_valid -= 1
                report.bad_rows += 1
                add_problem(report, log, f"{path}:{conflict}")
            report.rows_added += sentences_added
            report.rows_already_present += len(chunk) - len(conflicts) - sentences_added
            report.firms_added += firms_added
            _log_progress(log, report, started)
    except IngestError as exc:
        if report.rows_read:
            raise IngestError(f"{exc}; nothing of the file was stored") from None
        raise
    finally:
        chunks.close()  # releases the file at once, also when a write failed


def _log_progress(log, report: IngestReport, started: float) -> None:
    elapsed = max(time.monotonic() - started, 1e-9)
    log.info("ingest_progress", rows_read=report.rows_read, rows_added=report.rows_added,
             rows_per_s=round(report.rows_read / elapsed, 1), bad_rows=report.bad_rows)


async def ingest_corpus(pool: asyncpg.Pool, path: Path) -> IngestReport:
    """Load the corpus file ``path`` (``app.ingest.ingest_file``) and print its summary.

    Returns the ingest report; raises ``IngestError`` (exit 2) as ``ingest_file`` does.
    """
    report = await ingest_file(pool, path)
    print(report.summary())
    return report
