"""Reading and checking corpus files, without a database.

``read_chunks`` is the reading half of ``ingest_file``: it turns a file into chunks of
checked rows and records every problem in the report. Each test builds a small file in
``tmp_path``.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from structlog.testing import capture_logs

from app.corpus import IngestError, IngestReport, Row, read_chunks


def write_jsonl(path: Path, rows: list) -> Path:
    """One JSON value per line (dicts, or raw strings written as they are)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    import io

    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    data = buffer.getvalue().encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def read_all(path: Path, chunk_rows: int = 5000) -> tuple[list[Row], IngestReport, list[list[Row]]]:
    """All rows of ``path``, the report, and the chunks as they came."""
    report = IngestReport(path=str(path))
    chunks = list(read_chunks(path, report, chunk_rows=chunk_rows))
    rows = [row for chunk in chunks for row in chunk]
    return rows, report, chunks


# --- the formats -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz", "CORPUS.JSONL"])
def test_jsonl_rows_are_read_in_file_order(tmp_path, name):
    path = write_jsonl(
        tmp_path / name,
        [
            {"firm_id": "AAPL", "firm_name": "Apple", "doc_id": "q1", "sentence": "Revenue grew.", "extra": 1},
            {"firm_id": 42, "sentence": "  Margins fell.  "},
            {"firm_id": " MSFT ", "doc_id": 7, "sentence": "Cloud is up.", "firm_name": ""},
        ],
    )
    rows, report, _ = read_all(path)
    assert rows == [
        Row(firm_id="AAPL", firm_name="Apple", doc_id="q1", text="Revenue grew."),
        Row(firm_id="42", firm_name=None, doc_id=None, text="Margins fell."),
        Row(firm_id="MSFT", firm_name=None, doc_id="7", text="Cloud is up."),
    ]
    assert (report.rows_read, report.rows_valid, report.bad_rows, report.cleaned_rows) == (3, 3, 0, 0)
    assert report.firms_seen == 3
    assert report.problems == []


@pytest.mark.parametrize("name", ["corpus.csv", "corpus.csv.gz"])
def test_csv_rows_are_read_with_quoted_newlines(tmp_path, name):
    path = write_csv(
        tmp_path / name,
        ["doc_id", "firm_id", "sentence", "firm_name", "ignored"],
        [
            ["q1", "AAPL", "Revenue grew.", "Apple", "x"],
            ["", "AAPL", "A sentence\nover two lines.", "", "y"],
            ["q2", "", "No firm here.", "", "z"],
            ["q2", "MSFT", "Cloud is up.", "Microsoft", "z"],
        ],
    )
    rows, report, _ = read_all(path)
    assert rows == [
        Row(firm_id="AAPL", firm_name="Apple", doc_id="q1", text="Revenue grew."),
        Row(firm_id="AAPL", firm_name=None, doc_id=None, text="A sentence\nover two lines."),
        Row(firm_id="MSFT", firm_name="Microsoft", doc_id="q2", text="Cloud is up."),
    ]
    # The header is line 1; the quoted newline makes the third record start on line 5.
    assert report.problems == [f"{path}:line 5: firm_id is missing or empty"]
    assert (report.rows_read, report.rows_valid, report.bad_rows) == (4, 3, 1)
    assert report.firms_seen == 2


def test_csv_with_a_byte_order_mark_and_a_short_row(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefffirm_id,sentence,doc_id\nF1,Hello there.\nF2,Second.,d\n".encode("utf-8"))
    rows, report, _ = read_all(path)
    assert rows == [
        Row(firm_id="F1", firm_name=None, doc_id=None, text="Hello there."),
        Row(firm_id="F2", firm_name=None, doc_id="d", text="Second."),
    ]
    assert report.bad_rows == 0


def test_parquet_rows_are_read_and_numbered(tmp_path):
    path = tmp_path / "corpus.parquet"
    table = pa.table(
        {
            "firm_id": pa.array([1, 2, None, 1], type=pa.int64()),
            "sentence": pa.array(["One.", "Two.", "Three.", None], type=pa.large_string()),
            "doc_id": pa.array(["a", None, "c", "d"]),
            "firm_name": pa.array(["First", "Second", None, None]).dictionary_encode(),
            "score": pa.array([0.1, 0.2, 0.3, 0.4]),
        }
    )
    pq.write_table(table, path, row_group_size=2)
    rows, report, _ = read_all(path)
    assert rows == [
        Row(firm_id="1", firm_name="First", doc_id="a", text="One."),
        Row(firm_id="2", firm_name="Second", doc_id=None, text="Two."),
    ]
    assert report.problems == [
        f"{path}:row 3: firm_id is missing or empty",
        f"{path}:row 4: sentence is missing or empty",
    ]
    assert (report.rows_read, report.rows_valid, report.bad_rows) == (4, 2, 2)


def test_parquet_without_optional_columns(tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"sentence": ["A.", "B."], "firm_id": ["F", "G"]}), path)
    rows, report, _ = read_all(path)
    assert rows == [Row("F", None, None, "A."), Row("G", None, None, "B.")]


# --- files that cannot be ingested at all ----------------------------------------------


def test_unknown_extension_is_refused(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("firm_id,sentence\nF,Hi.\n")
    with pytest.raises(IngestError, match=r"corpus\.txt.*\.jsonl.*\.parquet"):
        read_all(path)


def test_missing_file_is_refused(tmp_path):
    path = tmp_path / "nowhere.jsonl"
    with pytest.raises(IngestError, match=r"nowhere\.jsonl does not exist"):
        read_all(path)


def test_directory_is_refused(tmp_path):
    path = tmp_path / "folder.jsonl"
    path.mkdir()
    with pytest.raises(IngestError, match=r"folder\.jsonl is a directory"):
        read_all(path)


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.csv", "empty.parquet", "empty.jsonl.gz"])
def test_empty_file_is_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(IngestError, match=rf"{name.replace('.', '[.]')} is empty"):
        read_all(path)


def test_gzip_of_nothing_and_blank_lines_count_as_empty(tmp_path):
    gz = tmp_path / "nothing.jsonl.gz"
    gz.write_bytes(gzip.compress(b""))
    with pytest.raises(IngestError, match=r"nothing\.jsonl\.gz has no rows"):
        read_all(gz)
    blank = tmp_path / "blank.jsonl"
    blank.write_bytes(b"\n  \n\n")
    with pytest.raises(IngestError, match=r"blank\.jsonl has no rows"):
        read_all(blank)


def test_csv_with_only_a_header_has_no_rows(tmp_path):
    path = write_csv(tmp_path / "header.csv", ["firm_id", "sentence"], [])
    with pytest.raises(IngestError, match=r"header\.csv has no rows"):
        read_all(path)


def test_a_file_with_no_valid_row_is_refused_with_the_first_problem(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"firm_id": "F"}, {"sentence": "x"}])
    with pytest.raises(IngestError) as caught:
        read_all(path)
    message = str(caught.value)
    assert "bad.jsonl has no valid row" in message
    assert "2 rows read" in message
    assert f"{path}:line 1: sentence is missing or empty" in message
    assert "\n" not in message


def test_a_gz_file_that_is_not_gzip_is_refused(tmp_path):
    path = tmp_path / "fake.jsonl.gz"
    path.write_text('{"firm_id": "F", "sentence": "x"}\n')
    with pytest.raises(IngestError, match=r"fake\.jsonl\.gz is not a gzip file"):
        read_all(path)


@pytest.mark.parametrize("name", ["corpus.csv", "corpus.csv.gz"])
def test_csv_without_a_required_column_names_the_column(tmp_path, name):
    path = write_csv(tmp_path / name, ["firm_id", "text"], [["F", "Hello."]])
    with pytest.raises(IngestError, match=r"corpus\.csv(\.gz)? has no 'sentence' column \(found: firm_id, text\)"):
        read_all(path)


def test_parquet_without_a_required_column_names_the_column(tmp_path):
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"sentence": ["Hello."]}), path)
    with pytest.raises(IngestError, match=r"corpus\.parquet has no 'firm_id' column \(found: sentence\)"):
        read_all(path)


def test_parquet_sentence_of_the_wrong_type_is_refused_whole(tmp_path):
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"firm_id": ["F"], "sentence": pa.array([17], type=pa.int32())}), path)
    with pytest.raises(IngestError, match=r"ints\.parquet: column 'sentence' holds int32, not text"):
        read_all(path)


def test_parquet_firm_id_of_the_wrong_type_is_refused_whole(tmp_path):
    path = tmp_path / "floats.parquet"
    pq.write_table(pa.table({"firm_id": [1.5], "sentence": ["Hello."]}), path)
    with pytest.raises(IngestError, match=r"floats\.parquet: column 'firm_id' holds double, not text or whole numbers"):
        read_all(path)


def test_a_file_that_is_not_parquet_is_refused(tmp_path):
    path = tmp_path / "fake.parquet"
    path.write_text("firm_id,sentence\nF,Hi.\n")
    with pytest.raises(IngestError, match=r"fake\.parquet is not a readable Parquet file"):
        read_all(path)


# --- bad rows: reported with file and line, the other rows kept ------------------------


def test_each_bad_jsonl_row_is_reported_with_its_line(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"firm_id": "F", "sentence": "Good one."},  # 1
            {"sentence": "No firm."},  # 2
            {"firm_id": "   ", "sentence": "Blank firm."},  # 3
            {"firm_id": "F"},  # 4
            {"firm_id": "F", "sentence": "  "},  # 5
            {"firm_id": "F", "sentence": 12},  # 6
            "{not json",  # 7
            "[1, 2]",  # 8
            {"firm_id": 1.5, "sentence": "Float firm."},  # 9
            {"firm_id": True, "sentence": "Bool firm."},  # 10
            {"firm_id": "F", "sentence": "Also good."},  # 11
            {"firm_id": "F", "doc_id": ["x"], "sentence": "List doc."},  # 12
        ],
    )
    rows, report, _ = read_all(path)
    assert [r.text for r in rows] == ["Good one.", "Also good."]
    p = str(path)
    assert report.problems[0] == f"{p}:line 2: firm_id is missing or empty"
    assert report.problems[1] == f"{p}:line 3: firm_id is missing or empty"
    assert report.problems[2] == f"{p}:line 4: sentence is missing or empty"
    assert report.problems[3] == f"{p}:line 5: sentence is missing or empty"
    assert report.problems[4] == f"{p}:line 6: sentence must be text, got a number"
    assert report.problems[5].startswith(f"{p}:line 7: not valid JSON")
    assert report.problems[6] == f"{p}:line 8: not a JSON object (got a list)"
    assert report.problems[7] == f"{p}:line 9: firm_id must be text or a whole number, got a number"
    assert report.problems[8] == f"{p}:line 10: firm_id must be text or a whole number, got true/false"
    assert report.problems[9] == f"{p}:line 12: doc_id must be text or a whole number, got a list"
    assert (report.rows_read, report.rows_valid, report.bad_rows) == (12, 2, 10)


def test_invalid_utf8_in_a_jsonl_line_reports_that_line_only(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(
        b'{"firm_id": "F", "sentence": "Caf\xc3\xa9 sales rose."}\n'
        b'{"firm_id": "F", "sentence": "Broken \xff\xfe bytes."}\n'
        b'{"firm_id": "F", "sentence": "Last one."}\n'
    )
    rows, report, _ = read_all(path)
    assert [r.text for r in rows] == ["Café sales rose.", "Last one."]
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"{path}:line 2: invalid UTF-8")
    assert report.bad_rows == 1


def test_invalid_utf8_in_a_csv_row_reports_that_line_only(tmp_path):
    path = tmp_path / "bytes.csv"
    path.write_bytes(b"firm_id,sentence\nF,Fine.\nF,Bad \xff byte.\nF,Fine again.\n")
    rows, report, _ = read_all(path)
    assert [r.text for r in rows] == ["Fine.", "Fine again."]
    assert report.problems == [f"{path}:line 3: invalid UTF-8 bytes"]


def test_an_unpaired_surrogate_escape_is_a_bad_row(tmp_path):
    path = write_jsonl(
        tmp_path / "surrogate.jsonl",
        ['{"firm_id": "F", "sentence": "half \\ud800 a pair"}', {"firm_id": "F", "sentence": "ok"}],
    )
    rows, report, _ = read_all(path)
    assert [r.text for r in rows] == ["ok"]
    assert report.problems == [f"{path}:line 1: sentence is not valid Unicode (an unpaired surrogate)"]


def test_an_overlong_firm_id_is_a_bad_row(tmp_path):
    path = write_jsonl(tmp_path / "long.jsonl", [{"firm_id": "F" * 5000, "sentence": "x"}, {"firm_id": "F", "sentence": "y"}])
    rows, report, _ = read_all(path)
    assert [r.text for r in rows] == ["y"]
    assert report.problems == [f"{path}:line 1: firm_id is longer than 1000 bytes"]


def test_nul_characters_are_removed_and_the_row_kept(tmp_path):
    path = write_jsonl(
        tmp_path / "nul.jsonl",
        [
            {"firm_id": "F\u0000", "firm_name": "A\u0000B", "sentence": "Re\u0000venue\u0000 grew."},
            {"firm_id": "F", "sentence": "\u0000"},
        ],
    )
    rows, report, _ = read_all(path)
    assert rows == [Row(firm_id="F", firm_name="AB", doc_id=None, text="Revenue grew.")]
    assert report.cleaned_rows == 1
    assert report.bad_rows == 1
    assert report.problems == [
        f"{path}:line 1: removed 4 NUL characters (PostgreSQL text cannot hold them)",
        f"{path}:line 2: sentence is missing or empty",
    ]


@pytest.mark.parametrize("name", ["big.jsonl", "big.csv", "big.parquet"])
def test_a_one_megabyte_sentence_is_read_whole(tmp_path, name):
    sentence = "word " * 200_000 + "end."
    path = tmp_path / name
    if name.endswith(".jsonl"):
        write_jsonl(path, [{"firm_id": "F", "sentence": sentence}])
    elif name.endswith(".csv"):
        write_csv(path, ["firm_id", "sentence"], [["F", sentence]])
    else:
        pq.write_table(pa.table({"firm_id": ["F"], "sentence": [sentence]}), path)
    rows, report, _ = read_all(path)
    assert len(rows) == 1 and rows[0].text == sentence.strip()
    assert len(rows[0].text) > 1_000_000
    assert report.problems == []


# --- a file that ends early -------------------------------------------------------------


def cut_gzip(path: Path, rows: int, keep_fraction: float = 0.5, keep_bytes: int | None = None) -> list[str]:
    """Write ``rows`` JSONL or CSV rows gzip-compressed, then cut the file; return the sentences."""
    sentences = [f"Sentence number {i} says something distinct about firm {i % 7}." for i in range(rows)]
    if path.name.endswith(".jsonl.gz"):
        text = "".join(json.dumps({"firm_id": f"F{i % 7}", "sentence": s}) + "\n" for i, s in enumerate(sentences))
    else:
        text = "firm_id,sentence\n" + "".join(f"F{i % 7},{s}\n" for i, s in enumerate(sentences))
    # Level 1 and varied text keep the compressed stream long enough to cut in the middle.
    data = gzip.compress(text.encode("utf-8"), compresslevel=1)
    keep = int(len(data) * keep_fraction) if keep_bytes is None else keep_bytes
    path.write_bytes(data[:keep])
    return sentences


@pytest.mark.parametrize("name", ["cut.jsonl.gz", "cut.csv.gz"])
def test_a_truncated_gzip_is_refused_where_it_breaks(tmp_path, name):
    """The chunks before the break are read, then the file is refused, naming the line
    where it broke (the ingest then stores none of them: tests/test_ingest_db.py)."""
    path = tmp_path / name
    sentences = cut_gzip(path, 5000)
    report = IngestReport(path=str(path))
    chunks = read_chunks(path, report, chunk_rows=1000)
    rows = []
    with pytest.raises(IngestError) as exc:
        for chunk in chunks:
            rows.extend(chunk)
    assert 0 < report.rows_read < len(sentences)
    first_line = 1 if name.endswith(".jsonl.gz") else 2
    assert str(exc.value).startswith(f"{path}:line {first_line + report.rows_read}: the file ends early or is damaged")
    assert "\n" not in str(exc.value)
    assert [r.text for r in rows] == sentences[: len(rows)]  # only whole rows were read before it


def test_a_truncated_gzip_with_no_whole_row_is_refused(tmp_path):
    path = tmp_path / "stub.jsonl.gz"
    cut_gzip(path, 5000, keep_bytes=14)  # the 10-byte header and a few bytes of data
    with pytest.raises(IngestError, match=r"stub\.jsonl\.gz:line 1: the file ends early"):
        read_all(path)


# --- chunks, counts, logs, summary ------------------------------------------------------


def test_chunks_hold_at_most_chunk_rows_rows(tmp_path):
    path = write_jsonl(tmp_path / "ten.jsonl", [{"firm_id": f"F{i % 3}", "sentence": f"S{i}"} for i in range(10)])
    rows, report, chunks = read_all(path, chunk_rows=3)
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert [r.text for r in rows] == [f"S{i}" for i in range(10)]
    assert report.firms_seen == 3


def test_chunks_count_bad_rows_towards_their_size(tmp_path):
    # Chunks follow rows read, so a stretch of bad rows still ends a chunk (and logs progress).
    path = write_jsonl(tmp_path / "gaps.jsonl", [{"firm_id": "F", "sentence": "A"}, {"firm_id": "F"}, {"firm_id": "F"},
                                                 {"firm_id": "F", "sentence": "B"}])
    _, _, chunks = read_all(path, chunk_rows=2)
    assert [[r.text for r in c] for c in chunks] == [["A"], ["B"]]


def test_chunk_rows_must_be_positive(tmp_path):
    path = write_jsonl(tmp_path / "one.jsonl", [{"firm_id": "F", "sentence": "A"}])
    with pytest.raises(ValueError, match="chunk_rows"):
        read_all(path, chunk_rows=0)


def test_only_the_first_hundred_problems_are_kept_and_logged(tmp_path):
    path = write_jsonl(tmp_path / "many.jsonl", [{"firm_id": "F"}] * 105 + [{"firm_id": "F", "sentence": "ok"}])
    with capture_logs() as logs:
        rows, report, _ = read_all(path)
    assert len(rows) == 1
    assert report.bad_rows == 105
    assert len(report.problems) == 100
    assert report.problems[-1] == f"{path}:line 100: sentence is missing or empty"
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 100
    assert warnings[0]["event"] == "ingest_problem"
    assert warnings[0]["problem"] == f"{path}:line 1: sentence is missing or empty"


def test_summary_states_the_counts_and_the_first_problem():
    report = IngestReport(
        path="c.jsonl.gz", rows_read=10, rows_valid=8, rows_added=5, rows_already_present=3, bad_rows=2,
        cleaned_rows=1, firms_seen=2, firms_added=1, problems=["c.jsonl.gz:line 4: sentence is missing or empty"],
    )
    text = report.summary()
    assert "c.jsonl.gz" in text
    for phrase in ["10 rows read", "8 valid", "5 sentences added", "3 already present", "2 bad", "1 cleaned",
                   "2 firms", "1 new"]:
        assert phrase in text
    assert "First problem: c.jsonl.gz:line 4: sentence is missing or empty" in text
    assert len(text.splitlines()) <= 5
