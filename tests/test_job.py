"""The job on a real PostgreSQL with the real model and BERTopic: resume, refusal,
edge cases, failure isolation, and errors that end the run instead of hanging it."""

import dataclasses
import re
from pathlib import Path

import anyio
import pytest

from app.backend import CPU
from app.job import run_job
from app.naming import Label, OfflineNamer
from app.runs import SettingsChanged
from app.sample import sample_rows
from app.schema import DimensionMismatch, vector_indexes_present
from app.settings import RunSettings
from support import insert_corpus

SETTINGS = RunSettings()


async def job(pool, embedder, *, run="r", settings=SETTINGS, namer=None, retry_failed=False):
    with anyio.fail_after(300):  # a hang is a failure, not a stuck test run
        return await run_job(pool, settings, run_name=run, embedder=embedder, backend=CPU,
                             namer=namer or OfflineNamer(), retry_failed=retry_failed)


async def table_counts(pool):
    async with pool.acquire() as conn:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}")
                for t in ("run_firms", "topics", "themes", "sentence_topics")}


@pytest.mark.results
async def test_resume_skips_done_firms_and_a_finished_run_does_nothing(pool, embedder):
    everything = list(sample_rows())
    await insert_corpus(pool, [r for r in everything if r["firm_id"] != "PRS"])
    first = await job(pool, embedder)
    assert first.status == "complete"
    assert first.firms["done"] == 7 and first.firms["skipped"] == 1  # the tiny firm
    before = await table_counts(pool)

    again = await job(pool, embedder)
    assert again.status == "nothing_to_do"
    assert await table_counts(pool) == before

    # A new firm arrives: only it is processed, then themes are redone over all topics.
    await insert_corpus(pool, [r for r in everything if r["firm_id"] == "PRS"])
    third = await job(pool, embedder)
    assert third.status == "complete"
    assert third.firms == {"done": 8, "skipped": 1, "failed": 0, "total": 9, "left": 0}
    assert third.themes >= 4
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM run_firms") == 9
        assert await conn.fetchval("SELECT count(*) FROM topics WHERE theme_id IS NULL") == 0
        run_id = await conn.fetchval("SELECT run_id FROM runs")
        assert len(await vector_indexes_present(conn, run_id)) == 3


async def test_firms_are_taken_largest_first_with_ties_in_id_order(pool):
    from app.runs import firms_to_do

    sizes = {"B": 3, "A": 3, "C": 5, "D": 1, "E": 4}
    await insert_corpus(pool, [{"firm_id": firm, "doc_id": "d", "sentence": f"Sentence {i} of {firm}."}
                               for firm, n in sizes.items() for i in range(n)])
    async with pool.acquire() as conn:
        todo = await firms_to_do(conn, run_id=0)
    assert [(f.firm_id, f.n_sentences) for f in todo] == [("C", 5), ("E", 4), ("A", 3), ("B", 3), ("D", 1)]


@pytest.mark.results
async def test_resuming_with_other_settings_is_refused(pool, embedder):
    await insert_corpus(pool, sample_rows(firms=1))
    await job(pool, embedder)
    with pytest.raises(SettingsChanged, match="umap_n_neighbors: run has 15, now 30"):
        await job(pool, embedder, settings=RunSettings(umap_n_neighbors=30))
    # Another run name with other settings is fine: several runs coexist.
    other = await job(pool, embedder, run="wide", settings=RunSettings(umap_n_neighbors=30))
    assert other.status == "complete"


@pytest.mark.results
async def test_the_embedding_backend_and_its_export_are_recorded_and_a_resume_with_another_refused(
        pool, embedder, exports_dir):
    from app.embedding import load_embedder
    from app.exported_model import file_digest

    await insert_corpus(pool, sample_rows(firms=1))
    int8 = load_embedder("all-MiniLM-L6-v2", backend="onnx-int8", cache_dir=exports_dir)
    assert (await job(pool, int8, settings=RunSettings(embed_backend="onnx-int8"))).status == "complete"
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT settings, backend FROM runs")
    recorded = row["backend"]["embedding"]
    assert row["settings"]["embed_backend"] == "onnx-int8" and recorded["backend"] == "onnx-int8"
    assert recorded["sha256"] == file_digest(Path(recorded["file"])) and "onnxruntime" in recorded["built_with"]
    with pytest.raises(SettingsChanged, match="embed_backend: run has 'onnx-int8', now 'torch'"):
        await job(pool, embedder)


@pytest.mark.results
async def test_auto_records_the_backend_that_ran_and_a_resume_loads_the_run_s_own(pool, embedder):
    from app.embedding import resolve_backend
    from app.job import with_run_backend
    from app.settings import Settings

    await insert_corpus(pool, sample_rows(firms=1))
    assert RunSettings().embed_backend == "auto"
    assert (await job(pool, embedder, settings=RunSettings())).status == "complete"
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT settings->>'embed_backend' FROM runs WHERE name = 'r'") == "torch"
    # Resumed or updated, the run loads the backend it ran, whatever this machine would pick.
    assert (await with_run_backend(pool, Settings(), "r")).run.embed_backend == "torch"
    assert (await with_run_backend(pool, Settings(), "new")).run.embed_backend == resolve_backend("auto")
    explicit = Settings(run=RunSettings(embed_backend="onnx"))
    assert await with_run_backend(pool, explicit, "r") is explicit  # set: refused later if it differs


async def test_a_model_of_another_dimension_is_refused(pool, embedder):
    await insert_corpus(pool, sample_rows(firms=1))
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO database_meta VALUES ('embedding_dim', '768')")
    with pytest.raises(DimensionMismatch, match="768-dimensional.*gives 384"):
        await job(pool, embedder)


@pytest.mark.results
async def test_same_settings_give_the_same_topics(pool, embedder):
    await insert_corpus(pool, sample_rows(firms=2))
    await job(pool, embedder, run="one")
    await job(pool, embedder, run="two")
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT r.name, st.sentence_id, t.topic_no FROM sentence_topics st JOIN runs r USING (run_id)"
            " LEFT JOIN topics t USING (topic_id) ORDER BY st.sentence_id"
        )
    one = [(r["sentence_id"], r["topic_no"]) for r in rows if r["name"] == "one"]
    two = [(r["sentence_id"], r["topic_no"]) for r in rows if r["name"] == "two"]
    assert one == two and len(one) > 0


@pytest.mark.results
async def test_edge_cases_are_recorded_with_their_reason(pool, embedder):
    rows = list(sample_rows(firms=1))
    # All sentences the same (in different calls): HDBSCAN finds no cluster.
    rows += [{"firm_id": "SAME", "doc_id": f"call {i}", "sentence": "Revenue grew strongly this quarter."}
             for i in range(40)]
    # Only stop words: BERTopic's vectorizer cannot build a vocabulary, so the firm fails.
    rows += [{"firm_id": "STOP", "doc_id": f"call {i}", "sentence": "It is what it is, and so it was."}
             for i in range(40)]
    # One very long sentence: the model truncates it; the text is stored whole.
    long_text = "Our freight costs rose. " * 2000
    rows.append({"firm_id": "NWL", "doc_id": "long", "sentence": long_text})
    await insert_corpus(pool, rows)
    outcome = await job(pool, embedder)
    assert outcome.status == "complete"  # one firm's failure does not stop the run
    async with pool.acquire() as conn:
        states = {r["firm_id"]: r for r in await conn.fetch("SELECT * FROM run_firms")}
        stored_long = await conn.fetchval("SELECT text FROM sentences WHERE doc_id = 'long'")
        long_has_embedding = await conn.fetchval(
            "SELECT embedding IS NOT NULL FROM sentence_topics JOIN sentences USING (sentence_id)"
            " WHERE doc_id = 'long'")
    assert states["SAME"]["status"] == "done" and states["SAME"]["n_topics"] == 0
    assert "no topic found" in states["SAME"]["reason"]
    assert states["STOP"]["status"] == "failed" and "vocabulary" in states["STOP"]["reason"]
    assert states["TNY"]["status"] == "skipped" and "only 4 sentences" in states["TNY"]["reason"]
    assert stored_long == long_text and long_has_embedding

    # --retry-failed takes the failed firm again (it fails again, the same way, and is recorded once).
    retried = await job(pool, embedder, retry_failed=True)
    assert retried.firms["failed"] == 1
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM run_firms WHERE firm_id = 'STOP'") == 1


class BrokenNamer(OfflineNamer):
    async def name_topic(self, topic):
        raise RuntimeError("the namer broke")


class BadLabelNamer(OfflineNamer):
    async def name_topic(self, topic):
        return Label("x", "y", "not-a-source")  # violates a CHECK: the writer fails


@pytest.mark.results
@pytest.mark.parametrize("namer, error", [(BrokenNamer(), "the namer broke"), (BadLabelNamer(), "name_source")])
async def test_an_error_in_any_stage_ends_the_run_with_that_error(pool, embedder, namer, error):
    await insert_corpus(pool, sample_rows(firms=3))
    with pytest.raises(Exception, match=error):
        await job(pool, embedder, namer=namer)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT status FROM runs") == "failed"


@pytest.mark.results
async def test_starting_a_run_leaves_the_indexes_of_another_run(pool, embedder):
    """Each run builds HNSW indexes on its own rows; a later run drops and rebuilds only
    its own, so searches of a finished run are never slowed by a run being loaded."""
    await insert_corpus(pool, list(sample_rows(firms=2)))
    first = await job(pool, embedder, run="first")
    async with pool.acquire() as conn:
        before = await vector_indexes_present(conn, first.run_id)
    assert len(before) == 3
    second = await job(pool, embedder, run="second", settings=dataclasses.replace(SETTINGS, seed=7))
    async with pool.acquire() as conn:
        assert await vector_indexes_present(conn, first.run_id) == before
        assert len(await vector_indexes_present(conn, second.run_id)) == 3


@pytest.mark.results
async def test_a_worker_with_another_setup_is_refused_naming_the_difference(pool, embedder):
    from app.backend import CUML
    from app.llm import LLMNamer
    from app.runs import WorkerDiffers
    from app.settings import Settings

    await insert_corpus(pool, sample_rows(firms=1))
    assert (await job(pool, embedder)).status == "complete"  # offline naming, CPU, its precision
    async with pool.acquire() as conn:
        before = dict(await conn.fetchrow("SELECT status, setup::text, finished_at FROM runs"))
    with_key = LLMNamer(Settings(xai_api_key="xai-k", xai_model="grok-a"))
    others = {  # what the worker differs in -> how the refusal names it
        "naming: run has 'keywords', this worker 'llm grok-a'": dict(namer=with_key),
        "clustering: run has 'cpu', this worker 'cuml'": dict(backend=CUML),
        f"embedding_precision: run has '{embedder.precision}', this worker 'fp16'": dict(
            embedder=dataclasses.replace(embedder, device="cuda", precision="fp16")),  # refused before it embeds
    }
    for difference, worker in others.items():
        with pytest.raises(WorkerDiffers, match=re.escape(difference)):
            await run_job(pool, SETTINGS, run_name="r", embedder=worker.get("embedder", embedder),
                          backend=worker.get("backend", CPU), namer=worker.get("namer", OfflineNamer()))
    async with pool.acquire() as conn:
        assert dict(await conn.fetchrow("SELECT status, setup::text, finished_at FROM runs")) == before
    # Two LLM workers of different models differ too; the same setup joins as ever.
    async with pool.acquire() as conn:
        await conn.execute("UPDATE runs SET setup = setup || '{\"naming\": \"llm grok-b\"}'")
    with pytest.raises(WorkerDiffers, match="run has 'llm grok-b', this worker 'llm grok-a'"):
        await run_job(pool, SETTINGS, run_name="r", embedder=embedder, backend=CPU, namer=with_key)
    assert (await job(pool, embedder, run="other")).status == "complete"


async def test_usage_of_several_processes_adds_up(pool):
    from app.runs import set_status

    async with pool.acquire() as conn:
        run_id = await conn.fetchval("INSERT INTO runs (name, settings, model, embedding_dim, package_versions)"
                                     " VALUES ('r', '{}', 'm', 384, '{}') RETURNING run_id")
        first = {"namer": "llm", "requests": 5, "prompt_tokens": 100, "peak_in_flight": 4, "quota_exhausted": False,
                 "stopped_reason": None}
        second = {"namer": "llm", "requests": 2, "prompt_tokens": 30, "peak_in_flight": 2, "quota_exhausted": True,
                  "stopped_reason": "quota"}
        await set_status(conn, run_id, "interrupted", llm_usage=first)
        await set_status(conn, run_id, "complete", llm_usage=second)
        assert await conn.fetchval("SELECT llm_usage FROM runs") == {
            "namer": "llm", "requests": 7, "prompt_tokens": 130, "peak_in_flight": 4, "quota_exhausted": True,
            "stopped_reason": "quota"}
