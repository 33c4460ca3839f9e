"""``firmtopics run --dry-run``: the expected topics, themes, requests, tokens and cost,
with nothing ingested and nothing written, on a fresh database (a sample of firms is
clustered) and on one with a finished run (its figures are used)."""

from __future__ import annotations

import re
import tracemalloc

import pytest

from app.cli import main
from app.corpus import Row
from app.estimate import firm_sizes, firm_texts, themes_for
from app.sample import sample_rows
from app.settings import RunSettings
from support import TABLES, fetch, offline_env


def figures(out: str) -> dict[str, int]:
    """The numbers of the dry run's lines, by name."""
    found = {}
    for name, pattern in {"firms": r"corpus: (\d+) firms", "sentences": r"firms, (\d+) sentences",
                          "topics": r"expected: (\d+) topics", "themes": r"topics, (\d+) themes",
                          "requests": r": (\d+) requests", "prompt_tokens": r"about ([\d,]+) prompt",
                          "cached": r"about (\d+) of those requests"}.items():
        found[name] = int(re.search(pattern, out).group(1).replace(",", ""))
    return found


@pytest.mark.results
def test_a_dry_run_on_a_fresh_database_clusters_a_sample_and_writes_nothing(
        database_url, monkeypatch, tmp_path, sample_corpus, sample_run, capsys):
    offline_env(monkeypatch, database_url, tmp_path)
    monkeypatch.setenv("LLM_PRICE_PROMPT_PER_M", "0.2")
    monkeypatch.setenv("LLM_PRICE_COMPLETION_PER_M", "0.5")
    assert main(["run", "--dry-run", "--input", str(sample_corpus)]) == 0
    out = capsys.readouterr().out
    found = figures(out)
    assert (found["firms"], found["sentences"]) == (9, len(list(sample_rows())))
    assert "a sample of 3 firms clustered now" in out
    # Near what a real run of the same corpus found (59 against 61 when written).
    actual = fetch(sample_run, "SELECT count(*) AS n FROM topics")[0]["n"]
    assert abs(found["topics"] - actual) <= 0.25 * actual
    assert found["themes"] == themes_for(found["topics"], RunSettings())
    assert found["requests"] == found["topics"] + found["themes"] + 1 and found["cached"] == 0
    assert re.search(r"expected cost: about \d+\.\d\d", out)
    # Nothing was ingested or written: not even the schema.
    assert fetch(database_url, "SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public'")[0]["n"] == 0


@pytest.mark.results
def test_a_dry_run_after_a_finished_run_uses_its_figures(cli_env, sample_run, capsys):
    before = {t: fetch(sample_run, f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in TABLES}
    assert main(["run", "--dry-run"]) == 0
    out = capsys.readouterr().out
    found = figures(out)
    assert "the finished run 'default'" in out
    assert found["topics"] == before["topics"]  # the same corpus: the run's own count
    assert found["themes"] == themes_for(before["topics"], RunSettings())
    assert found["cached"] == 0  # named offline: nothing in the exchange log
    assert "LLM_PRICE_PROMPT_PER_M" in out  # no price given: says how to get a cost
    assert {t: fetch(sample_run, f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in TABLES} == before


def test_themes_for_follows_the_theme_stage():
    settings = RunSettings(theme_top_level_size=20)
    assert themes_for(3, settings) == 0  # too few topics for themes
    assert themes_for(100, settings) == 10  # sqrt(100): one level
    assert themes_for(6879, settings) == 83 + 20  # 83 fine themes, then a top level of at most 20


def generated_rows(firms: int, documents: int, per_document: int):
    """Rows made one at a time, never all held: each document has its texts once, then
    its first text again (a repeat that ingest stores once)."""
    for d in range(documents):
        for f in range(firms):
            for i in range(per_document):
                yield Row(f"F{f}", None, f"F{f}-D{d}", f"firm {f}, document {d}, sentence {i}: " + "x" * 80)
            yield Row(f"F{f}", None, f"F{f}-D{d}", f"firm {f}, document {d}, sentence 0: " + "x" * 80)


def test_firm_sizes_counts_a_stream_and_keeps_no_texts():
    rows = generated_rows(firms=5, documents=400, per_document=100)  # 200,000 sentences, ~25 MB of text
    tracemalloc.start()
    try:
        sizes = firm_sizes(rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sizes == {f"F{f}": 400 * 100 for f in range(5)}  # each repeat within its document counted once
    assert next(rows, None) is None  # the iterator was consumed, not copied
    assert peak < 1_000_000  # a document's texts at a time, never the corpus's


def test_firm_texts_keeps_only_the_firms_asked_for():
    texts = firm_texts(generated_rows(firms=3, documents=2, per_document=4), ["F1"])
    assert list(texts) == ["F1"]
    assert texts["F1"] == [f"firm 1, document {d}, sentence {i}: " + "x" * 80 for d in range(2) for i in range(4)]
