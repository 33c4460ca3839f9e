"""The LLM namer against a fake OpenAI-compatible server over real HTTP.

Backoff is shrunk (``backoff_base_s``) so that retries take milliseconds; the tests that
measure a server-requested wait (``Retry-After``) use waits of a second or less.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
import structlog

from app.llm import (
    MAX_REPLY_BYTES,
    LLMConfigError,
    LLMNamer,
    is_quota_exhausted,
    make_namer,
    retry_after_seconds,
    retry_wait,
)
from app.naming import (
    MemberTopic,
    OfflineNamer,
    ThemeToName,
    TopicToName,
    theme_label_from_keywords,
    topic_label_from_keywords,
)
from app.settings import Settings
from fake_llm_server import (
    FakeLLMServer,
    content,
    fenced,
    hang,
    malformed,
    oversized,
    quota_exhausted,
    rate_limited,
    server_error,
    status,
)

KEY = "xai-SeCrEt-0123456789abcdefTESTKEY"
MODEL = "fake-model"


def llm_settings(base_url: str, **changes) -> Settings:
    values = dict(
        xai_api_key=KEY,
        xai_base_url=base_url,
        xai_model=MODEL,
        llm_concurrency=4,
        llm_timeout_s=5.0,
        llm_max_attempts=3,
        log_format="json",
    )
    values.update(changes)
    return Settings(**values)


def fast_namer(settings: Settings, **kwargs) -> LLMNamer:
    """A namer whose own backoff is a few milliseconds."""
    kwargs.setdefault("backoff_base_s", 0.01)
    kwargs.setdefault("backoff_cap_s", 0.02)
    return LLMNamer(settings, **kwargs)


def make_topic(n: int = 0, keywords: list[str] | None = None) -> TopicToName:
    keywords = keywords or [f"keyword{n}", "revenue", "growth"]
    return TopicToName(
        firm_id=f"F{n}",
        firm_name=f"Firm {n}",
        topic_no=n,
        keywords=keywords,
        sentences=[f"Sentence about {keywords[0]}."],
        sentence_ids=[n],
        n_sentences=20,
    )


def make_theme(n: int = 0) -> ThemeToName:
    return ThemeToName(
        theme_no=n,
        keywords=[f"theme{n}", "supply", "chain"],
        topics=[MemberTopic("F1", "Chip supply", "Chips were short."), MemberTopic("F2", "Logistics", "Ports.")],
        n_topics=5,
        n_firms=4,
    )


@pytest.fixture
async def server():
    async with FakeLLMServer(api_key=KEY, models=(MODEL,)) as fake:
        yield fake


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_no_key(*texts) -> None:
    for text in texts:
        assert KEY not in str(text)
        assert KEY[4:20] not in str(text)


# --- names come from the LLM -----------------------------------------------------------


async def test_topic_name_comes_from_the_llm(server):
    async with fast_namer(llm_settings(server.base_url)) as namer:
        label = await namer.name_topic(make_topic(1, ["buybacks", "dividend", "capital"]))
    assert label.source == "llm"
    assert label.name == "LLM buybacks"
    request = server.chat_requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.body["model"] == MODEL
    assert "Firm 1" in json.dumps(request.body["messages"])


async def test_theme_name_comes_from_the_llm(server):
    async with fast_namer(llm_settings(server.base_url)) as namer:
        label = await namer.name_theme(make_theme(2))
    assert (label.name, label.source) == ("LLM theme2", "llm")
    assert "Chip supply" in json.dumps(server.chat_requests[0].body["messages"])


async def test_usage_counts_requests_and_tokens_from_replies(server):
    async with fast_namer(llm_settings(server.base_url)) as namer:
        for n in range(3):
            await namer.name_topic(make_topic(n))
        await namer.name_theme(make_theme())
        usage = namer.usage()
    # The fake server's usage blocks, recomputed from what it received.
    assert usage["requests"] == 4
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert (usage["retries"], usage["failures"], usage["fallbacks"]) == (0, 0, 0)
    assert usage["quota_exhausted"] is False
    assert (usage["topics_named"], usage["themes_named"]) == (3, 1)
    json.dumps(usage)  # JSON-ready for the runs table


# --- the semaphore ---------------------------------------------------------------------


async def test_semaphore_caps_concurrent_requests_and_is_used():
    async with FakeLLMServer(latency=0.1) as fake:
        async with fast_namer(llm_settings(fake.base_url, llm_concurrency=4)) as namer:
            labels = await asyncio.gather(*(namer.name_topic(make_topic(n)) for n in range(20)))
            usage = namer.usage()
    assert all(label.source == "llm" for label in labels)
    assert len(fake.chat_requests) == 20
    assert 1 < fake.peak_concurrent <= 4
    assert 1 < usage["peak_in_flight"] <= 4


async def test_one_semaphore_covers_topics_and_themes_together():
    shared = asyncio.Semaphore(2)
    async with FakeLLMServer(latency=0.05) as fake:
        async with fast_namer(llm_settings(fake.base_url, llm_concurrency=8), semaphore=shared) as namer:
            work = [namer.name_topic(make_topic(n)) for n in range(6)]
            work += [namer.name_theme(make_theme(n)) for n in range(6)]
            await asyncio.gather(*work)
    assert fake.peak_concurrent == 2


# --- retries ---------------------------------------------------------------------------


async def test_retry_after_seconds_is_honoured(server):
    server.enqueue(rate_limited(retry_after=1))
    async with fast_namer(llm_settings(server.base_url)) as namer:
        started = time.monotonic()
        label = await namer.name_topic(make_topic())
        waited = time.monotonic() - started
        usage = namer.usage()
    assert label.source == "llm"
    assert 1.0 <= waited < 2.5
    assert usage["retries"] == 1 and usage["requests"] == 2


async def test_retry_after_ms_is_honoured(server):
    server.enqueue(rate_limited(retry_after_ms=400))
    async with fast_namer(llm_settings(server.base_url)) as namer:
        started = time.monotonic()
        label = await namer.name_topic(make_topic())
        waited = time.monotonic() - started
    assert label.source == "llm"
    assert 0.4 <= waited < 1.5


@pytest.mark.parametrize("code", [408, 409, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_retried(server, code):
    server.enqueue(status(code, "try again"))
    async with fast_namer(llm_settings(server.base_url)) as namer:
        label = await namer.name_topic(make_topic())
        assert namer.usage()["retries"] == 1
    assert label.source == "llm"
    assert len(server.chat_requests) == 2


async def test_server_errors_until_the_last_attempt_fall_back_to_keywords(server):
    server.enqueue(*[server_error(500)] * 3)
    topic = make_topic(5)
    async with fast_namer(llm_settings(server.base_url, llm_max_attempts=3)) as namer:
        label = await namer.name_topic(topic)
        usage = namer.usage()
    assert label == topic_label_from_keywords(topic)
    assert label.source == "keywords"
    assert len(server.chat_requests) == 3
    assert (usage["retries"], usage["failures"], usage["fallbacks"]) == (2, 1, 1)


async def test_theme_falls_back_to_keywords_too(server):
    server.enqueue(*[server_error(503)] * 2)
    theme = make_theme(3)
    async with fast_namer(llm_settings(server.base_url, llm_max_attempts=2)) as namer:
        assert await namer.name_theme(theme) == theme_label_from_keywords(theme)


async def test_a_rejected_request_is_not_retried(server):
    server.enqueue(status(400, "This model's maximum context length is 131072 tokens."))
    async with fast_namer(llm_settings(server.base_url)) as namer:
        label = await namer.name_topic(make_topic())
        again = await namer.name_topic(make_topic(1))
        usage = namer.usage()
    assert label.source == "keywords"
    assert again.source == "llm"  # one topic's trouble stops nothing else
    assert len(server.chat_requests) == 2
    assert (usage["retries"], usage["failures"]) == (0, 1)


async def test_connection_errors_are_retried_then_fall_back():
    settings = llm_settings(f"http://127.0.0.1:{free_port()}/v1", llm_max_attempts=3)
    async with fast_namer(settings) as namer:
        label = await namer.name_topic(make_topic())
        usage = namer.usage()
    assert label.source == "keywords"
    assert (usage["requests"], usage["retries"], usage["failures"]) == (3, 2, 1)


async def test_a_hang_hits_the_timeout_and_is_retried(server):
    server.enqueue(hang(30))
    async with fast_namer(llm_settings(server.base_url, llm_timeout_s=0.3)) as namer:
        started = time.monotonic()
        label = await namer.name_topic(make_topic())
        waited = time.monotonic() - started
        assert namer.usage()["retries"] == 1
    assert label.source == "llm"
    assert 0.3 <= waited < 3


# --- replies ---------------------------------------------------------------------------


async def test_code_fenced_reply_is_parsed(server):
    server.enqueue(fenced("Fenced name", "Fenced summary."))
    async with fast_namer(llm_settings(server.base_url)) as namer:
        label = await namer.name_topic(make_topic())
        assert namer.usage()["retries"] == 0
    assert (label.name, label.summary, label.source) == ("Fenced name", "Fenced summary.", "llm")


async def test_malformed_reply_is_retried(server):
    server.enqueue(malformed())
    async with fast_namer(llm_settings(server.base_url)) as namer:
        label = await namer.name_topic(make_topic(1, ["margins", "cost"]))
        assert namer.usage()["retries"] == 1
    assert label.name == "LLM margins"


async def test_malformed_replies_until_the_last_attempt_fall_back(server):
    server.enqueue(malformed(), content(""), content('{"name": "no summary"}'))
    topic = make_topic()
    async with fast_namer(llm_settings(server.base_url, llm_max_attempts=3)) as namer:
        assert await namer.name_topic(topic) == topic_label_from_keywords(topic)
        assert namer.usage()["failures"] == 1
    assert len(server.chat_requests) == 3


async def test_a_body_that_is_not_a_completion_is_retried(server):
    server.enqueue(status(200, "odd"))  # 200 with {"error": ...}, no choices
    async with fast_namer(llm_settings(server.base_url)) as namer:
        assert (await namer.name_topic(make_topic())).source == "llm"
    assert len(server.chat_requests) == 2


async def test_a_reply_over_the_size_cap_is_not_read_whole_and_is_retried_then_falls_back(server):
    huge = 200 * 1024 * 1024  # valid JSON (a label padded with spaces), far past the cap
    server.enqueue(oversized(huge), oversized(huge), oversized(huge))
    topic = make_topic()
    async with fast_namer(llm_settings(server.base_url, llm_max_attempts=3)) as namer:
        assert await namer.name_topic(topic) == topic_label_from_keywords(topic)
        assert (namer.usage()["retries"], namer.usage()["failures"]) == (2, 1)
    for _ in range(100):  # each handler notices the hang-up when its next write fails
        if len(server.streamed) == 3:
            break
        await asyncio.sleep(0.05)
    # The client stopped reading soon after the cap: what went out is the cap and the
    # sockets' buffers, not the body.
    assert len(server.streamed) == 3 and max(server.streamed) < huge // 2


async def test_a_reply_under_the_size_cap_is_read(server):
    server.enqueue(oversized(MAX_REPLY_BYTES - 100_000))
    async with fast_namer(llm_settings(server.base_url)) as namer:
        label = await namer.name_topic(make_topic(1, ["margins"]))
        assert namer.usage()["retries"] == 0
    assert label.name == "LLM margins"


# --- quota -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", [429, 402, 403])
async def test_quota_exhausted_stops_llm_calls_for_the_run(server, code):
    server.enqueue(quota_exhausted(code))
    with structlog.testing.capture_logs() as logs:
        async with fast_namer(llm_settings(server.base_url)) as namer:
            first = await namer.name_topic(make_topic(0))
            rest = [await namer.name_topic(make_topic(n)) for n in range(1, 4)]
            theme = await namer.name_theme(make_theme())
            usage = namer.usage()
    assert len(server.chat_requests) == 1  # nothing after the quota reply reached the server
    assert first.source == "keywords"
    assert all(label.source == "keywords" for label in rest)
    assert theme == theme_label_from_keywords(make_theme())
    assert usage["quota_exhausted"] is True
    assert usage["retries"] == 0
    assert usage["fallbacks"] == 5
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1 and "quota" in errors[0]["event"]


async def test_quota_exhausted_under_concurrency_stops_everything(server):
    server.enqueue(*[quota_exhausted()] * 100)
    async with fast_namer(llm_settings(server.base_url, llm_concurrency=2)) as namer:
        labels = await asyncio.gather(*(namer.name_topic(make_topic(n)) for n in range(30)))
        assert namer.usage()["quota_exhausted"] is True
    assert all(label.source == "keywords" for label in labels)
    assert len(server.chat_requests) <= 2


async def test_a_plain_rate_limit_is_not_mistaken_for_quota(server):
    server.enqueue(rate_limited(retry_after_ms=10))
    async with fast_namer(llm_settings(server.base_url)) as namer:
        assert (await namer.name_topic(make_topic())).source == "llm"
        assert namer.usage()["quota_exhausted"] is False


async def test_a_key_revoked_during_the_run_stops_llm_calls(server):
    server.enqueue(status(401, "Invalid API key"))
    async with fast_namer(llm_settings(server.base_url)) as namer:
        labels = [await namer.name_topic(make_topic(n)) for n in range(3)]
        usage = namer.usage()
    assert [label.source for label in labels] == ["keywords"] * 3
    assert len(server.chat_requests) == 1
    assert usage["quota_exhausted"] is False and usage["stopped_reason"]


@pytest.mark.parametrize(
    "code, text, expected",
    [
        (429, '{"error": "Your team has either used all available credits or reached its monthly spending limit."}', True),
        (429, '{"error": {"message": "You exceeded your current quota, please check your plan and billing details.", "code": "insufficient_quota"}}', True),
        (403, '{"error": "Your newly created team doesn\'t have any credits yet."}', True),
        (402, "", True),
        (429, '{"error": "Rate limit reached for requests per minute. Please slow down."}', False),
        (429, '{"error": "Quota exceeded for requests per minute (rate limit)."}', False),
        (403, '{"error": "Permission denied."}', False),
        (500, '{"error": "credit service unavailable"}', False),
    ],
)
def test_quota_detection(code, text, expected):
    assert is_quota_exhausted(code, text) is expected


# --- the check at start ----------------------------------------------------------------


async def test_check_passes_with_a_good_key_and_model(server):
    async with fast_namer(llm_settings(server.base_url)) as namer:
        await namer.check()
    body = server.chat_requests[0].body
    assert body["model"] == MODEL and body["max_completion_tokens"] <= 5
    assert "max_tokens" not in body and "response_format" not in body  # a one-word reply, not JSON


@pytest.mark.parametrize("bad_key_status", [401, 403, 400])  # xAI answers a wrong key with 400
async def test_check_fails_fast_on_a_bad_key_without_showing_it(bad_key_status):
    async with FakeLLMServer(api_key="the-right-key", bad_key_status=bad_key_status) as fake:
        with structlog.testing.capture_logs() as logs:
            async with fast_namer(llm_settings(fake.base_url)) as namer:
                with pytest.raises(LLMConfigError) as caught:
                    await namer.check()
                usage = namer.usage()
    message = str(caught.value)
    assert "key" in message.lower()
    assert "\n" not in message
    assert len(fake.chat_requests) == 1  # no retries of a hopeless request
    assert_no_key(message, repr(caught.value), logs, usage)


@pytest.mark.parametrize("unknown_model_status", [404, 400])
async def test_check_fails_fast_on_an_unknown_model(unknown_model_status):
    async with FakeLLMServer(api_key=KEY, models=("grok-real",), unknown_model_status=unknown_model_status) as fake:
        async with fast_namer(llm_settings(fake.base_url, xai_model="grok-imaginary")) as namer:
            with pytest.raises(LLMConfigError) as caught:
                await namer.check()
    assert "grok-imaginary" in str(caught.value)
    assert "model" in str(caught.value).lower()
    assert len(fake.chat_requests) == 1


async def test_check_fails_clearly_when_the_server_is_unreachable():
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    async with fast_namer(llm_settings(base_url, llm_max_attempts=2)) as namer:
        with pytest.raises(LLMConfigError) as caught:
            await namer.check()
    assert base_url in str(caught.value) and "XAI_BASE_URL" in str(caught.value)
    assert namer.usage()["requests"] == 1  # a refused connection is not "busy": no waiting


async def test_check_waits_out_a_busy_server_honouring_retry_after(server):
    server.enqueue(*[rate_limited(retry_after=0.05)] * 6, server_error(503))
    with structlog.testing.capture_logs() as logs:
        async with fast_namer(llm_settings(server.base_url, llm_max_attempts=2)) as namer:
            await namer.check()  # more busy answers than LLM_MAX_ATTEMPTS: the budget decides, not attempts
    assert len(server.chat_requests) == 8
    waits = [e for e in logs if e["event"] == "llm_retry"]
    assert len(waits) == 7 and all(e["wait_s"] >= 0.05 for e in waits[:6])  # each wait logged, the hint kept
    assert namer.usage()["started_while_busy"] is False


async def test_check_starts_anyway_when_the_budget_runs_out(server):
    server.enqueue(*[rate_limited(retry_after=0.2)] * 50)
    with structlog.testing.capture_logs() as logs:
        async with fast_namer(llm_settings(server.base_url, llm_start_budget_s=0.5)) as namer:
            await namer.check()  # returns: the run starts
            assert namer.usage()["started_while_busy"] is True
            label = await namer.name_topic(make_topic(1))  # still busy: its own retries, then keywords
    assert 2 <= len([r for r in server.chat_requests if "response_format" not in r.body]) <= 4
    assert any(e["event"] == "llm_busy_at_start" for e in logs)
    assert label.source == "keywords"


# --- other servers: no key for a local one, parameters learnt from refusals ------------


async def test_a_local_server_needs_no_key():
    async with FakeLLMServer(require_key=False) as fake:
        settings = llm_settings(fake.base_url, xai_api_key=None)
        assert settings.llm_wanted
        async with make_namer(settings) as namer:
            label = await namer.name_topic(make_topic(3))
    assert label.source == "llm"
    assert all("Authorization" not in r.headers for r in fake.chat_requests)


def test_a_remote_server_without_a_key_means_offline_names():
    assert not llm_settings("https://api.x.ai/v1", xai_api_key=None).llm_wanted
    assert not llm_settings("https://api.openai.com/v1", xai_api_key=None).llm_wanted


async def test_names_ask_for_json_with_response_format_and_max_completion_tokens(server):
    async with fast_namer(llm_settings(server.base_url)) as namer:
        await namer.name_topic(make_topic(1))
    body = server.chat_requests[-1].body
    assert body["response_format"] == {"type": "json_object"} and "max_completion_tokens" in body
    assert "max_tokens" not in body


@pytest.mark.parametrize("refused", [("max_tokens",), ("max_completion_tokens",), ("response_format",),
                                     ("max_completion_tokens", "response_format")])
async def test_a_server_that_refuses_a_parameter_still_names(refused):
    async with FakeLLMServer(api_key=KEY, refuse_parameters=refused) as fake:
        with structlog.testing.capture_logs() as logs:
            async with fast_namer(llm_settings(fake.base_url)) as namer:
                await namer.check()
                labels = [await namer.name_topic(make_topic(i)) for i in range(3)]
                usage = namer.usage()
    assert [label.source for label in labels] == ["llm"] * 3
    assert usage["failures"] == 0 and usage["retries"] == 0  # a refusal is learnt, not waited on
    # Learnt once, remembered for the run: each refused parameter costs one request only.
    assert len(fake.chat_requests) == 4 + len(set(refused) - {"max_tokens"})
    assert all(not set(refused) & set(r.body) for r in fake.chat_requests[-3:])
    assert len([e for e in logs if e["event"] == "llm_parameter_refused"]) == len(set(refused) - {"max_tokens"})


async def test_check_fails_when_the_quota_is_already_exhausted(server):
    server.enqueue(quota_exhausted())
    async with fast_namer(llm_settings(server.base_url)) as namer:
        with pytest.raises(LLMConfigError, match="credits|quota"):
            await namer.check()


async def test_check_retries_a_transient_error(server):
    server.enqueue(server_error(502))
    async with fast_namer(llm_settings(server.base_url)) as namer:
        await namer.check()
    assert len(server.chat_requests) == 2


# --- secrets ---------------------------------------------------------------------------


async def test_the_key_never_appears_in_logs_errors_or_usage(server):
    """A run with retries, failures, a rejected key and quota exhaustion: no trace of the key."""
    server.enqueue(
        rate_limited(retry_after_ms=5),
        server_error(500),
        status(400, f"bad request from key {KEY}"),  # a server careless enough to quote the key
        malformed(),
        quota_exhausted(),
    )
    with structlog.testing.capture_logs() as logs:
        async with fast_namer(llm_settings(server.base_url, llm_max_attempts=2)) as namer:
            for n in range(5):
                await namer.name_topic(make_topic(n))
            usage = namer.usage()
            assert repr(namer) and KEY not in repr(namer)
        async with FakeLLMServer(api_key="another-key") as other:
            async with fast_namer(llm_settings(other.base_url)) as wrong:
                with pytest.raises(LLMConfigError) as caught:
                    await wrong.check()
    assert logs, "the scenario should have logged retries and errors"
    assert_no_key(json.dumps(logs, default=str), usage, caught.value, repr(caught.value))


# --- retry policy, as plain functions --------------------------------------------------


def test_retry_wait_grows_exponentially_with_jitter_and_a_cap():
    waits = [[retry_wait(attempt, None, base_s=1.0, cap_s=8.0) for _ in range(200)] for attempt in range(1, 7)]
    for attempt, samples in enumerate(waits, start=1):
        ceiling = min(8.0, 2 ** (attempt - 1))
        assert all(ceiling / 2 <= w <= ceiling for w in samples)
        assert len(set(samples)) > 1  # jittered
    assert max(waits[-1]) <= 8.0


def test_retry_wait_honours_the_server_hint_with_a_little_jitter():
    for _ in range(50):
        assert 3.0 <= retry_wait(1, 3.0, base_s=0.5, cap_s=8.0) <= 3.5


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({}, None),
        ({"Retry-After": "2"}, 2.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After": "7", "retry-after-ms": "250"}, 0.25),  # the finer one wins
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past
        ({"Retry-After": "100000"}, 300.0),  # capped
    ],
)
def test_retry_after_seconds(headers, expected):
    assert retry_after_seconds(headers, cap_s=300.0) == expected


# --- choosing a namer ------------------------------------------------------------------


async def test_make_namer_without_a_key_is_offline():
    async with make_namer(Settings(xai_api_key=None)) as namer:
        assert isinstance(namer, OfflineNamer)
        assert (await namer.name_topic(make_topic())).source == "keywords"


async def test_make_namer_with_a_key_checks_and_names_with_the_llm(server):
    async with make_namer(llm_settings(server.base_url)) as namer:
        assert isinstance(namer, LLMNamer)
        assert (await namer.name_topic(make_topic())).source == "llm"
    assert len(server.chat_requests) == 2  # the check, then the topic


async def test_make_namer_with_a_bad_key_fails_on_entry():
    async with FakeLLMServer(api_key="the-right-key") as fake:
        with pytest.raises(LLMConfigError):
            async with make_namer(llm_settings(fake.base_url)):
                pass
