"""Sentences in no topic of their firm, attached to the nearest theme (schema 6), on the
finished sample run: the small firm's few pricing sentences (too few to cluster) join the
theme of the other firms' pricing topics; each attachment is the nearest theme centre
and passes the threshold; nothing else is attached; the views and the run's quality
figures count them."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from app.sample import SMALL_FIRM
from app.settings import RunSettings
from app.themes import attach_sentences_to_themes
from support import subject_of

THRESHOLD = RunSettings().theme_outlier_threshold


async def sentences(conn) -> list[dict]:
    """Every sentence of the run: id, firm, text, topic, the topic's theme, the attached
    theme, the embedding."""
    rows = await conn.fetch(
        "SELECT st.sentence_id, st.firm_id, s.text, st.topic_id, t.theme_id AS topic_theme,"
        " st.theme_id AS attached, st.embedding"
        " FROM sentence_topics st JOIN sentences s USING (sentence_id)"
        " LEFT JOIN topics t ON t.topic_id = st.topic_id ORDER BY st.sentence_id")
    return [dict(r) for r in rows]


def theme_centres(rows) -> dict[int, np.ndarray]:
    """Each fine theme's centre: the unit mean of its topics' sentences."""
    members = collections.defaultdict(list)
    for r in rows:
        if r["topic_theme"] is not None:
            members[r["topic_theme"]].append(r["embedding"].to_numpy())
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
        theme, similarity = nearest(r["embedding"].to_numpy(), centres)
        if r["attached"] is not None:
            # The attached theme is the nearest centre: exactly, or at a tie within rounding
            # (the run computes in the database, this test with numpy).
            unit = r["embedding"].to_numpy() / np.linalg.norm(r["embedding"].to_numpy())
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
