"""``firmtopics run`` with LLM naming, against the fake OpenAI-compatible server running
as a separate process on a real socket: names come from the LLM, a bad key fails fast, a
busy start is waited out, and a local server that takes no key and refuses the newer
request parameters still names everything."""

import json
import time

import pytest

from app.cli import main
from support import fake_llm_process, fetch

GOOD_KEY = "xai-test-good-key-0123456789"


@pytest.fixture(scope="module")
def llm_server():
    """The fake server, accepting only GOOD_KEY and the model 'grok-test'."""
    with fake_llm_process("--model", "grok-test", "--api-key", GOOD_KEY) as base_url:
        yield base_url


@pytest.fixture
def env(database_url, monkeypatch, tmp_path, llm_server):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("XAI_BASE_URL", llm_server)
    monkeypatch.setenv("XAI_MODEL", "grok-test")
    monkeypatch.setenv("LLM_CONCURRENCY", "4")
    return database_url


@pytest.mark.parametrize("run_wide", [None, 2], ids=["per-worker-limit", "run-wide-limit"])
def test_topics_and_themes_are_named_by_the_llm(env, monkeypatch, sample_corpus, capsys, run_wide):
    monkeypatch.setenv("XAI_API_KEY", GOOD_KEY)
    if run_wide:  # the run-wide limit (LLMSlots) in a whole run: below the worker's own 4
        monkeypatch.setenv("LLM_RUN_CONCURRENCY", str(run_wide))
    monkeypatch.setenv("FIRMTOPICS_THEME_TOP_LEVEL_SIZE", "3")  # so that there are broader themes too
    assert main(["run", "--input", str(sample_corpus)]) == 0
    out, err = capsys.readouterr()
    assert fetch(env, "SELECT max(level) AS top FROM themes")[0]["top"] >= 2
    sources = {r["name_source"] for r in fetch(env, "SELECT name_source FROM topics")}
    assert sources == {"llm"}
    assert {r["name_source"] for r in fetch(env, "SELECT name_source FROM themes")} == {"llm"}
    assert all(r["name"].startswith("LLM ") for r in fetch(env, "SELECT name FROM topics"))
    usage = json.loads(fetch(env, "SELECT llm_usage::text AS u FROM runs")[0]["u"])
    n_topics = fetch(env, "SELECT count(*) AS n FROM topics")[0]["n"]
    n_themes = fetch(env, "SELECT count(*) AS n FROM themes")[0]["n"]
    assert usage["requests"] >= n_topics + n_themes  # every topic and theme, plus the start-up check
    assert usage["total_tokens"] > 0 and usage["failures"] == 0
    assert 1 < usage["peak_in_flight"] <= (run_wide or 4)
    # The evidence behind each label: the sentences shown to the LLM are stored, and are the topic's own.
    mismatched = fetch(env, "SELECT count(*) AS n FROM topics t, unnest(t.evidence_sentence_ids) AS e(id)"
                            " WHERE NOT EXISTS (SELECT 1 FROM sentence_topics st WHERE st.sentence_id = e.id"
                            " AND st.topic_id = t.topic_id)")
    assert mismatched[0]["n"] == 0
    assert GOOD_KEY not in out + err


def test_a_bad_key_fails_fast_with_one_line(env, monkeypatch, sample_corpus, capsys):
    monkeypatch.setenv("XAI_API_KEY", "xai-wrong-key-should-not-leak")
    started = time.monotonic()
    assert main(["run", "--input", str(sample_corpus)]) == 1
    elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("firmtopics: error:")]
    assert len(errors) == 1 and "XAI_API_KEY" in errors[0]
    assert "xai-wrong-key-should-not-leak" not in out + err
    # Failed before any firm was processed (no model work happened).
    assert fetch(env, "SELECT count(*) AS n FROM run_firms")[0]["n"] == 0
    assert elapsed < 60


def test_an_unknown_model_fails_fast(env, monkeypatch, sample_corpus, capsys):
    monkeypatch.setenv("XAI_API_KEY", GOOD_KEY)
    monkeypatch.setenv("XAI_MODEL", "grok-nonexistent")
    assert main(["run"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("firmtopics: error:")]
    assert len(errors) == 1 and "XAI_MODEL" in errors[0]


def names_and_usage(url):
    """The name sources of the topics and themes, and the run's LLM usage."""
    sources = {r["name_source"] for r in fetch(url, "SELECT name_source FROM topics UNION SELECT name_source FROM themes")}
    return sources, json.loads(fetch(url, "SELECT llm_usage::text AS u FROM runs")[0]["u"])


def test_a_busy_start_is_waited_out_and_every_topic_is_named_by_the_llm(env, monkeypatch, sample_corpus, capsys):
    """The first 6 answers are 429 with Retry-After: 1 s, as when another job shares the key."""
    with fake_llm_process("--model", "grok-test", "--api-key", GOOD_KEY, "--busy-first", "6",
                          "--busy-retry-after", "1") as base_url:
        monkeypatch.setenv("XAI_BASE_URL", base_url)
        monkeypatch.setenv("XAI_API_KEY", GOOD_KEY)
        assert main(["run", "--input", str(sample_corpus)]) == 0
    err = capsys.readouterr().err
    assert err.count('"llm_retry"') >= 6 and '"start-up check"' in err  # each wait logged
    sources, usage = names_and_usage(env)
    assert sources == {"llm"}
    assert usage["failures"] == 0 and usage["started_while_busy"] is False


def test_a_local_server_without_a_key_that_refuses_newer_parameters_names_everything(
        env, monkeypatch, sample_corpus, capsys):
    """The local-server recipe of docs/naming.md: XAI_BASE_URL on this machine, no
    XAI_API_KEY; the server (like an older vLLM or llama.cpp) refuses
    max_completion_tokens and response_format."""
    with fake_llm_process("--model", "grok-test", "--no-key", "--refuse-parameter", "max_completion_tokens",
                     "--refuse-parameter", "response_format") as base_url:
        monkeypatch.setenv("XAI_BASE_URL", base_url)
        monkeypatch.delenv("XAI_API_KEY", raising=False)
        assert main(["run", "--input", str(sample_corpus)]) == 0
    sources, usage = names_and_usage(env)
    assert sources == {"llm"}
    assert usage["failures"] == 0
    assert (usage["token_parameter"], usage["response_format"]) == ("max_tokens", False)
