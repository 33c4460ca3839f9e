"""Ingesting into a real PostgreSQL: what lands in ``firms`` and ``sentences``.

Each test gets a fresh database (the ``pool`` fixture in conftest.py) and builds its
corpus file in ``tmp_path``.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from structlog.testing import capture_logs

from app.ingest import IngestError, ingest_file


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


async def stored_sentences(pool) -> list[tuple]:
    """(firm_id, doc_id, text) of every stored sentence, in sentence_id order."""
    rows = await pool.fetch("SELECT firm_id, doc_id, text FROM sentences ORDER BY sentence_id")
    return [tuple(r) for r in rows]


async def stored_firms(pool) -> dict[str, str | None]:
    return {r["firm_id"]: r["firm_name"] for r in await pool.fetch("SELECT firm_id, firm_name FROM firms")}


TEN = [{"firm_id": f"F{i % 3}", "doc_id": f"d{i % 2}", "sentence": f"Sentence {i}."} for i in range(10)]


async def test_jsonl_is_stored_in_file_order(pool, tmp_path):
    path = write_jsonl(tmp_path / "ten.jsonl", TEN)
    report = await ingest_file(pool, path)
    assert (report.rows_read, report.rows_valid, report.rows_added, report.rows_already_present) == (10, 10, 10, 0)
    assert (report.firms_seen, report.firms_added) == (3, 3)
    assert report.path == str(path)
    assert await stored_sentences(pool) == [(r["firm_id"], r["doc_id"], r["sentence"]) for r in TEN]
    assert await stored_firms(pool) == {"F0": None, "F1": None, "F2": None}


async def test_ingesting_the_same_file_twice_adds_nothing(pool, tmp_path):
    path = write_jsonl(tmp_path / "ten.jsonl.gz", TEN)
    await ingest_file(pool, path)
    again = await ingest_file(pool, path)
    assert (again.rows_valid, again.rows_added, again.rows_already_present) == (10, 0, 10)
    assert (again.firms_seen, again.firms_added) == (3, 0)
    assert await pool.fetchval("SELECT count(*) FROM sentences") == 10


async def test_chunks_of_three_give_the_same_result_and_log_progress(pool, tmp_path):
    path = write_jsonl(tmp_path / "ten.jsonl", TEN)
    with capture_logs() as logs:
        report = await ingest_file(pool, path, chunk_rows=3)
    assert (report.rows_added, report.firms_added, report.firms_seen) == (10, 3, 3)
    assert await stored_sentences(pool) == [(r["firm_id"], r["doc_id"], r["sentence"]) for r in TEN]
    progress = [e for e in logs if e["event"] == "ingest_progress"]
    assert [e["rows_read"] for e in progress] == [3, 6, 9, 10]
    assert [e["rows_added"] for e in progress] == [3, 6, 9, 10]
    assert all("rows_per_s" in e for e in progress)
    assert [e["event"] for e in logs][-1] == "ingest_done"


async def test_the_same_text_twice_in_a_document_is_stored_once(pool, tmp_path):
    path = write_jsonl(
        tmp_path / "dups.jsonl",
        [
            {"firm_id": "F", "doc_id": "call-1", "sentence": "Thank you."},
            {"firm_id": "F", "doc_id": "call-1", "sentence": "Thank you."},
            {"firm_id": "F", "doc_id": "call-2", "sentence": "Thank you."},
            {"firm_id": "F", "sentence": "Thank you."},
            {"firm_id": "F", "sentence": "Thank you."},
            {"firm_id": "G", "doc_id": "call-1", "sentence": "Thank you."},
        ],
    )
    report = await ingest_file(pool, path, chunk_rows=2)
    assert (report.rows_valid, report.rows_added, report.rows_already_present) == (6, 4, 2)
    assert await stored_sentences(pool) == [
        ("F", "call-1", "Thank you."),
        ("F", "call-2", "Thank you."),
        ("F", None, "Thank you."),
        ("G", "call-1", "Thank you."),
    ]


async def test_a_firm_in_several_places_is_one_firm_and_its_first_name_wins(pool, tmp_path):
    path = write_jsonl(
        tmp_path / "firms.jsonl",
        [
            {"firm_id": "A", "sentence": "a1"},
            {"firm_id": "B", "firm_name": "Bee Corp", "sentence": "b1"},
            {"firm_id": "A", "firm_name": "Alpha Inc", "sentence": "a2"},
            {"firm_id": "B", "firm_name": "Renamed", "sentence": "b2"},
            {"firm_id": "A", "firm_name": "Later Name", "sentence": "a3"},
        ],
    )
    report = await ingest_file(pool, path, chunk_rows=2)
    assert (report.firms_seen, report.firms_added, report.rows_added) == (2, 2, 5)
    assert await stored_firms(pool) == {"A": "Alpha Inc", "B": "Bee Corp"}


async def test_within_one_chunk_the_first_non_empty_name_wins(pool, tmp_path):
    path = write_jsonl(
        tmp_path / "names.jsonl",
        [
            {"firm_id": "A", "sentence": "a1"},
            {"firm_id": "A", "firm_name": " ", "sentence": "a2"},
            {"firm_id": "A", "firm_name": "Alpha Inc", "sentence": "a3"},
            {"firm_id": "A", "firm_name": "Later Name", "sentence": "a4"},
        ],
    )
    await ingest_file(pool, path)
    assert await stored_firms(pool) == {"A": "Alpha Inc"}


async def test_a_later_file_fills_in_a_missing_firm_name_but_never_replaces_one(pool, tmp_path):
    first = write_jsonl(tmp_path / "first.jsonl", [{"firm_id": "A", "sentence": "x"}, {"firm_id": "B", "firm_name": "Bee", "sentence": "y"}])
    second = write_jsonl(
        tmp_path / "second.jsonl",
        [{"firm_id": "A", "firm_name": "Alpha", "sentence": "z"}, {"firm_id": "B", "firm_name": "Other", "sentence": "w"}],
    )
    await ingest_file(pool, first)
    report = await ingest_file(pool, second)
    assert report.firms_added == 0
    assert await stored_firms(pool) == {"A": "Alpha", "B": "Bee"}


async def test_csv_and_parquet_are_stored(pool, tmp_path):
    csv_path = tmp_path / "c.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["firm_id", "firm_name", "doc_id", "sentence"])
        writer.writerow(["C", "Csv Co", "d", "From CSV, with a comma."])
    pq_path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"firm_id": pa.array([7], pa.int64()), "sentence": ["From Parquet."]}), pq_path)
    await ingest_file(pool, csv_path)
    await ingest_file(pool, str(pq_path))
    assert await stored_sentences(pool) == [("C", "d", "From CSV, with a comma."), ("7", None, "From Parquet.")]
    assert await stored_firms(pool) == {"C": "Csv Co", "7": None}


async def test_bad_rows_are_counted_and_the_good_ones_stored(pool, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b'{"firm_id": "F", "sentence": "Good."}\n'
        b'{"firm_id": "F", "sentence": "Bad \xff byte."}\n'
        b'not json\n'
        b'{"firm_id": "F", "sentence": ""}\n'
        b'{"firm_id": "F", "sentence": "Also good."}\n'
    )
    report = await ingest_file(pool, path)
    assert (report.rows_read, report.rows_valid, report.bad_rows, report.rows_added) == (5, 2, 3, 2)
    assert [p.split(": ")[0] for p in report.problems] == [f"{path}:line 2", f"{path}:line 3", f"{path}:line 4"]
    assert await stored_sentences(pool) == [("F", None, "Good."), ("F", None, "Also good.")]


async def test_nul_characters_are_removed_before_storing(pool, tmp_path):
    path = write_jsonl(tmp_path / "nul.jsonl", [{"firm_id": "F", "sentence": "Net\u0000 income rose."}])
    report = await ingest_file(pool, path)
    assert (report.cleaned_rows, report.rows_added) == (1, 1)
    assert await stored_sentences(pool) == [("F", None, "Net income rose.")]


async def test_a_one_megabyte_sentence_is_stored_whole(pool, tmp_path):
    sentence = "".join(f"token{i} " for i in range(150_000)).strip()
    assert len(sentence.encode("utf-8")) > 1_000_000
    path = write_jsonl(tmp_path / "big.jsonl", [{"firm_id": "F", "sentence": sentence}, {"firm_id": "F", "sentence": "small"}])
    report = await ingest_file(pool, path)
    assert report.rows_added == 2
    stored = await pool.fetchval("SELECT text FROM sentences WHERE length(text) > 1000")
    assert stored == sentence


async def assert_nothing_stored(pool) -> None:
    for table in ("firms", "documents", "sentences"):
        assert await pool.fetchval(f"SELECT count(*) FROM {table}") == 0, table


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def good_rows(n: int, start: int = 0) -> list[dict]:
    return [{"firm_id": f"F{i % 3}", "doc_id": f"d{i}", "period": "2020Q1", "sentence": f"Sentence {i}."}
            for i in range(start, start + n)]


async def test_a_truncated_gzip_is_refused_and_nothing_of_it_is_stored(pool, tmp_path):
    rows = [{"firm_id": f"F{i % 5}", "sentence": f"Distinct sentence {i} about item {i * 7919 % 10007}."} for i in range(4000)]
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode(), compresslevel=1)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IngestError) as exc:
        await ingest_file(pool, path, chunk_rows=500)  # several chunks read before the break
    assert re.fullmatch(rf"{re.escape(str(path))}:line \d+: the file ends early or is damaged here .*; "
                        "nothing of the file was stored", one_line(exc))
    await assert_nothing_stored(pool)


def parquet_with_bad_utf8(path: Path, rows: int, bad_row: int) -> Path:
    """A Parquet file whose ``sentence`` column holds invalid UTF-8 in row ``bad_row`` (from 1)
    (pyarrow's writer does not check; some other writers do not either)."""
    import numpy as np

    values = [f"Sentence {i}.".encode() for i in range(1, rows + 1)]
    values[bad_row - 1] = b"bad \xff\xfe bytes"
    offsets = np.cumsum([0] + [len(v) for v in values]).astype(np.int32)
    sentence = pa.Array.from_buffers(pa.string(), rows, [None, pa.py_buffer(offsets.tobytes()),
                                                         pa.py_buffer(b"".join(values))])
    pq.write_table(pa.table({"firm_id": [f"F{i % 3}" for i in range(rows)], "sentence": sentence}), path)
    return path


async def test_parquet_with_invalid_utf8_is_refused_naming_the_row(pool, tmp_path):
    path = parquet_with_bad_utf8(tmp_path / "bad.parquet", rows=10, bad_row=8)
    with pytest.raises(IngestError) as exc:
        await ingest_file(pool, path, chunk_rows=3)  # two chunks of good rows before it
    assert one_line(exc) == (f"{path}:row 8: column 'sentence' is not valid UTF-8 (byte 5); "
                             "nothing of the file was stored")
    await assert_nothing_stored(pool)


async def test_duplicate_parquet_columns_are_refused(pool, tmp_path):
    path = tmp_path / "dup.parquet"
    table = pa.Table.from_arrays([pa.array(["F", "G"]), pa.array(["A.", "B."]), pa.array(["C.", "D."])],
                                 names=["firm_id", "sentence", "sentence"])
    pq.write_table(table, path)
    with pytest.raises(IngestError) as exc:
        await ingest_file(pool, path)
    assert one_line(exc) == f"{path}: column 'sentence' appears 2 times (columns 2 and 3): which one is meant?"
    await assert_nothing_stored(pool)


async def test_duplicate_csv_headers_are_refused(pool, tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("firm_id,sentence,doc_id,sentence\nF,A.,d,B.\n", encoding="utf-8")
    with pytest.raises(IngestError) as exc:
        await ingest_file(pool, path)
    assert one_line(exc) == f"{path}:line 1: column 'sentence' appears 2 times (columns 2 and 4): which one is meant?"
    await assert_nothing_stored(pool)


async def test_a_duplicate_json_key_is_refused_naming_the_line(pool, tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", good_rows(6))
    with path.open("ab") as f:
        f.write(b'{"firm_id": "F", "sentence": "One.", "sentence": "Two."}\n')
    with pytest.raises(IngestError) as exc:
        await ingest_file(pool, path, chunk_rows=2)
    assert one_line(exc) == (f"{path}:line 7: key 'sentence' appears twice in one object: which one is meant?; "
                             "nothing of the file was stored")
    await assert_nothing_stored(pool)


async def test_an_error_after_some_chunks_leaves_nothing_of_the_file(pool, tmp_path):
    """A good file first, then one that fails late: the good one stays whole, and nothing
    of the failing one is stored, not even its own good chunks or its firms."""
    first = write_jsonl(tmp_path / "first.jsonl", good_rows(4))
    await ingest_file(pool, first)
    before = await stored_sentences(pool), await stored_firms(pool)
    later = write_jsonl(tmp_path / "later.jsonl", good_rows(9, start=100) + [{"firm_id": "NEW", "sentence": "x"}])
    with later.open("ab") as f:
        f.write(b'{"firm_id": "F", "sentence": "One.", "firm_id": "G"}\n')
    with pytest.raises(IngestError, match=r"later\.jsonl:line 11: key 'firm_id'"):
        await ingest_file(pool, later, chunk_rows=2)
    assert (await stored_sentences(pool), await stored_firms(pool)) == before
    assert await pool.fetchval("SELECT count(*) FROM documents") == 4


async def test_a_connection_dropped_during_an_ingest_is_retried_and_stores_the_file_once(pool, tmp_path):
    """The ingest's connection is terminated while it writes (held up by a lock the test
    holds on ``sentences``, then killed): the file is ingested again on a new connection,
    whole and once."""
    import asyncio

    rows = good_rows(20)
    path = write_jsonl(tmp_path / "twenty.jsonl", rows)
    async with pool.acquire() as holder:
        async with holder.transaction():
            await holder.execute("LOCK TABLE sentences IN EXCLUSIVE MODE")
            ingest = asyncio.create_task(ingest_file(pool, path, chunk_rows=5))
            for _ in range(300):
                waiting = await holder.fetchval("SELECT pid FROM pg_locks WHERE NOT granted"
                                                " AND relation = 'sentences'::regclass")
                if waiting:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the ingest never reached the sentences")
            assert await holder.fetchval("SELECT pg_terminate_backend($1)", waiting)
    report = await ingest
    assert (report.rows_read, report.rows_added, report.rows_already_present) == (20, 20, 0)
    assert await stored_sentences(pool) == [(r["firm_id"], r["doc_id"], r["sentence"]) for r in rows]


async def test_a_file_with_no_valid_row_writes_nothing(pool, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"firm_id": "F"}, {"firm_id": "G", "sentence": ""}] * 4)
    with pytest.raises(IngestError, match="bad.jsonl has no valid row"):
        await ingest_file(pool, path, chunk_rows=3)
    assert await pool.fetchval("SELECT count(*) FROM firms") == 0
    assert await pool.fetchval("SELECT count(*) FROM sentences") == 0


async def test_a_csv_without_the_sentence_column_writes_nothing(pool, tmp_path):
    path = tmp_path / "nocol.csv"
    path.write_text("firm_id,text\nF,Hello.\n", encoding="utf-8")
    with pytest.raises(IngestError, match=r"nocol\.csv has no 'sentence' column"):
        await ingest_file(pool, path)
    assert await pool.fetchval("SELECT count(*) FROM firms") == 0


async def test_input_errors_are_raised_before_anything_is_written(pool, tmp_path):
    with pytest.raises(IngestError, match="does not exist"):
        await ingest_file(pool, tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(IngestError, match="is empty"):
        await ingest_file(pool, tmp_path / "empty.jsonl")
    assert await pool.fetchval("SELECT count(*) FROM firms") == 0
