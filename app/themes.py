"""The theme stage: group every firm topic of a run into cross-firm themes.

Each topic is represented by what it is about, never by a template:

* a topic the LLM named: the embedding of its name and summary (the LLM read its
  sentences and says what they share);
* a topic named offline from its keywords: the centre (mean direction) of the sentences
  clustered into it, and, for the theme keywords, its keywords and its most central
  sentences. The offline summary is a template ("N sentences about ..."), and the
  template's own words would otherwise pull topics together.

The topics are grouped by Ward's clustering into about as many themes as topics a theme
(``app.clustering.theme_count``): every topic is linked to a theme, and the number of
themes follows the size of the corpus smoothly, from a few firms to thousands. Above
``app.clustering.WARD_EXACT_MAX`` topics, Ward groups k-means micro-clusters of topics
instead of the topics themselves, so time and memory grow about linearly. Each theme
is named by the same namer as the topics (from a sample of its most central topics).

A sentence in no topic of its firm (an outlier left over, or a sentence of a firm too
small to cluster) then joins the nearest fine theme, by the centre of the theme's
sentences, when it is close enough (``RunSettings.theme_outlier_threshold``): a firm may
say something too rarely for a topic of its own that other firms discuss at length.

The stage is redone from scratch when a run resumes after dying in it: the run's themes
are deleted first, in the same transaction that writes the new ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial

import anyio
import asyncpg
import numpy as np

from app.clustering import (
    MIN_TOPICS,
    broader_levels,
    centres,
    members_by_label,
    most_central,
    theme_count,
    theme_keywords,
    theme_labels,
)
from app.database import with_connection_retry
from app.embedding import Embedder
from app.errors import first_error
from app.logs import get_logger
from app.naming import Label, MemberTopic, Namer, ThemeToName
from app.settings import RunSettings

log = get_logger("themes")

MEMBER_SAMPLE = 12  # member topics shown to the namer per theme


@dataclass(frozen=True)
class ThemeOutcome:
    """What the theme stage did, for the run summary."""

    topics: int
    themes: int
    linked_by_cluster: int  # topics linked to a theme: Ward's clustering links every one
    reason: str | None = None
    levels: list[int] = field(default_factory=list)  # themes per level, fine level first


def topic_text(name: str, summary: str) -> str:
    """The text of an LLM-named topic or theme that is embedded for themes and search."""
    return f"{name}. {summary}"


# The topics a theme is formed from, with what their vectors are made of; ``{where}``
# narrows it (``app.update`` takes only an update's new topics).
THEMED_TOPICS = """
SELECT t.topic_id, t.firm_id, t.name, t.summary, t.keywords, t.name_source,
       (SELECT string_agg(s.text, ' ' ORDER BY s.sentence_id) FROM sentences s
         WHERE s.sentence_id = ANY (t.evidence_sentence_ids)) AS evidence,
       (SELECT avg(st.embedding) FROM sentence_topics st
         WHERE st.topic_id = t.topic_id AND st.topic_assignment = 'cluster') AS centre
FROM topics t WHERE t.run_id = $1 {where} ORDER BY t.firm_id, t.topic_no
"""


async def topic_vectors(rows, embedder: Embedder, limiter=None) -> tuple[np.ndarray, list[str]]:
    """The vector and the c-TF-IDF text of each topic row (see the module docstring).

    Takes rows of ``THEMED_TOPICS``; returns unit-length vectors (one a row) and one
    text a row. A topic without a stored centre (a run written before sentences were
    marked 'cluster') falls back to the embedding of its name and summary."""
    texts, to_encode = [], []
    vectors: list[np.ndarray | None] = []
    for i, row in enumerate(rows):
        if row["name_source"] == "llm" or row["centre"] is None:
            texts.append(topic_text(row["name"], row["summary"]))
            to_encode.append(i)
            vectors.append(None)
        else:
            texts.append(" ".join(row["keywords"]) + ". " + (row["evidence"] or ""))
            centre = np.asarray(row["centre"].to_numpy(), dtype=np.float32)
            vectors.append(centre / max(float(np.linalg.norm(centre)), 1e-12))
    if to_encode:
        encoded = await anyio.to_thread.run_sync(
            embedder.encode, [topic_text(rows[i]["name"], rows[i]["summary"]) for i in to_encode], limiter=limiter
        )
        for i, vector in zip(to_encode, encoded):
            vectors[i] = vector
    return np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, embedder.dimension), np.float32), texts


async def run_theme_stage(pool: asyncpg.Pool, run_id: int, settings: RunSettings, embedder: Embedder, namer: Namer,
                          limiter: anyio.CapacityLimiter | None = None,
                          retry_window_s: float | None = None) -> ThemeOutcome:
    """Represent the run's topics, group them into themes, name and store the themes.

    Returns a ``ThemeOutcome``. With fewer than ``MIN_TOPICS`` topics, the topics still
    get their vectors and no theme is made (the reason says why). A dropped connection is
    retried for ``retry_window_s`` (``DB_RETRY_WINDOW_S``). The grouping needs no clustering
    backend: Ward runs on the CPU (200,000 topics in minutes, docs/benchmarks.md).
    """
    # In firm and topic order, not topic_id order: topic ids follow the order in which
    # firms happened to be written (LLM answers come back in any order), and the theme
    # numbering follows the order of its input.
    rows = await with_connection_retry(pool, lambda conn: conn.fetch(THEMED_TOPICS.format(where=""), run_id),
                                       what="load topics for themes", window_s=retry_window_s)
    topic_ids = [r["topic_id"] for r in rows]
    log.info("theme_stage_started", topics=len(rows))
    embeddings, texts = await topic_vectors(rows, embedder, limiter)

    if len(rows) < MIN_TOPICS:
        reason = f"only {len(rows)} topics; at least {MIN_TOPICS} needed to form themes"
        log.warning("no_themes", reason=reason)
        await _store(pool, run_id, topic_ids, embeddings, levels=[], assignment=[], attach_threshold=None,
                     window_s=retry_window_s)
        return ThemeOutcome(len(rows), 0, 0, reason)

    n_themes = theme_count(len(rows), settings)
    labels = await anyio.to_thread.run_sync(partial(theme_labels, embeddings, n_themes, seed=settings.seed),
                                            limiter=limiter)
    keywords = await anyio.to_thread.run_sync(
        partial(theme_keywords, texts, embeddings, labels, settings.top_n_keywords), limiter=limiter
    )
    assignment = [(int(label), "cluster") for label in labels]

    fine = await _name_level(namer, embedder, limiter, rows, embeddings, labels, keywords)
    levels = [fine]
    # Broader levels above the fine themes, until the top is small enough to read.
    topic_theme = labels
    for parents in await anyio.to_thread.run_sync(
        broader_levels, embeddings, labels, settings.theme_top_level_size, limiter=limiter
    ):
        below = levels[-1]
        topic_theme = parents[topic_theme]
        words = await anyio.to_thread.run_sync(
            partial(theme_keywords, texts, embeddings, topic_theme, settings.top_n_keywords), limiter=limiter
        )
        level = await _name_level(namer, embedder, limiter, rows, embeddings, topic_theme, words,
                                  children=[[b for b in below if parents[b.to_name.theme_no] == number]
                                            for number in range(int(parents.max()) + 1)])
        for child in below:
            child.parent_no = int(parents[child.to_name.theme_no])
        levels.append(level)
    attached = await _store(pool, run_id, topic_ids, embeddings, levels=levels, assignment=assignment,
                            attach_threshold=settings.theme_outlier_threshold, window_s=retry_window_s)
    log.info("themes_formed", themes=len(fine), topics=len(rows), levels=[len(level) for level in levels],
             largest=int(max(t.to_name.n_topics for t in fine)), sentences_attached=attached)
    return ThemeOutcome(len(rows), len(fine), len(assignment), levels=[len(level) for level in levels])


async def stored_themes(conn: asyncpg.Connection, run_id: int) -> ThemeOutcome:
    """The counts of a theme stage already stored for the run: its fine themes, its topics and
    how they were linked. The job reports these when it resumes after the theme stage
    and does not run it again."""
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM themes WHERE run_id = $1 AND level = 1) AS themes,"
        " count(*) AS topics,"
        " count(*) FILTER (WHERE theme_assignment = 'cluster') AS by_cluster"
        " FROM topics WHERE run_id = $1",
        run_id,
    )
    return ThemeOutcome(row["topics"], row["themes"], row["by_cluster"])


@dataclass
class FormedTheme:
    """One named theme of one level, ready to store."""

    to_name: ThemeToName
    label: Label
    vector: np.ndarray
    parent_no: int | None = None  # its theme one level up, where there is one


async def _name_level(namer, embedder, limiter, rows, embeddings, topic_theme, keywords, *,
                      children=None) -> list[FormedTheme]:
    """Name every theme of one level and give each its vector.

    ``topic_theme`` maps each topic to its theme of this level. The namer is shown the
    most central topics of a fine theme, the narrower themes of a broader one.
    """
    to_name = []
    for (number, words), members in zip(enumerate(keywords), members_by_label(topic_theme, len(keywords))):
        if children is None:
            sample = most_central(embeddings, members, MEMBER_SAMPLE)
            shown = [MemberTopic(rows[i]["firm_id"], rows[i]["name"], rows[i]["summary"]) for i in sample]
        else:
            shown = [MemberTopic("", c.label.name, c.label.summary) for c in children[number][:MEMBER_SAMPLE]]
        to_name.append(ThemeToName(theme_no=number, keywords=words, topics=shown, n_topics=len(members),
                                   n_firms=len({rows[i]["firm_id"] for i in members})))
    names: list[Label | None] = [None] * len(to_name)

    async def name_one(i: int) -> None:
        names[i] = await namer.name_theme(to_name[i])

    started = time.perf_counter()
    try:
        async with anyio.create_task_group() as tg:
            for i in range(len(to_name)):
                tg.start_soon(name_one, i)
    except BaseExceptionGroup as group:
        raise first_error(group) from None  # the run reports the error itself, not a group of copies
    log.info("themes_named", themes=len(to_name), seconds=round(time.perf_counter() - started, 1))

    # A theme's vector, like a topic's: the LLM's words where it named it, else the centre
    # of its topics.
    vectors = centres(embeddings, topic_theme, len(to_name)).astype(np.float32)
    by_llm = [i for i, label in enumerate(names) if label.source == "llm"]
    if by_llm:
        encoded = await anyio.to_thread.run_sync(
            embedder.encode, [topic_text(names[i].name, names[i].summary) for i in by_llm], limiter=limiter
        )
        vectors[by_llm] = encoded
    return [FormedTheme(t, label, vector) for t, label, vector in zip(to_name, names, vectors)]


async def _store(pool, run_id, topic_ids, embeddings, *, levels, assignment, attach_threshold, window_s) -> int:
    """Replace the run's themes and topic links, and attach the sentences in no topic, in
    one transaction (retried whole on a dropped connection: the transaction rolled back,
    so a retry starts clean). Returns how many sentences were attached to a theme."""

    async def store(conn: asyncpg.Connection) -> int:
        async with conn.transaction():
            await _replace_themes(conn, run_id, topic_ids, embeddings, levels=levels, assignment=assignment)
            if attach_threshold is None:
                return 0
            return await attach_sentences_to_themes(conn, run_id, attach_threshold)

    return await with_connection_retry(pool, store, what="store themes", window_s=window_s)


# The centre of each fine theme is the mean of its topics' sentences (pgvector's avg; the
# cosine distance ignores its length). MATERIALIZED: computed once, not per sentence.
# Ties in distance go to the lower theme id, so the same input gives the same themes.
_ATTACH = """
WITH centre AS MATERIALIZED (
    SELECT t.theme_id, avg(st.embedding) AS v
    FROM sentence_topics st JOIN topics t ON t.topic_id = st.topic_id
    WHERE st.run_id = $1 AND t.theme_id IS NOT NULL
    GROUP BY t.theme_id),
nearest AS (
    SELECT st.sentence_id, c.theme_id, c.distance
    FROM sentence_topics st
    CROSS JOIN LATERAL (SELECT theme_id, st.embedding <=> v AS distance FROM centre
                        ORDER BY 2, theme_id LIMIT 1) c
    WHERE st.run_id = $1 AND st.topic_id IS NULL AND ($3::integer IS NULL OR st.update_no = $3))
UPDATE sentence_topics st SET theme_id = n.theme_id
FROM nearest n
WHERE st.run_id = $1 AND st.sentence_id = n.sentence_id AND 1 - n.distance >= $2
"""


async def attach_sentences_to_themes(conn: asyncpg.Connection, run_id: int, threshold: float, *,
                                     update_no: int | None = None) -> int:
    """Give each sentence of the run that is in no topic the nearest fine theme, when its
    cosine similarity to the centre of the theme's sentences is at least ``threshold``.

    Takes a connection (inside the theme stage's transaction, after the topics are linked
    to their themes), the run and the threshold; returns how many sentences were
    attached. Sentences in a topic keep their theme through it (the table refuses both).
    With ``update_no``, only that update's sentences are (re)attached and every other
    sentence keeps what it has (``app.update``).
    """
    if update_no is None:
        await conn.execute("UPDATE sentence_topics SET theme_id = NULL WHERE run_id = $1 AND theme_id IS NOT NULL",
                           run_id)
    status = await conn.execute(_ATTACH, run_id, float(threshold), update_no)
    return int(status.split()[-1])


async def _replace_themes(conn, run_id, topic_ids, embeddings, *, levels, assignment) -> None:
    """Delete the run's themes, insert the new ones level by level from the top (so each
    theme's parent exists when it is inserted), link and embed the topics."""
    await conn.execute("DELETE FROM themes WHERE run_id = $1", run_id)
    ids_above: dict[int, int] = {}
    for level in range(len(levels), 0, -1):
        ids_here = {}
        for theme in levels[level - 1]:
            t, label = theme.to_name, theme.label
            ids_here[t.theme_no] = await conn.fetchval(
                "INSERT INTO themes (run_id, theme_no, level, parent_theme_id, name, summary, keywords, name_source,"
                " n_topics, n_firms, embedding, name_request)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING theme_id",
                run_id, t.theme_no, level, ids_above.get(theme.parent_no), label.name, label.summary, t.keywords,
                label.source, t.n_topics, t.n_firms, theme.vector, label.request_key,
            )
        ids_above = ids_here
    theme_ids = ids_above  # the fine level's, by theme number
    await conn.execute(
        "CREATE TEMP TABLE topic_links (topic_id bigint, embedding vector, theme_id bigint, how text)"
        " ON COMMIT DROP"
    )
    records = []
    for i, topic_id in enumerate(topic_ids):
        theme_id, how = (theme_ids[assignment[i][0]], assignment[i][1]) if assignment else (None, None)
        records.append((topic_id, embeddings[i], theme_id, how))
    await conn.copy_records_to_table("topic_links", records=records)
    await conn.execute(
        "UPDATE topics t SET embedding = l.embedding, theme_id = l.theme_id, theme_assignment = l.how"
        " FROM topic_links l WHERE t.topic_id = l.topic_id"
    )
