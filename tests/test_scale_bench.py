"""``python bench/scale.py --sentences N``: the database part of a large study, on a
synthetic run, prints one JSON line per stage and command. Its figures are in
docs/benchmarks.md, section 10; here only what every line must hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import job_env

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["load", "themes", "attaching", "indexes", "periods"]
COMMANDS = {"status", "search theme", "search theme --firm", "search topic", "search topic --firm",
            "search sentence", "search sentence --firm", "show firm", "show theme", "show topic", "trends",
            "export", "report"}


@pytest.mark.results  # its theme stage clusters (in a process of its own)
def test_the_database_part_prints_a_line_per_stage_and_command(database_url, tmp_path):
    done = subprocess.run([sys.executable, "bench/scale.py", "--sentences", "20000"], cwd=ROOT,
                          env=job_env(database_url, tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    whats = [line["what"] for line in lines]
    assert whats[:5] == STAGES and whats[-1] == "sizes"
    assert COMMANDS <= set(whats)
    assert {f"{command}, model loaded" for command in COMMANDS if command.startswith("search")} <= set(whats)
    for line in lines:
        assert isinstance(line["seconds"], (int, float)) and line["seconds"] >= 0, line
        assert 0 < line["peak_rss_gb"] < 64, line  # a process's own peak, in GB (not KB, not bytes)
    by_what = {line["what"]: line for line in lines}
    assert by_what["load"]["sentences"] == 20000 and by_what["load"]["topics"] > 0
    assert by_what["themes"]["levels"][0] > 0
    assert by_what["periods"]["same_rows"]  # the kept counts give what the aggregation gave
    assert all(line["hits"] == 10 for line in lines if line["what"].endswith("model loaded"))
    assert by_what["export"]["bytes"] > 0 and by_what["report"]["bytes"] > 0
    tables = by_what["sizes"]["tables"]
    assert tables["sentence_topics"]["rows"] == 20000
    assert any(name.startswith("sentence_topics_embedding_hnsw") for name in tables["sentence_topics"]["indexes"])


async def test_the_database_part_wants_an_empty_database(pool, database_url, tmp_path):
    """A database that holds firms is not written into: the synthetic run would mix with them."""
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO firms (firm_id) VALUES ('F')")
    done = subprocess.run([sys.executable, "bench/scale.py", "--sentences", "1000"], cwd=ROOT,
                          env=job_env(database_url, tmp_path), capture_output=True, text=True)
    assert done.returncode != 0 and "holds firms already" in done.stderr
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM runs") == 0
