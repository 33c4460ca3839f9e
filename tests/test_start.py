"""The start of a job: the model loads while the LLM's start-up check is on the wire, and
a bad key still ends the start with the check's one-line error."""

from __future__ import annotations

import time

import pytest

from app.llm import LLMConfigError, make_namer
from app.settings import Settings
from fake_llm_server import FakeLLMServer

KEY = "xai-start-0123456789"
CHECK_LATENCY_S = 3.0


def settings_for(base_url: str, tmp_path) -> Settings:
    return Settings(xai_api_key=KEY, xai_base_url=base_url, xai_model="fake-model", data_dir=tmp_path,
                    llm_max_attempts=1)


async def test_the_model_loads_while_the_check_is_on_the_wire(monkeypatch, tmp_path):
    import app.job
    from app.embedding import load_run_embedder

    began = {}

    def load(settings):  # the program's own load, with its start noted
        began["load"] = time.monotonic()
        return load_run_embedder(settings)

    monkeypatch.setattr(app.job, "load_run_embedder", load)
    async with FakeLLMServer(api_key=KEY, latency=CHECK_LATENCY_S) as fake:
        settings = settings_for(fake.base_url, tmp_path)
        async with make_namer(settings, check=False) as namer:
            started = time.monotonic()
            embedder = await app.job.load_while_checking(namer, settings)
            checked = time.monotonic()
        assert len(fake.chat_requests) == 1  # the check, answered
    assert embedder.dimension == 384
    # Loading began before the check's reply could be back (one after the other, it
    # would have begun CHECK_LATENCY_S later), and the start waited for the reply.
    assert began["load"] - started < CHECK_LATENCY_S <= checked - started


async def test_a_bad_key_ends_the_start_with_the_checks_error(tmp_path):
    import app.job

    async with FakeLLMServer(api_key="another-key") as fake:
        settings = settings_for(fake.base_url, tmp_path)
        async with make_namer(settings, check=False) as namer:
            with pytest.raises(LLMConfigError, match="key"):
                await app.job.load_while_checking(namer, settings)
