"""``firmtopics run --dry-run``: the expected topics, themes, requests, tokens and cost,
with nothing ingested and nothing written, on a fresh database (a sample of firms is
clustered) and on one with a finished run (its figures are used)."""

from __future__ import annotations

import re

from app.cli import main
from app.estimate import themes_for
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
