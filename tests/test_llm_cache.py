"""The LLM exchange log and response cache (``llm_exchanges``, schema 7), against the fake
OpenAI-compatible server on a real socket and a real database: a second run over the same
topics pays only for the start-up check; a run killed in the theme stage asks nothing
again on resume; ``LLM_CACHE=off`` asks everything again; ``show --prompt`` prints the
exact exchange; the key is in no kept row."""

from __future__ import annotations

import json
import urllib.request

import pytest

from app.backend import CPU
from app.cli import main
from app.exchanges import request_key
from app.job import run_job
from app.llm import LLMNamer
from app.sample import sample_rows
from app.settings import RunSettings, Settings
from fake_llm_server import FakeLLMServer
from support import fake_llm_process, fetch, insert_corpus, is_broader_theme

KEY = "xai-cache-test-key-0123456789abcdef"


def requests_served(base_url: str) -> int:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats") as answer:
        return json.load(answer)["requests"]


def usage_of(url: str, run: str) -> dict:
    return json.loads(fetch(url, "SELECT llm_usage::text AS u FROM runs WHERE name = $1", run)[0]["u"])


@pytest.fixture
def llm_env(database_url, monkeypatch, tmp_path):
    """The CLI's environment with the fake server (as a process) and a key; yields its base URL."""
    with fake_llm_process("--model", "grok-test", "--api-key", KEY) as base_url:
        for name, value in {"DATABASE_URL": database_url, "LOG_FORMAT": "json", "XAI_BASE_URL": base_url,
                            "XAI_MODEL": "grok-test", "XAI_API_KEY": KEY, "LLM_CONCURRENCY": "4"}.items():
            monkeypatch.setenv(name, value)
        yield base_url


def test_a_second_run_over_the_same_topics_asks_only_the_start_up_check(llm_env, database_url, sample_corpus,
                                                                          monkeypatch, capsys):
    assert main(["run", "--input", str(sample_corpus)]) == 0
    first = usage_of(database_url, "default")
    capsys.readouterr()
    # The dry run sees the exchange log: every request of a repeat is already answered.
    assert main(["run", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert f"about {first['topics_named'] + first['themes_named']} of those requests" in dry
    before = requests_served(llm_env)
    assert main(["run", "--run", "second"]) == 0
    second = usage_of(database_url, "second")

    assert requests_served(llm_env) - before == 1  # the start-up check, nothing else
    assert second["requests"] == 1 and second["cache_hits"] == first["topics_named"] + first["themes_named"]
    names = fetch(database_url, "SELECT r.name AS run, t.name FROM topics t JOIN runs r USING (run_id)"
                                " ORDER BY t.firm_id, t.topic_no, r.name")
    assert [n["name"] for n in names if n["run"] == "second"] == [n["name"] for n in names if n["run"] == "default"]
    assert {r["name_source"] for r in fetch(database_url, "SELECT name_source FROM topics UNION"
                                                          " SELECT name_source FROM themes")} == {"llm"}

    # LLM_CACHE=off: every name is asked for again.
    monkeypatch.setenv("LLM_CACHE", "off")
    assert main(["run", "--run", "third"]) == 0
    third = usage_of(database_url, "third")
    assert third["cache_hits"] == 0 and third["requests"] == 1 + first["topics_named"] + first["themes_named"]

    # The key is in no kept row: not in what was sent, not in what came back. (The
    # start-up check comes before the run exists and is not kept.)
    kept = fetch(database_url, "SELECT e::text AS row FROM llm_exchanges e")
    assert len(kept) == 2 * (first["topics_named"] + first["themes_named"])
    assert all(KEY not in r["row"] and KEY[4:20] not in r["row"] for r in kept)
    capsys.readouterr()


def test_show_prompt_prints_the_exact_exchange(llm_env, database_url, sample_corpus, capsys):
    assert main(["run", "--input", str(sample_corpus)]) == 0
    topic = fetch(database_url, "SELECT topic_id, name, name_request FROM topics ORDER BY topic_id LIMIT 1")[0]
    sent = fetch(database_url, "SELECT request::text AS r FROM llm_exchanges WHERE request_key = $1 AND usable",
                 topic["name_request"])
    messages = json.loads(sent[0]["r"])["messages"]
    capsys.readouterr()

    assert main(["show", "topic", str(topic["topic_id"]), "--prompt"]) == 0
    out = capsys.readouterr().out
    assert f"topic {topic['topic_id']}: {topic['name']}" in out and "HTTP 200" in out
    for message in messages:
        assert f"--- {message['role']} ---" in out and message["content"] in out
    reply = out.split("--- reply ---", 1)[1]
    assert json.loads(reply)["name"] == topic["name"]  # the reply's label is the stored name
    theme = fetch(database_url, "SELECT theme_id FROM themes ORDER BY theme_id LIMIT 1")[0]["theme_id"]
    assert main(["show", "theme", str(theme), "--prompt"]) == 0
    assert "--- reply ---" in capsys.readouterr().out


class DiesOnABroaderTheme(LLMNamer):
    """The LLM namer, except that naming the first broader theme fails: the process dies
    inside the level stage, after every fine theme was named by the LLM."""

    async def name_theme(self, theme):
        if is_broader_theme(theme):
            raise RuntimeError("killed in the theme stage")
        return await super().name_theme(theme)


async def test_a_run_killed_in_the_theme_stage_asks_nothing_again_on_resume(pool, embedder):
    await insert_corpus(pool, list(sample_rows()))
    run_settings = RunSettings(theme_top_level_size=3)
    async with FakeLLMServer(api_key=KEY) as fake:
        settings = Settings(xai_api_key=KEY, xai_base_url=fake.base_url, xai_model="grok-test", llm_concurrency=4)
        async with DiesOnABroaderTheme(settings) as namer:
            with pytest.raises(RuntimeError, match="theme stage"):
                await run_job(pool, run_settings, run_name="r", embedder=embedder, backend=CPU, namer=namer)
        async with pool.acquire() as conn:
            named_before = {r["request_key"] for r in await conn.fetch(
                "SELECT request_key FROM llm_exchanges WHERE usable AND subject LIKE 'theme%'")}
            assert await conn.fetchval("SELECT count(*) FROM themes") == 0  # nothing half-stored
        assert named_before  # the fine themes were named before the kill
        sent_before = len(fake.chat_requests)

        async with LLMNamer(settings) as namer:
            outcome = await run_job(pool, run_settings, run_name="r", embedder=embedder, backend=CPU, namer=namer)
            usage = namer.usage()
        asked_again = {request_key(r.body) for r in fake.chat_requests[sent_before:]}

    assert outcome.status == "complete"
    assert not asked_again & named_before
    assert usage["cache_hits"] == len(named_before) and usage["requests"] == len(asked_again) > 0
    async with pool.acquire() as conn:
        assert {r["name_source"] for r in await conn.fetch("SELECT name_source FROM themes")} == {"llm"}
        assert await conn.fetchval("SELECT max(level) FROM themes") == 2
