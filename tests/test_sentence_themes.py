"""Sentences in no topic of their firm, attached to the nearest theme (schema 6), on the
finished sample run: the small firm's few pricing sentences (too few to cluster) join the
theme of the other firms' pricing topics; each attachment is the nearest theme centre
and passes the threshold; nothing else is attached; the views and the run's quality
figures count them."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from app.database import as_array
from app.sample import SMALL_FIRM
from app.settings import RunSettings
from app.themes import attach_remaining, attach_sentences_to_themes, restart_attaching
from support import subject_of

THRESHOLD = RunSettings().theme_outlier_threshold


async def sentences(conn) -> list[dict]:
    """Every sentence of the run: id, firm, text, topic, the topic's theme, the attached
    theme, the embedding (its stored 16-bit values as float32, as the run computes with
    them)."""
    rows = await conn.fetch(
        "SELECT st.sentence_id, st.firm_id, s.text, st.topic_id, t.theme_id AS topic_theme,"
        " st.theme_id AS attached, st.embedding"
        " FROM sentence_topics st JOIN sentences s USING (sentence_id)"
        " LEFT JOIN topics t ON t.topic_id = st.topic_id ORDER BY st.sentence_id")
    return [{**dict(r), "embedding": as_array(r["embedding"])} for r in rows]


def theme_centres(rows) -> dict[int, np.ndarray]:
    """Each fine theme's centre: the unit mean of its topics' sentences."""
    members = collections.defaultdict(list)
    for r in rows:
        if r["topic_theme"] is not None:
            members[r["topic_theme"]].append(r["embedding"])
    centres = {theme: np.mean(vectors, axis=0) for theme, vectors in members.items()}
    return {theme: c / np.linalg.norm(c) for theme, c in centres.items()}


def nearest(vector: np.ndarray, centres: dict[int, np.ndarray]) -> tuple[int, float]:
    unit = vector / np.linalg.norm(vector)
    similarity = {theme: float(unit @ c) for theme, c in centres.items()}
    theme = max(sorted(similarity), key=lambda t: similarity[t])
    return theme, similarity[theme]


@pytest.mark.results
async def test_a_firm_too_small_for_topics_joins_the_theme_of_its_subject(conn):
    rows = await sentences(conn)
    small = [r for r in rows if r["firm_id"] == SMALL_FIRM[0]]
    assert small and all(r["topic_id"] is None for r in small)  # skipped: too few to cluster
    # The theme holding most of the other firms' pricing sentences (SMALL_FIRM speaks of pricing).
    pricing = collections.Counter(r["topic_theme"] for r in rows
                                  if r["topic_theme"] is not None and subject_of(r["text"]) == "pricing")
    pricing_theme = pricing.most_common(1)[0][0]
    assert [r["attached"] for r in small] == [pricing_theme] * len(small)


@pytest.mark.results
async def test_each_attached_sentence_went_to_its_nearest_theme_and_passed_the_threshold(conn):
    rows = await sentences(conn)
    centres = theme_centres(rows)
    in_no_topic = [r for r in rows if r["topic_id"] is None]
    assert in_no_topic
    for r in in_no_topic:
        theme, similarity = nearest(r["embedding"], centres)
        if r["attached"] is not None:
            # The attached theme is the nearest centre: exactly, or at a tie within rounding
            # (the run computes in the database, this test with numpy).
            unit = r["embedding"] / np.linalg.norm(r["embedding"])
            assert float(unit @ centres[r["attached"]]) >= similarity - 1e-4, (r["attached"], theme)
            assert similarity >= THRESHOLD - 1e-4
        else:
            assert similarity < THRESHOLD + 1e-4
    # A sentence in a topic has its theme through the topic, never attached besides.
    assert all(r["attached"] is None for r in rows if r["topic_id"] is not None)


@pytest.mark.results
async def test_the_threshold_decides_how_many_are_attached(conn):
    run_id = await conn.fetchval("SELECT run_id FROM runs WHERE name = 'default'")
    in_no_topic = await conn.fetchval(
        "SELECT count(*) FROM sentence_topics WHERE run_id = $1 AND topic_id IS NULL", run_id)
    stored = await conn.fetchval(
        "SELECT array_agg(sentence_id ORDER BY sentence_id) FROM sentence_topics WHERE theme_id IS NOT NULL")
    transaction = conn.transaction()  # the sample run is shared: every change here is rolled back
    await transaction.start()
    try:
        assert await attach_sentences_to_themes(conn, run_id, 2.0) == 0  # a cosine never reaches 2
        assert await attach_sentences_to_themes(conn, run_id, -1.0) == in_no_topic  # all reach -1
        await attach_sentences_to_themes(conn, run_id, THRESHOLD)  # again: the same as the run stored
        assert await conn.fetchval(
            "SELECT array_agg(sentence_id ORDER BY sentence_id) FROM sentence_topics WHERE theme_id IS NOT NULL"
        ) == stored
    finally:
        await transaction.rollback()


@pytest.mark.results
async def test_the_run_quality_counts_the_sentences_in_no_theme(conn):
    quality = (await conn.fetchval("SELECT quality FROM runs WHERE name = 'default'"))["themes"]
    counts = await conn.fetchrow(
        "SELECT count(*) AS n, count(*) FILTER (WHERE theme_via = 'nearest') AS attached,"
        " count(*) FILTER (WHERE theme_id IS NULL) AS none FROM sentence_assignments")
    assert counts["attached"] > 0
    assert quality["sentences_attached_share"] == round(counts["attached"] / counts["n"], 4)
    assert quality["sentences_in_no_theme_share"] == round(counts["none"] / counts["n"], 4)


@pytest.mark.results
async def test_the_views_carry_the_attached_sentences(conn):
    attached = {r["sentence_id"]: r["theme_id"] for r in await conn.fetch(
        "SELECT sentence_id, theme_id FROM sentence_topics WHERE theme_id IS NOT NULL")}
    via_view = {r["sentence_id"]: r["theme_id"] for r in await conn.fetch(
        "SELECT sentence_id, theme_id FROM sentence_assignments WHERE theme_via = 'nearest'")}
    in_theme_sentences = {r["sentence_id"]: r["theme_id"] for r in await conn.fetch(
        "SELECT sentence_id, theme_id FROM theme_sentences WHERE topic_id IS NULL")}
    up_to_top = {r["sentence_id"] for r in await conn.fetch(
        "SELECT sentence_id FROM sentence_top_themes WHERE topic_id IS NULL")}
    assert attached and via_view == attached == in_theme_sentences
    assert up_to_top == set(attached)


async def attached(conn) -> dict[int, int]:
    return {r["sentence_id"]: r["theme_id"] for r in await conn.fetch(
        "SELECT sentence_id, theme_id FROM sentence_topics WHERE theme_id IS NOT NULL")}


@pytest.mark.results
async def test_batches_of_any_size_attach_the_same_sentences(conn):
    run_id = await conn.fetchval("SELECT run_id FROM runs WHERE name = 'default'")
    stored = await attached(conn)
    in_no_topic = await conn.fetchval(
        "SELECT count(*) FROM sentence_topics WHERE run_id = $1 AND topic_id IS NULL", run_id)
    transaction = conn.transaction()  # the sample run is shared: every change here is rolled back
    await transaction.start()
    try:
        assert await attach_sentences_to_themes(conn, run_id, THRESHOLD, batch_rows=in_no_topic + 1) == len(stored)
        assert await attached(conn) == stored
        assert await attach_sentences_to_themes(conn, run_id, THRESHOLD, batch_rows=1) == len(stored)
        assert await attached(conn) == stored
        # The mark ends at the last sentence in no topic: every one was compared.
        assert await conn.fetchval("SELECT attached_through FROM runs WHERE run_id = $1", run_id) == \
            await conn.fetchval("SELECT max(sentence_id) FROM sentence_topics WHERE run_id = $1 AND topic_id IS NULL",
                                run_id)
    finally:
        await transaction.rollback()


class Interrupted(Exception):
    pass


@pytest.mark.results
async def test_attaching_interrupted_takes_up_after_the_last_batch_done(conn):
    run_id = await conn.fetchval("SELECT run_id FROM runs WHERE name = 'default'")
    stored = await attached(conn)
    in_no_topic = [r["sentence_id"] for r in await conn.fetch(
        "SELECT sentence_id FROM sentence_topics WHERE run_id = $1 AND topic_id IS NULL ORDER BY 1", run_id)]
    # One sentence a batch, stopped right after the middle attached sentence's batch.
    batches = in_no_topic.index(sorted(stored)[len(stored) // 2 - 1]) + 1
    transaction = conn.transaction()
    await transaction.start()
    try:
        await restart_attaching(conn, run_id)
        steps = 0

        async def dies_after_some_batches(action):
            nonlocal steps
            steps += 1
            if steps > 1 + batches:  # the centres, then the batches
                raise Interrupted
            return await action(conn)

        with pytest.raises(Interrupted):
            await attach_remaining(dies_after_some_batches, run_id, THRESHOLD, batch_rows=1)
        mark = await conn.fetchval("SELECT attached_through FROM runs WHERE run_id = $1", run_id)
        before = await attached(conn)
        assert mark == in_no_topic[batches - 1]
        assert before and before == {s: t for s, t in stored.items() if s <= mark} != stored
        # The batches done are not done again: with every sentence detached, taking up
        # again attaches the sentences after the mark only.
        await conn.execute("UPDATE sentence_topics SET theme_id = NULL WHERE run_id = $1", run_id)
        rest = {s: t for s, t in stored.items() if s > mark}
        assert await attach_remaining(lambda action: action(conn), run_id, THRESHOLD, batch_rows=1) == len(rest)
        assert await attached(conn) == rest
    finally:
        await transaction.rollback()


@pytest.mark.results
async def test_a_run_that_died_while_attaching_keeps_its_themes_and_attaches_only_the_rest(pool, embedder):
    from app.backend import CPU
    from app.job import run_job
    from app.naming import OfflineNamer
    from app.sample import sample_rows
    from support import insert_corpus

    await insert_corpus(pool, sample_rows(firms=2))  # two firms, and the small one, whose sentences are in no topic
    await run_job(pool, RunSettings(), run_name="r", embedder=embedder, backend=CPU, namer=OfflineNamer())
    async with pool.acquire() as conn:
        themes = await conn.fetch("SELECT theme_id, name FROM themes ORDER BY theme_id")
        done = await attached(conn)
        assert len(done) >= 2
        # As a run killed mid-way through attaching leaves it: the mark halfway through
        # the attached sentences, nothing attached after it. The sentences before the
        # mark are detached as well, to see whether the resume does them again.
        mark = sorted(done)[len(done) // 2 - 1]
        await conn.execute("UPDATE sentence_topics SET theme_id = NULL")
        await conn.execute("UPDATE runs SET attached_through = $1, status = 'interrupted'", mark)
    await run_job(pool, RunSettings(), run_name="r", embedder=embedder, backend=CPU, namer=OfflineNamer())
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT status FROM runs") == "complete"
        assert await conn.fetch("SELECT theme_id, name FROM themes ORDER BY theme_id") == themes  # not made again
        assert await attached(conn) == {s: t for s, t in done.items() if s > mark}  # only the rest, as before


@pytest.mark.results
async def test_themes_stored_before_a_firm_was_added_are_made_again_not_taken_up(pool, embedder):
    import anyio

    from app.backend import CPU
    from app.job import run_job
    from app.naming import OfflineNamer
    from app.sample import sample_rows
    from support import insert_corpus

    class StopsAtFirm(OfflineNamer):
        """The offline namer, which also asks the job to stop (as a signal would) while
        it names the topics of ``firm``: the firm is written, and no stage starts after."""

        def __init__(self, stop, firm):
            super().__init__()
            self.stop, self.firm = stop, firm

        async def name_topic(self, topic):
            if topic.firm_id == self.firm:
                self.stop.set()
            return await super().name_topic(topic)

    rows = list(sample_rows(firms=2))
    new_firm = max({r["firm_id"] for r in rows} - {SMALL_FIRM[0]})
    await insert_corpus(pool, [r for r in rows if r["firm_id"] != new_firm])
    await run_job(pool, RunSettings(), run_name="r", embedder=embedder, backend=CPU, namer=OfflineNamer())
    # A firm arrives; the start that writes it stops before the theme stage.
    await insert_corpus(pool, [r for r in rows if r["firm_id"] == new_firm])
    stop = anyio.Event()
    outcome = await run_job(pool, RunSettings(), run_name="r", embedder=embedder, backend=CPU,
                            namer=StopsAtFirm(stop, new_firm), stop=stop)
    assert outcome.status == "interrupted"
    await run_job(pool, RunSettings(), run_name="r", embedder=embedder, backend=CPU, namer=OfflineNamer())
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM topics WHERE firm_id = $1", new_firm) > 0
        assert await conn.fetchval("SELECT count(*) FROM topics WHERE theme_id IS NULL") == 0  # its topics too
