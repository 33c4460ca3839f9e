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
themes follows the size of the corpus smoothly, from a few firms to thousands. Each theme
is named by the same namer as the topics (from a sample of its most central topics).

The stage is redone from scratch when a run resumes after dying in it: the run's themes
are deleted first, in the same transaction that writes the new ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import anyio
import asyncpg
import numpy as np

from app.backend import ClusteringBackend
from app.clustering import centres, most_central, theme_count, theme_keywords, theme_labels
from app.embedding import Embedder
from app.logs import get_logger
from app.naming import Label, MemberTopic, Namer, ThemeToName
from app.settings import RunSettings
from app.writer import with_connection_retry

log = get_logger("themes")

MEMBER_SAMPLE = 12  # member topics shown to the namer per theme
MIN_TOPICS = 4  # fewer topics than this make no themes: a theme of one topic groups nothing


@dataclass(frozen=True)
class ThemeOutcome:
    """What the theme stage did, for the run summary."""

    topics: int
    themes: int
    linked_by_cluster: int
    linked_by_nearest: int
    reason: str | None = None


def topic_text(name: str, summary: str) -> str:
    """The text of an LLM-named topic or theme that is embedded for themes and search."""
    return f"{name}. {summary}"


_TOPICS_FOR_THEMES = """
SELECT t.topic_id, t.firm_id, t.name, t.summary, t.keywords, t.name_source,
       (SELECT string_agg(s.text, ' ' ORDER BY s.sentence_id) FROM sentences s
         WHERE s.sentence_id = ANY (t.evidence_sentence_ids)) AS evidence,
       (SELECT avg(st.embedding) FROM sentence_topics st
         WHERE st.topic_id = t.topic_id AND st.topic_assignment = 'cluster') AS centre
FROM topics t WHERE t.run_id = $1 ORDER BY t.firm_id, t.topic_no
"""


async def topic_vectors(rows, embedder: Embedder, limiter=None) -> tuple[np.ndarray, list[str]]:
    """The vector and the c-TF-IDF text of each topic row (see the module docstring).

    Takes rows of ``_TOPICS_FOR_THEMES``; returns unit-length vectors (one a row) and one
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


async def run_theme_stage(
    pool: asyncpg.Pool,
    run_id: int,
    settings: RunSettings,
    embedder: Embedder,
    backend: ClusteringBackend,
    namer: Namer,
    limiter: anyio.CapacityLimiter | None = None,
) -> ThemeOutcome:
    """Represent the run's topics, group them into themes, name and store the themes.

    Returns a ``ThemeOutcome``. With fewer than ``MIN_TOPICS`` topics, the topics still
    get their vectors and no theme is made (the reason says why). ``backend`` is not
    used by the grouping itself (Ward runs on the CPU in seconds even for thousands of
    topics); it is kept so every stage is called alike.
    """
    # In firm and topic order, not topic_id order: topic ids follow the order in which
    # firms happened to be written (LLM answers come back in any order), and the theme
    # numbering follows the order of its input.
    rows = await with_connection_retry(pool, lambda conn: conn.fetch(_TOPICS_FOR_THEMES, run_id),
                                       what="load topics for themes")
    topic_ids = [r["topic_id"] for r in rows]
    firm_ids = [r["firm_id"] for r in rows]
    log.info("theme_stage_started", topics=len(rows))
    embeddings, texts = await topic_vectors(rows, embedder, limiter)

    if len(rows) < MIN_TOPICS:
        reason = f"only {len(rows)} topics; at least {MIN_TOPICS} needed to form themes"
        log.warning("no_themes", reason=reason)
        await _store(pool, run_id, topic_ids, embeddings, themes=[], assignment=[])
        return ThemeOutcome(len(rows), 0, 0, 0, reason)

    n_themes = theme_count(len(rows), settings)
    labels = await anyio.to_thread.run_sync(theme_labels, embeddings, n_themes, limiter=limiter)
    keywords = await anyio.to_thread.run_sync(
        partial(theme_keywords, texts, embeddings, labels, settings.top_n_keywords), limiter=limiter
    )
    assignment = [(int(label), "cluster") for label in labels]

    to_name = []
    for number, words in enumerate(keywords):
        members = np.flatnonzero(labels == number)
        sample = most_central(embeddings, members, MEMBER_SAMPLE)
        to_name.append(
            ThemeToName(
                theme_no=number,
                keywords=words,
                topics=[MemberTopic(firm_ids[i], rows[i]["name"], rows[i]["summary"]) for i in sample],
                n_topics=len(members),
                n_firms=len({firm_ids[i] for i in members}),
            )
        )
    names: list[Label | None] = [None] * len(to_name)

    async def name_one(i: int) -> None:
        names[i] = await namer.name_theme(to_name[i])

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(len(to_name)):
            tg.start_soon(name_one, i)
    log.info("themes_named", themes=len(to_name), seconds=round(time.perf_counter() - started, 1))

    # A theme's vector, like a topic's: the LLM's words where it named it, else the centre
    # of its topics.
    theme_vectors = centres(embeddings, labels, len(to_name)).astype(np.float32)
    by_llm = [i for i, label in enumerate(names) if label.source == "llm"]
    if by_llm:
        encoded = await anyio.to_thread.run_sync(
            embedder.encode, [topic_text(names[i].name, names[i].summary) for i in by_llm], limiter=limiter
        )
        theme_vectors[by_llm] = encoded
    themes = list(zip(to_name, names, theme_vectors))
    await _store(pool, run_id, topic_ids, embeddings, themes=themes, assignment=assignment)
    log.info("themes_formed", themes=len(themes), topics=len(rows),
             largest=int(max(t.n_topics for t in to_name)))
    return ThemeOutcome(len(rows), len(themes), len(assignment), 0)


async def _store(pool, run_id, topic_ids, embeddings, *, themes, assignment) -> None:
    """Replace the run's themes and topic links in one transaction (retried whole on a
    dropped connection: the transaction rolled back, so a retry starts clean)."""

    async def store(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await _replace_themes(conn, run_id, topic_ids, embeddings, themes=themes, assignment=assignment)

    await with_connection_retry(pool, store, what="store themes")


async def _replace_themes(conn, run_id, topic_ids, embeddings, *, themes, assignment) -> None:
    """Delete the run's themes, insert the new ones, link and embed the topics."""
    await conn.execute("DELETE FROM themes WHERE run_id = $1", run_id)
    theme_ids = []
    for theme, label, vector in themes:
        theme_ids.append(
            await conn.fetchval(
                "INSERT INTO themes (run_id, theme_no, name, summary, keywords, name_source, n_topics, n_firms,"
                " embedding) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING theme_id",
                run_id, theme.theme_no, label.name, label.summary, theme.keywords, label.source,
                theme.n_topics, theme.n_firms, vector,
            )
        )
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
