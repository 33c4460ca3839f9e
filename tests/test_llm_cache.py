"""The LLM exchange log and response cache (``llm_exchanges``, schema 7), against the fake
OpenAI-compatible server on a real socket and a real database: a second run over the same
topics pays only for the start-up check; a run killed in the theme stage asks nothing
again on resume; ``LLM_CACHE=off`` asks everything again; ``show --prompt`` prints the
exact exchange; the key is in no kept row."""

from __future__ import annotations

import json
import re

import pytest

from app.backend import CPU
from app.cli import main
from app.exchanges import request_key
from app.job import run_job
from app.llm import LLMNamer
from app.sample import sample_rows
from app.settings import RunSettings, Settings
from fake_llm_server import FakeLLMServer, content, ok
from support import fake_llm_process, fetch, insert_corpus, is_broader_theme

KEY = "xai-cache-test-key-0123456789abcdef"


def usage_of(url: str, run: str) -> dict:
    return json.loads(fetch(url, "SELECT llm_usage::text AS u FROM runs WHERE name = $1", run)[0]["u"])


@pytest.fixture
def llm_env(database_url, monkeypatch, tmp_path):
    """The CLI's environment with the fake server (as a process) and a key; yields the server."""
    with fake_llm_process("--model", "grok-test", "--api-key", KEY) as server:
        for name, value in {"DATABASE_URL": database_url, "LOG_FORMAT": "json", "XAI_BASE_URL": server.base_url,
                            "XAI_MODEL": "grok-test", "XAI_API_KEY": KEY, "LLM_CONCURRENCY": "4"}.items():
            monkeypatch.setenv(name, value)
        yield server


@pytest.mark.results
def test_a_second_run_over_the_same_topics_asks_only_the_start_up_check(llm_env, database_url, sample_corpus,
                                                                          monkeypatch, capsys):
    assert main(["run", "--input", str(sample_corpus)]) == 0
    first = usage_of(database_url, "default")
    capsys.readouterr()
    # The dry run sees the exchange log: every request of a repeat is already answered.
    assert main(["run", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert f"about {first['topics_named'] + first['themes_named']} of those requests" in dry
    before = llm_env.stats()["requests"]
    assert main(["run", "--run", "second"]) == 0
    second = usage_of(database_url, "second")

    assert llm_env.stats()["requests"] - before == 1  # the start-up check, nothing else
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


@pytest.mark.results
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


@pytest.mark.results
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
    # The run's usage adds both processes' up: every request sent, the killed one's too.
    async with pool.acquire() as conn:
        recorded = await conn.fetchval("SELECT llm_usage FROM runs WHERE name = 'r'")
    assert recorded["requests"] == len(fake.chat_requests) > usage["requests"]
    assert recorded["cache_hits"] == usage["cache_hits"] and recorded["topics_named"] > usage["topics_named"]
    async with pool.acquire() as conn:
        assert {r["name_source"] for r in await conn.fetch("SELECT name_source FROM themes")} == {"llm"}
        assert await conn.fetchval("SELECT max(level) FROM themes") == 2


# Replies a model or a broken proxy may send: a NUL, a lone surrogate, terminal escape
# sequences and bidi overrides inside the label, and a name of nothing but those.
POISONED = [
    json.dumps({"name": "Nul\u0000 name", "summary": "A summary with a NUL\u0000 in it."}),
    json.dumps({"name": "Surrogate \ud800name", "summary": "A lone \udc00surrogate."}),
    json.dumps({"name": "\u001b[2J\u001b]0;owned\u0007Escape name\u202e", "summary": "Red \u001b[31mtext\u001b[0m."}),
    json.dumps({"name": "\u001b[H\u0000\u202e", "summary": "A name of control characters only."}),
]
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


@pytest.mark.results
async def test_poisoned_replies_are_cleaned_and_the_run_completes(pool, embedder):
    await insert_corpus(pool, list(sample_rows(firms=2)))
    async with FakeLLMServer(api_key=KEY) as fake:
        # One request at a time, so the check takes the first answer and topics the rest.
        fake.enqueue(ok(), *[content(reply) for reply in POISONED])
        settings = Settings(xai_api_key=KEY, xai_base_url=fake.base_url, xai_model="grok-test", llm_concurrency=1)
        async with LLMNamer(settings, backoff_base_s=0.01, backoff_cap_s=0.02) as namer:
            outcome = await run_job(pool, RunSettings(), run_name="r", embedder=embedder, backend=CPU, namer=namer)
            usage = namer.usage()

    assert outcome.status == "complete" and outcome.firms["failed"] == 0
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT name, summary, name_source FROM topics UNION ALL"
                                " SELECT name, summary, name_source FROM themes")
        kept = await conn.fetchval("SELECT count(*) FROM llm_exchanges WHERE usable")
    names = {r["name"] for r in rows}
    assert {"Nul name", "Surrogate name", "Escape name"} <= names
    assert not [r for r in rows if UNSAFE.search(r["name"] + r["summary"])]
    # The name of control characters only was a bad reply: asked again, then named.
    assert usage["retries"] == 1 and {r["name_source"] for r in rows} == {"llm"}
    assert kept == len(rows)


@pytest.mark.results
async def test_a_reply_that_failed_to_store_is_not_served_again(pool):
    from app.exchanges import UNSTORABLE, ExchangeLog
    from app.naming import Label
    from app.writer import FirmResult, TopicResult, write_firm

    await insert_corpus(pool, list(sample_rows(firms=1)))
    async with pool.acquire() as conn:
        run_id = await conn.fetchval("INSERT INTO runs (name, settings, model, embedding_dim, package_versions)"
                                       " VALUES ('r', '{}', 'm', 384, '{}') RETURNING run_id")
        firm_id = await conn.fetchval("SELECT firm_id FROM firms LIMIT 1")
    log = ExchangeLog(pool, run_id)
    payload = {"model": "m", "messages": [{"role": "user", "content": "name it"}], "temperature": 0}
    key = request_key(payload)
    await log.record(key=key, payload=payload, status=200, reply="{}", usable=True, latency_s=0.1, subject="t")
    assert await log.cached(key) == "{}"
    # A label no cleaning foresaw: the database refuses it.
    label = Label(name="bad\x00name", summary="s", source="llm", request_key=key)
    result = FirmResult(firm_id, None, "done", topics=[TopicResult(0, ["k"], label, 1, [])])
    async with pool.acquire() as conn:
        with pytest.raises(UNSTORABLE):
            await write_firm(conn, run_id, result)
        assert await conn.fetchval("SELECT count(*) FROM run_firms") == 0  # nothing half-written
    assert await log.cached(key) is None  # asked again next time, never served from the log
