"""Corpus files: read one and check its rows, without touching the database.

A corpus file has one row per sentence, with ``firm_id`` and ``sentence`` (required) and
``firm_name``, ``doc_id`` and ``period`` (optional; a period is the document's, e.g.
``2020Q4``); other columns are ignored. Formats are told apart
by the file name: ``.jsonl``, ``.jsonl.gz``, ``.csv``, ``.csv.gz``, ``.parquet``.

``read_chunks`` streams the file — JSONL line by line, CSV through the ``csv`` module,
Parquet batch by batch — and checks every row. A bad row is never dropped silently: it is
counted and reported as ``<file>:line N: <reason>`` (Parquet: ``row N``), and the other
rows are kept. Errors that make the whole file unusable (unknown format, missing file,
missing column, ...) raise ``IngestError`` before anything is written.

This is the reading half of ingesting; ``app.ingest`` writes the checked rows.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import re
import zlib
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from app.errors import UsageError
from app.logs import get_logger

FORMATS = {
    ".jsonl.gz": "jsonl",
    ".csv.gz": "csv",
    ".jsonl": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
}
REQUIRED_COLUMNS = ("firm_id", "sentence")
OPTIONAL_COLUMNS = ("firm_name", "doc_id", "period")

# Only this many problem messages are kept in the report and logged one by one; after
# that they are only counted, so a file full of bad rows cannot flood memory or the log.
MAX_PROBLEMS = 100

# firm_id and doc_id are keys of B-tree indexes, whose entries must stay under ~2.7 kB;
# a longer id would make PostgreSQL reject the whole chunk, so it is a bad row instead.
MAX_ID_BYTES = 1000

# The csv module refuses fields over 128 kB by default; a sentence may be far longer
# (a 1 MB sentence must be stored whole). The limit still stops an unclosed quote from
# swallowing an entire file into one field.
CSV_FIELD_LIMIT = 256 * 1024 * 1024

# What the gzip module raises when a compressed file is cut short or damaged.
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)

# Lone UTF-16 surrogates: a JSON "\ud800" escape, or an undecodable byte in a CSV read
# with errors="surrogateescape". They cannot be encoded as UTF-8 for PostgreSQL.
_SURROGATE = re.compile("[\ud800-\udfff]")


class IngestError(UsageError):
    """The input cannot be ingested; ``str(exc)`` is one sentence naming the file."""


@dataclass(frozen=True)
class Row:
    """One checked sentence, ready to store."""

    firm_id: str
    firm_name: str | None
    doc_id: str | None
    text: str
    # When the document was written: any text that sorts in time order ("2020Q4", "2021").
    period: str | None = None
    # "line N" or "row N" of its file, for a problem found when writing; not part of the
    # row's value (the same row read from another line is the same row).
    where: str = field(default="", compare=False)


@dataclass
class IngestReport:
    """What one ``ingest_file`` call read, stored and found wrong.

    ``rows_read`` counts the rows of the file (blank lines are not rows); it equals
    ``rows_valid + bad_rows``. ``rows_valid = rows_added + rows_already_present``.
    ``problems`` holds the first ``MAX_PROBLEMS`` messages (bad rows, cleaned rows), each
    naming the file and the line or row.

    ``read_chunks`` fills in what was read and found wrong; ``app.ingest.ingest_file``
    adds what was stored (``rows_added``, ``rows_already_present``, ``firms_added``).
    """

    path: str
    rows_read: int = 0
    rows_valid: int = 0
    rows_added: int = 0
    rows_already_present: int = 0
    bad_rows: int = 0
    cleaned_rows: int = 0
    firms_seen: int = 0
    firms_added: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few human lines for stdout: the counts and the first problem."""
        lines = [
            f"{self.path}: {self.rows_read} rows read, {self.rows_valid} valid "
            f"({self.rows_added} sentences added, {self.rows_already_present} already present), "
            f"{self.bad_rows} bad, {self.cleaned_rows} cleaned; "
            f"{self.firms_seen} firms ({self.firms_added} new)."
        ]
        if (self.bad_rows or self.cleaned_rows) and self.problems:
            lines.append(f"First problem: {self.problems[0]}")
            unlisted = self.bad_rows + self.cleaned_rows - len(self.problems)
            if unlisted > 0:
                lines.append(f"({len(self.problems)} problems are listed in the log; {unlisted} more were only counted.)")
        return "\n".join(lines)


# --- reading -----------------------------------------------------------------------------


@dataclass
class _Record:
    """One row as it came out of the file, before checking.

    ``where`` is "line N" or "row N". ``fields`` is None when the row could not even be
    parsed; ``error`` then says why. ``ends_early`` marks the break of a cut file.
    """

    where: str
    fields: Mapping[str, object] | None
    error: str | None = None
    ends_early: bool = False


class _BadRow(Exception):
    """A row fails a check; the message is the reason shown to the user."""


def read_chunks(path: str | Path, report: IngestReport, *,
                chunk_rows: int = 5000) -> Generator[list[Row], None, None]:
    """Stream ``path`` as lists of checked rows, at most ``chunk_rows`` rows read per list.

    Takes the file, the report to fill in (counts and problems are added as rows are
    read) and the chunk size. Returns a generator of chunks, in file order; a caller
    that stops before the end calls its ``close()`` to release the file.

    The checks that can be made before reading (format, existence, header or Parquet
    schema) raise ``IngestError`` right away, from this call. A file that cannot be read
    to its end (cut short or damaged, a Parquet string that is not UTF-8, a JSON object
    with a key twice) raises ``IngestError`` where that is found, naming the line or row;
    so does, at the end, a file whose rows are all bad (or that has no rows).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    path = Path(path)
    records = _open_records(path, chunk_rows)
    return _checked_chunks(records, path, report, chunk_rows)


def _checked_chunks(records: Iterator[_Record], path: Path, report: IngestReport,
                    chunk_rows: int) -> Generator[list[Row], None, None]:
    log = get_logger("ingest").bind(path=str(path))
    firms: set[str] = set()  # grows with the number of firms, not of rows
    chunk: list[Row] = []
    read_in_chunk = 0
    try:
        for record in records:
            if record.ends_early:
                raise IngestError(f"{path}:{record.where}: {record.error}")
            report.rows_read += 1
            read_in_chunk += 1
            row = _check_record(record, path, report, log)
            if row is not None:
                chunk.append(row)
                firms.add(row.firm_id)
                report.firms_seen = len(firms)
            if read_in_chunk >= chunk_rows:
                if chunk:
                    yield chunk
                chunk, read_in_chunk = [], 0
    finally:
        _close(records)
    if chunk:
        yield chunk
    _refuse_if_nothing_valid(path, report)


def _check_record(record: _Record, path: Path, report: IngestReport, log) -> Row | None:
    """The record as a ``Row``, or None (counted and reported) when it is bad."""
    if record.fields is None:
        report.bad_rows += 1
        add_problem(report, log, f"{path}:{record.where}: {record.error}")
        return None
    try:
        row, nul_count = check_fields(record.fields)
    except _BadRow as exc:
        report.bad_rows += 1
        add_problem(report, log, f"{path}:{record.where}: {exc}")
        return None
    report.rows_valid += 1
    row = dataclasses.replace(row, where=record.where)
    if nul_count:
        report.cleaned_rows += 1
        plural = "" if nul_count == 1 else "s"
        add_problem(report, log, f"{path}:{record.where}: removed {nul_count} NUL character{plural} "
                                  "(PostgreSQL text cannot hold them)")
    return row


def _refuse_if_nothing_valid(path: Path, report: IngestReport) -> None:
    if report.rows_valid:
        return
    if report.rows_read == 0:
        raise IngestError(f"{path} has no rows: nothing to ingest")
    first = f"; first problem: {report.problems[0]}" if report.problems else ""
    raise IngestError(f"{path} has no valid row ({report.rows_read} rows read, {report.bad_rows} bad){first}")


def add_problem(report: IngestReport, log, message: str) -> None:
    """Keep and log the first ``MAX_PROBLEMS`` messages; the counters keep counting."""
    if len(report.problems) < MAX_PROBLEMS:
        report.problems.append(message)
        log.warning("ingest_problem", problem=message)


def _close(records: Iterator) -> None:
    close = getattr(records, "close", None)
    if close is not None:
        close()


# --- checking one row ---------------------------------------------------------------------


def check_fields(fields: Mapping[str, object]) -> tuple[Row, int]:
    """Check one row's fields and return ``(Row, number of NUL characters removed)``.

    Rules (the same for every format):
    * ``firm_id``: text or a whole number (numbers become text); surrounding whitespace
      is stripped; missing or empty is a bad row.
    * ``sentence``: must be text; stripped; missing or empty is a bad row.
    * ``firm_name``, ``doc_id``, ``period``: optional, text or a whole number; empty
      means absent. A period belongs to a document, so a row with a period needs a
      ``doc_id``.
    * NUL characters are removed (PostgreSQL text cannot hold them) and the row is kept.
    * Text that is not valid Unicode (an unpaired surrogate) is a bad row.

    Raises ``_BadRow`` with the reason.
    """
    removed = 0
    values: dict[str, str | None] = {}
    for name in ("firm_id", "firm_name", "doc_id", "period", "sentence"):
        value, nuls = _clean_text(name, fields.get(name), numbers_allowed=(name != "sentence"))
        values[name] = value
        removed += nuls
    for name in REQUIRED_COLUMNS:
        if values[name] is None:
            raise _BadRow(f"{name} is missing or empty")
    for name in ("firm_id", "doc_id", "period"):
        if values[name] is not None and len(values[name].encode("utf-8")) > MAX_ID_BYTES:
            raise _BadRow(f"{name} is longer than {MAX_ID_BYTES} bytes")
    if values["period"] is not None and values["doc_id"] is None:
        raise _BadRow("period given without doc_id: a period belongs to a document")
    row = Row(firm_id=values["firm_id"], firm_name=values["firm_name"], doc_id=values["doc_id"],
              text=values["sentence"], period=values["period"])
    return row, removed


def _clean_text(name: str, value: object, *, numbers_allowed: bool) -> tuple[str | None, int]:
    """One field as stripped text (None when absent or empty) and its NUL count."""
    if value is None:
        return None, 0
    # bool is a subclass of int in Python, but true/false is no identifier.
    if numbers_allowed and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        wanted = "text or a whole number" if numbers_allowed else "text"
        raise _BadRow(f"{name} must be {wanted}, got {_json_kind(value)}")
    nuls = value.count("\x00")
    if nuls:
        value = value.replace("\x00", "")
    if _SURROGATE.search(value):
        raise _BadRow(f"{name} is not valid Unicode (an unpaired surrogate)")
    value = value.strip()
    return (value or None), nuls


def _json_kind(value: object) -> str:
    """How a JSON reader would name the type of ``value``."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# --- opening a file ------------------------------------------------------------------------


def _open_records(path: Path, chunk_rows: int) -> Iterator[_Record]:
    """Check that ``path`` can be read at all, then return its records, unchecked.

    Raises ``IngestError`` for a file that cannot be ingested whatever its rows hold.
    """
    kind, compressed = _format_of(path)
    if not path.exists():
        raise IngestError(f"{path} does not exist")
    if path.is_dir():
        raise IngestError(f"{path} is a directory, not a corpus file")
    try:
        if path.stat().st_size == 0:
            raise IngestError(f"{path} is empty: nothing to ingest")
        if compressed:
            _require_gzip(path)
        if kind == "jsonl":
            return _jsonl_records(path, compressed)
        if kind == "csv":
            return _csv_records(path, compressed)
        return _parquet_records(path, chunk_rows)
    except PermissionError:
        raise IngestError(f"{path} cannot be read: permission denied") from None


def _format_of(path: Path) -> tuple[str, bool]:
    """``(format, gzip-compressed?)`` from the file name; IngestError if unknown."""
    name = path.name.lower()
    for ending, kind in FORMATS.items():
        if name.endswith(ending):
            return kind, ending.endswith(".gz")
    known = ", ".join(sorted(FORMATS, key=len))
    raise IngestError(f"{path} is not a corpus file this program reads: the name must end in one of {known}")


def _require_gzip(path: Path) -> None:
    with path.open("rb") as f:
        if f.read(2) != b"\x1f\x8b":
            raise IngestError(f"{path} is not a gzip file, though its name ends in .gz")


def _open_binary(path: Path, compressed: bool):
    return gzip.open(path, "rb") if compressed else path.open("rb")


# --- JSONL ---------------------------------------------------------------------------------


def _jsonl_records(path: Path, compressed: bool) -> Iterator[_Record]:
    """One record per non-blank line.

    Lines are read as bytes and decoded one by one, so invalid UTF-8 spoils only its own
    line. A gzip stream that is cut or damaged ends the records with an ``ends_early``
    record naming the line where it broke. A JSON object with a key twice raises
    ``IngestError``: which value is meant cannot be known.
    """
    line_no = 0
    with _open_binary(path, compressed) as stream:
        try:
            for line_no, raw in enumerate(stream, start=1):
                if not raw.strip():
                    continue  # a blank line is not a row
                yield _parse_jsonl_line(raw, line_no, path)
        except _GZIP_ERRORS as exc:
            yield _ends_early(f"line {line_no + 1}", exc)


class _DuplicateKey(ValueError):
    """A JSON object holds a key twice."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return value


# One decoder for every line: the json module builds a new one for each loads() given a hook.
_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys)


def _parse_jsonl_line(raw: bytes, line_no: int, path: Path) -> _Record:
    where = f"line {line_no}"
    if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte order mark, written by some editors
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _Record(where, None, f"invalid UTF-8 (byte {exc.start + 1} of the line)")
    try:
        value = _JSON.decode(text)
    except json.JSONDecodeError as exc:
        return _Record(where, None, f"not valid JSON ({exc.msg} at column {exc.colno})")
    except _DuplicateKey as exc:
        raise IngestError(f"{path}:{where}: key {str(exc)!r} appears twice in one object: which one is meant?") from None
    if not isinstance(value, dict):
        return _Record(where, None, f"not a JSON object (got {_json_kind(value)})")
    return _Record(where, value)


def _ends_early(where: str, exc: BaseException) -> _Record:
    reason = str(exc) or type(exc).__name__
    return _Record(where, None, f"the file ends early or is damaged here ({reason})", ends_early=True)


# --- CSV -----------------------------------------------------------------------------------


def _csv_records(path: Path, compressed: bool) -> Iterator[_Record]:
    """Read the header now (so a missing column is an error before any write), then
    return the data records. Line numbers count physical lines, the header being line 1."""
    # surrogateescape: an undecodable byte becomes a lone surrogate instead of stopping
    # the whole file; the row holding it is reported below. utf-8-sig drops a BOM.
    stream = io.TextIOWrapper(_open_binary(path, compressed), encoding="utf-8-sig",
                              errors="surrogateescape", newline="")
    try:
        reader = csv.reader(stream)
        header = _csv_header(reader, path)
    except BaseException:
        stream.close()
        raise
    return _csv_rows(stream, reader, header)


def _csv_header(reader, path: Path) -> dict[str, int]:
    """Column name -> position; IngestError when a required column is absent."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        names = next(reader, None)
    except (csv.Error, *_GZIP_ERRORS) as exc:
        raise IngestError(f"{path}: the header line cannot be read ({exc})") from None
    if names is None:
        raise IngestError(f"{path} is empty: nothing to ingest")
    names = [n.strip() for n in names]
    if any(_SURROGATE.search(n) for n in names):
        raise IngestError(f"{path}: the header line is not valid UTF-8")
    if repeated := _repeated_column(names):
        raise IngestError(f"{path}:line 1: {repeated}")
    for required in REQUIRED_COLUMNS:
        if required not in names:
            raise IngestError(f"{path} has no '{required}' column (found: {', '.join(names)})")
    return {name: names.index(name) for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if name in names}


def _repeated_column(names: list[str]) -> str | None:
    """What is wrong when a column name comes twice (which column is meant cannot be
    known), or None."""
    for name in dict.fromkeys(names):
        at = [str(i + 1) for i, n in enumerate(names) if n == name]
        if len(at) > 1:
            return (f"column '{name}' appears {len(at)} times (columns {', '.join(at[:-1])} and {at[-1]}): "
                    "which one is meant?")
    return None


def _csv_rows(stream, reader, header: dict[str, int]) -> Iterator[_Record]:
    with stream:
        while True:
            start = reader.line_num + 1  # the line this record starts on
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                # The csv reader starts afresh on the next line, so one malformed
                # record does not end the file.
                yield _Record(f"line {start}", None, f"not valid CSV ({exc})")
                continue
            except _GZIP_ERRORS as exc:
                yield _ends_early(f"line {start}", exc)
                return
            if not cells:
                continue  # a blank line is not a row
            yield _csv_record(cells, header, f"line {start}")


def _csv_record(cells: list[str], header: dict[str, int], where: str) -> _Record:
    if any(_SURROGATE.search(cell) for cell in cells):
        return _Record(where, None, "invalid UTF-8 bytes")
    # A short row lacks its last cells: they count as absent.
    fields = {name: cells[index] for name, index in header.items() if index < len(cells)}
    return _Record(where, fields)


# --- Parquet -------------------------------------------------------------------------------


def _parquet_records(path: Path, batch_size: int) -> Iterator[_Record]:
    """Check the schema now, then return one record per row, read batch by batch.

    A column has one type for the whole file, so a column of the wrong type (a
    ``sentence`` of numbers, a ``firm_id`` of floats) would make every row bad: it raises
    ``IngestError`` instead, before anything is written. Text columns may be plain,
    large or dictionary-encoded strings; id and name columns may also be integers. A
    column of nothing but nulls is accepted, and each of its rows is judged as usual.
    """
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise IngestError(f"{path} is not a readable Parquet file ({exc})") from None
    try:
        columns = _parquet_columns(path, parquet.schema_arrow)
    except IngestError:
        parquet.close()
        raise
    return _parquet_rows(parquet, columns, batch_size, path)


def _parquet_columns(path: Path, schema: pa.Schema) -> list[str]:
    """The columns to read; IngestError when one is missing, repeated or of the wrong type."""
    if repeated := _repeated_column(schema.names):
        raise IngestError(f"{path}: {repeated}")
    for required in REQUIRED_COLUMNS:
        if required not in schema.names:
            raise IngestError(f"{path} has no '{required}' column (found: {', '.join(schema.names)})")
    columns = [name for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if name in schema.names]
    for name in columns:
        _check_parquet_type(path, name, schema.field(name).type)
    return columns


def _check_parquet_type(path: Path, name: str, arrow_type: pa.DataType) -> None:
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    is_text = (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
               or getattr(pa.types, "is_string_view", lambda t: False)(arrow_type))
    if is_text or pa.types.is_null(arrow_type):
        return
    if name == "sentence":
        raise IngestError(f"{path}: column 'sentence' holds {arrow_type}, not text")
    if not pa.types.is_integer(arrow_type):
        raise IngestError(f"{path}: column '{name}' holds {arrow_type}, not text or whole numbers")


def _parquet_rows(parquet: pq.ParquetFile, columns: list[str], batch_size: int, path: Path) -> Iterator[_Record]:
    row_no = 0
    try:
        for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
            values = {name: _column_values(batch, name, row_no, path) for name in columns}
            for i in range(batch.num_rows):
                row_no += 1
                yield _Record(f"row {row_no}", {name: values[name][i] for name in columns})
    except (pa.ArrowException, OSError) as exc:
        yield _ends_early(f"row {row_no + 1}", exc)
    finally:
        parquet.close()


def _column_values(batch: pa.RecordBatch, name: str, rows_before: int, path: Path) -> list:
    """A batch's column as Python values. A string column's bytes are not checked when
    the file is written or read: invalid UTF-8 raises ``IngestError`` naming the row."""
    column = batch.column(name)
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        for i, value in enumerate(column):
            try:
                value.as_py()
            except UnicodeDecodeError as exc:
                raise IngestError(f"{path}:row {rows_before + i + 1}: column '{name}' is not valid UTF-8 "
                                  f"(byte {exc.start + 1})") from None
        raise
