"""The naming stage of the firm stage: it keeps every LLM slot busy, and holds back
clustered firms only while enough topics are already waiting for a name.

The namer is the real ``LLMNamer`` against the fake OpenAI-compatible server over HTTP;
the firms are built by hand (clustering is not what is tested here).
"""

from __future__ import annotations

import anyio
import numpy as np
import pytest

from app.llm import LLMNamer
from app.naming import OfflineNamer, TopicToName
from app.pipeline import BACKLOG_PER_SLOT, ClusteredFirm, TopicBacklog, naming_stage
from app.settings import Settings
from app.writer import FirmResult
from fake_llm_server import FakeLLMServer

KEY = "pipeline-test-key"


def clustered_firm(n: int, topics: int) -> ClusteredFirm:
    """Firm ``F{n}`` with ``topics`` clustered topics waiting for names."""
    firm_id = f"F{n:02d}"
    result = FirmResult(firm_id, f"Firm {n}", status="done", sentence_ids=np.arange(topics, dtype=np.int64))
    to_name = [
        TopicToName(firm_id=firm_id, firm_name=f"Firm {n}", topic_no=t, keywords=[f"word{t}", "sales"],
                    sentences=[f"Sentence {t} of firm {n}."], sentence_ids=[t], n_sentences=10)
        for t in range(topics)
    ]
    return ClusteredFirm(result, to_name)


async def run_naming_stage(namer, firms: list[ClusteredFirm], backlog: TopicBacklog) -> list[FirmResult]:
    """Feed ``firms`` through ``naming_stage`` with an unbuffered input; collect its output."""
    send_in, receive_in = anyio.create_memory_object_stream[ClusteredFirm](0)
    send_out, receive_out = anyio.create_memory_object_stream[FirmResult](0)
    named: list[FirmResult] = []

    async def feed():
        async with send_in:
            for firm in firms:
                await send_in.send(firm)

    async def collect():
        async with receive_out:
            async for result in receive_out:
                named.append(result)

    async with anyio.create_task_group() as tg:
        tg.start_soon(feed)
        tg.start_soon(naming_stage, namer, receive_in, send_out, backlog)
        tg.start_soon(collect)
    return named


def llm_namer(base_url: str, concurrency: int) -> LLMNamer:
    settings = Settings(xai_api_key=KEY, xai_base_url=base_url, xai_model="fake-model",
                        llm_concurrency=concurrency, llm_timeout_s=10.0, llm_max_attempts=2, log_format="json")
    return LLMNamer(settings, backoff_base_s=0.01, backoff_cap_s=0.02)


async def test_many_small_firms_keep_every_llm_slot_busy():
    # Twelve firms of one topic each: a stage that names a fixed number of firms at a time
    # (say 4) would leave half of the 8 slots idle; this one fills them all.
    async with FakeLLMServer(api_key=KEY, latency=0.3) as fake:
        async with llm_namer(fake.base_url, concurrency=8) as namer:
            backlog = TopicBacklog(BACKLOG_PER_SLOT * namer.concurrency)
            named = await run_naming_stage(namer, [clustered_firm(n, topics=1) for n in range(12)], backlog)
    assert fake.peak_concurrent == 8
    assert sorted(r.firm_id for r in named) == [f"F{n:02d}" for n in range(12)]
    assert all(t.label.source == "llm" for r in named for t in r.topics)
    assert backlog.waiting == 0


async def test_a_firm_leaves_whole_with_its_topics_in_order():
    async with FakeLLMServer(api_key=KEY, latency=0.05) as fake:
        async with llm_namer(fake.base_url, concurrency=4) as namer:
            named = await run_naming_stage(namer, [clustered_firm(n, topics=n + 1) for n in range(5)],
                                           TopicBacklog(8))
    by_firm = {r.firm_id: r for r in named}
    assert len(by_firm) == 5
    for n in range(5):
        result = by_firm[f"F{n:02d}"]
        assert [t.topic_no for t in result.topics] == list(range(n + 1))
        assert [t.evidence_sentence_ids for t in result.topics] == [[t] for t in range(n + 1)]
        assert "name" in result.seconds


async def test_clustered_firms_wait_while_the_backlog_is_full():
    # Concurrency 2 with a backlog of 4 topics: firms of 3 topics are taken one more at a
    # time only when a name comes back, so at most 4 - 1 + 3 = 6 topics ever wait.
    async with FakeLLMServer(api_key=KEY, latency=0.1) as fake:
        async with llm_namer(fake.base_url, concurrency=2) as namer:
            backlog = TopicBacklog(4)
            named = await run_naming_stage(namer, [clustered_firm(n, topics=3) for n in range(8)], backlog)
    assert len(named) == 8
    assert 4 <= backlog.peak <= 6
    assert fake.peak_concurrent == 2


async def test_firms_without_topics_pass_straight_through():
    named = await run_naming_stage(OfflineNamer(), [clustered_firm(n, topics=0) for n in range(3)],
                                   TopicBacklog(2))
    assert sorted(r.firm_id for r in named) == ["F00", "F01", "F02"]
    assert all(r.topics == [] for r in named)


async def test_backlog_admits_while_fewer_than_the_limit_wait():
    backlog = TopicBacklog(3)
    await backlog.admit(2)
    await backlog.admit(5)  # 2 < 3: taken, even though it overshoots
    assert backlog.waiting == 7
    admitted = anyio.Event()

    async def admit_one_more():
        await backlog.admit(1)
        admitted.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(admit_one_more)
        await anyio.sleep(0.05)
        assert not admitted.is_set()  # 7 waiting: no room
        for _ in range(4):
            backlog.named()
        await anyio.sleep(0.05)
        assert not admitted.is_set()  # 3 waiting: still no room
        backlog.named()
        with anyio.fail_after(1):
            await admitted.wait()
    assert backlog.waiting == 3
    assert backlog.peak == 7


@pytest.mark.parametrize("limit", [0, -1])
def test_backlog_limit_is_at_least_one(limit):
    assert TopicBacklog(limit).limit == 1
