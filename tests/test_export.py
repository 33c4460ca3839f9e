"""``firmtopics export`` on the finished sample run: one Parquet file per table, row counts
equal to the tables', embeddings as fixed-size float32 lists of the run's dimension,
ids that join, and a ``run.json`` that traces the result without leaking a secret."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.cli import main
from app.errors import UsageError
from app.read.export import export_run
from support import one_line_error


@pytest.fixture
async def exported(conn, tmp_path):
    # Small chunks, so that the streaming path (several fetches, several row groups) is used.
    counts = await export_run(conn, "default", tmp_path / "out", chunk_rows=200)
    return tmp_path / "out", counts


@pytest.mark.results
async def test_row_counts_equal_the_tables(conn, exported):
    out, counts = exported
    run_id = await conn.fetchval("SELECT run_id FROM runs WHERE name = 'default'")
    expected = {
        "firms": await conn.fetchval("SELECT count(*) FROM run_firms WHERE run_id = $1", run_id),
        "themes": await conn.fetchval("SELECT count(*) FROM themes WHERE run_id = $1", run_id),
        "topics": await conn.fetchval("SELECT count(*) FROM topics WHERE run_id = $1", run_id),
        "sentences": await conn.fetchval("SELECT count(*) FROM sentence_topics WHERE run_id = $1", run_id),
    }
    assert counts == expected
    for stem, n in expected.items():
        assert pq.read_metadata(out / f"{stem}.parquet").num_rows == n
    assert pq.ParquetFile(out / "sentences.parquet").num_row_groups == -(-expected["sentences"] // 200)
    assert not list(out.glob("*.partial"))


@pytest.mark.results
async def test_embeddings_are_fixed_size_float32_and_match_the_database(conn, exported):
    out, _ = exported
    for stem in ("themes", "topics", "sentences"):
        table = pq.read_table(out / f"{stem}.parquet")
        assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
        assert table.column("embedding").null_count == 0
    sentences = pq.read_table(out / "sentences.parquet").to_pandas()
    matrix = np.stack(sentences["embedding"].to_numpy())
    assert matrix.shape == (len(sentences), 384) and matrix.dtype == np.float32
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1, atol=1e-3)
    row = sentences.iloc[123]
    stored = await conn.fetchval("SELECT embedding FROM sentence_topics WHERE sentence_id = $1",
                                 int(row["sentence_id"]))
    assert np.array_equal(matrix[123], stored.to_numpy())
    assert row["text"] == await conn.fetchval("SELECT text FROM sentences WHERE sentence_id = $1",
                                              int(row["sentence_id"]))


@pytest.mark.results
async def test_the_files_join_like_the_tables(exported):
    out, _ = exported
    firms = pq.read_table(out / "firms.parquet").to_pandas()
    themes = pq.read_table(out / "themes.parquet").to_pandas()
    topics = pq.read_table(out / "topics.parquet").to_pandas()
    sentences = pq.read_table(out / "sentences.parquet").to_pandas()
    assert set(topics["theme_id"]) <= set(themes["theme_id"])
    assert set(sentences["topic_id"].dropna()) == set(topics["topic_id"])
    assert set(sentences["firm_id"]) == set(firms["firm_id"])
    merged = sentences.dropna(subset=["topic_id"]).merge(topics[["topic_id", "theme_id"]], on="topic_id",
                                                          suffixes=("", "_of_topic"))
    assert (merged["theme_id"] == merged["theme_id_of_topic"]).all()
    assert sentences["topic_id"].isna().sum() == firms["n_outliers"].sum()
    assert set(sentences["topic_assignment"].dropna()) <= {"cluster", "nearest"}
    assert sentences["topic_assignment"].isna().sum() == sentences["topic_id"].isna().sum()
    assert list(topics["keywords"].iloc[0]) and list(topics["evidence_sentence_ids"].iloc[0])
    assert (firms["status"].isin(["done", "skipped"])).all()


@pytest.mark.results
def test_cli_export_prints_files_and_writes_run_json_without_secrets(cli_env, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("XAI_API_KEY", "xai-not-a-real-key-but-secret")
    assert main(["export", "--out", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    for stem in ("firms", "themes", "topics", "sentences"):
        assert f"{stem}.parquet" in out
    assert "1,120 rows" in out
    manifest = (tmp_path / "x" / "run.json").read_text()
    assert "xai-not-a-real-key-but-secret" not in manifest
    assert cli_env not in manifest  # the database URL
    run = json.loads(manifest)
    assert run["model"] == "all-MiniLM-L6-v2" and run["embedding_dim"] == 384
    assert run["settings"]["seed"] == 42 and "bertopic" in run["package_versions"]
    assert run["export"]["files"]["sentences.parquet"] == 1120
    assert pq.read_schema(tmp_path / "x" / "topics.parquet").metadata[b"firmtopics.model"] == b"all-MiniLM-L6-v2"


@pytest.mark.results
def test_cli_export_of_an_unknown_run_exits_2(cli_env, tmp_path, capsys):
    assert "no run named 'nope'" in one_line_error(capsys, ["export", "--out", str(tmp_path), "--run", "nope"])


async def test_a_run_that_is_not_complete_is_not_exported(pool, tmp_path):
    async with pool.acquire() as connection:
        await connection.execute(
            "INSERT INTO runs (name, settings, model, embedding_dim, package_versions, status)"
            " VALUES ('default', '{}', 'all-MiniLM-L6-v2', 384, '{}', 'running')")
        with pytest.raises(UsageError, match="not complete"):
            await export_run(connection, "default", tmp_path)


@pytest.mark.results
async def test_themes_of_every_level_export_with_their_parent(levelled_conn, tmp_path):
    await export_run(levelled_conn, "default", tmp_path / "levels")
    themes = pq.read_table(tmp_path / "levels" / "themes.parquet").to_pandas()
    stored = await levelled_conn.fetch("SELECT theme_id, level, parent_theme_id FROM themes")
    assert sorted(themes["level"].unique()) == [1, 2]
    exported = {(int(r.theme_id), int(r.level), None if np.isnan(r.parent_theme_id) else int(r.parent_theme_id))
                for r in themes.itertuples()}
    assert exported == {(r["theme_id"], r["level"], r["parent_theme_id"]) for r in stored}
    # Every parent is a theme of the file, one level up.
    level_of = dict(zip(themes["theme_id"], themes["level"]))
    for row in themes.dropna(subset=["parent_theme_id"]).itertuples():
        assert level_of[int(row.parent_theme_id)] == row.level + 1


# --- the files are replaced whole, never written in place ----------------------------------


def mark_as_previous(out) -> dict[str, bytes]:
    """Rewrite each exported file so that it is told apart from a new export of the same
    run (Parquet: a metadata key; run.json: a field); returns the files' bytes."""
    for path in out.glob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"previous": b"yes"}), path)
    manifest = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**manifest, "previous": True}))
    return {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.mark.results
async def test_an_export_killed_midway_leaves_the_previous_export_whole(conn, sample_run, tmp_path):
    import asyncio
    import os
    import signal
    import sys

    out = tmp_path / "out"
    await export_run(conn, "default", out)
    previous = mark_as_previous(out)
    # The export reads the sentences last: holding their table makes it wait there, with
    # firms, themes and topics already written, and it is killed right then.
    env = {**os.environ, "DATABASE_URL": sample_run, "LOG_FORMAT": "json"}
    async with conn.transaction():
        await conn.execute("LOCK TABLE sentence_topics IN ACCESS EXCLUSIVE MODE")
        process = await asyncio.create_subprocess_exec(sys.executable, "-m", "app", "export", "--out", str(out),
                                                       env=env, stdout=asyncio.subprocess.DEVNULL,
                                                       stderr=asyncio.subprocess.DEVNULL)
        for _ in range(600):
            if await conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"
                                   " AND relation = 'sentence_topics'::regclass"):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the export never reached the sentences")
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == previous
    # The next export replaces every file and leaves nothing of the killed one behind.
    await export_run(conn, "default", out)
    assert sorted(p.name for p in out.iterdir()) == sorted(previous)
    assert all(b"previous" not in pq.read_schema(p).metadata for p in out.glob("*.parquet"))
    assert "previous" not in json.loads((out / "run.json").read_text())


@pytest.mark.results
async def test_export_replaces_a_symlink_and_never_writes_through_it(conn, tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    for name in ("run.json", "themes.parquet"):
        (elsewhere / name).write_text("not the export's to touch")
        (out / name).symlink_to(elsewhere / name)
    await export_run(conn, "default", out)
    for name in ("run.json", "themes.parquet"):
        assert (elsewhere / name).read_text() == "not the export's to touch"
        assert not (out / name).is_symlink()
    assert json.loads((out / "run.json").read_text())["model"] == "all-MiniLM-L6-v2"
