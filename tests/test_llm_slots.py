"""A run-wide limit on LLM requests in flight, shared by every worker of the run
(``LLM_RUN_CONCURRENCY``, ``app.claims.LLMSlots``), on a real database and against the
fake OpenAI-compatible server on a real socket."""

from __future__ import annotations

import anyio
import pytest

from app.claims import LLMSlots
from app.llm import LLMNamer
from app.naming import TopicToName
from app.settings import Settings, SettingsError
from fake_llm_server import FakeLLMServer
from support import bare_run

KEY = "slots-test-key"


async def test_slots_are_shared_by_the_workers_of_a_run(pool):
    run_id = await bare_run(pool)
    other_run = await bare_run(pool, "other")
    one, two = LLMSlots(pool, run_id, 2), LLMSlots(pool, run_id, 2)
    async with one, two, one.slot() as first, two.slot() as second:
        assert {first, second} == {0, 1}
        async with pool.acquire() as conn:  # one lock a slot: a search takes no more than it needs
            assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                       " AND objsubid = 1 AND granted") == 2
        with anyio.move_on_after(0.5) as waited:  # both slots are held: a third waits
            async with one.slot():
                pass
        assert waited.cancelled_caught
        async with LLMSlots(pool, other_run, 2) as elsewhere, elsewhere.slot():
            pass  # another run's slots are its own

    got = []

    async def wait_for_a_slot(slots):
        async with slots.slot() as slot:
            got.append(slot)

    async with one, two:
        async with anyio.create_task_group() as tg:
            async with one.slot(), one.slot():
                tg.start_soon(wait_for_a_slot, two)
                await anyio.sleep(0.3)
                assert got == []  # still waiting: the other worker holds both
        assert len(got) == 1  # taken once the first worker gave its slots back


def llm_namer(base_url: str, run_wide: int | None) -> LLMNamer:
    settings = Settings(xai_api_key=KEY, xai_base_url=base_url, xai_model="fake-model", llm_concurrency=8,
                        llm_run_concurrency=run_wide, llm_timeout_s=10.0, llm_max_attempts=2, log_format="json")
    return LLMNamer(settings, backoff_base_s=0.01, backoff_cap_s=0.02)


def topic(worker: int, n: int) -> TopicToName:
    return TopicToName(firm_id=f"W{worker}", firm_name=f"Worker {worker}", topic_no=n,
                       keywords=[f"word{worker}x{n}", "sales"], sentences=[f"Sentence {n} of {worker}."],
                       sentence_ids=[n], n_sentences=10)


@pytest.mark.parametrize("run_wide", [None, 4])
async def test_three_workers_keep_to_the_run_wide_limit(pool, run_wide):
    # Three namers of one run (three workers), each allowed 8 requests of its own: with
    # a run-wide limit of 4 the server never sees more than 4 at once; without, 24. Without
    # a limit the server holds each request until all 24 are in, so a busy machine that is
    # slow to start them cannot make the count come out lower.
    run_id = await bare_run(pool)
    server = FakeLLMServer(api_key=KEY, latency=0.2) if run_wide else FakeLLMServer(api_key=KEY, hold_until=24, latency=30)
    async with server as fake:
        async with llm_namer(fake.base_url, run_wide) as a, llm_namer(fake.base_url, run_wide) as b, \
                llm_namer(fake.base_url, run_wide) as c:
            labels = []

            async def name(namer, worker, n):
                labels.append(await namer.name_topic(topic(worker, n)))

            async with a.for_run(pool, run_id) as a, b.for_run(pool, run_id) as b, c.for_run(pool, run_id) as c, \
                    anyio.create_task_group() as tg:
                for worker, namer in enumerate((a, b, c)):
                    for n in range(8):
                        tg.start_soon(name, namer, worker, n)
    assert len(labels) == 24 and all(label.source == "llm" for label in labels)
    assert fake.peak_concurrent == (run_wide or 24)


def test_the_run_wide_limit_is_read_and_checked():
    assert Settings.from_env({}).llm_run_concurrency is None
    assert Settings.from_env({"LLM_RUN_CONCURRENCY": "16"}).llm_run_concurrency == 16
    for bad in ("0", "1024", "many"):
        with pytest.raises(SettingsError, match="LLM_RUN_CONCURRENCY"):
            Settings.from_env({"LLM_RUN_CONCURRENCY": bad})
