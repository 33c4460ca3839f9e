"""The theme stage: cluster every firm topic of a run into cross-firm themes.

Each firm topic's text (its name and summary) is embedded again; BERTopic clusters all
topics of the run; each theme is named by the same namer as the topics (from a sample of
its member topics); topics are linked to their theme. A topic the theme clustering left
as an outlier is linked to the theme whose centre is nearest, and marked
``theme_assignment = 'nearest'`` (the others are ``'cluster'``), so every topic has a
theme and the analyst can still tell the two apart.

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
from app.clustering import cluster_topics, most_central, nearest_clusters
from app.embedding import Embedder
from app.logs import get_logger
from app.naming import Label, MemberTopic, Namer, ThemeToName
from app.settings import RunSettings
from app.writer import with_connection_retry

log = get_logger("themes")

MEMBER_SAMPLE = 12  # member topics shown to the namer per theme


@dataclass(frozen=True)
class ThemeOutcome:
    """What the theme stage did, for the run summary."""

    topics: int
    themes: int
    linked_by_cluster: int
    linked_by_nearest: int
    reason: str | None = None


def topic_text(name: str, summary: str) -> str:
    """The text of a firm topic that is embedded for themes (and for search)."""
    return f"{name}. {summary}"


async def run_theme_stage(
    pool: asyncpg.Pool,
    run_id: int,
    settings: RunSettings,
    embedder: Embedder,
    backend: ClusteringBackend,
    namer: Namer,
    limiter: anyio.CapacityLimiter | None = None,
) -> ThemeOutcome:
    """Embed the run's topics, cluster them into themes, name and store the themes.

    Returns a ``ThemeOutcome``. With too few topics to cluster, the topics still get
    their embeddings and no theme is made (the reason says why).
    """
    # In firm and topic order, not topic_id order: topic ids follow the order in which
    # firms happened to be written (LLM answers come back in any order), and UMAP's
    # layout depends on the order of its input.
    rows = await with_connection_retry(
        pool,
        lambda conn: conn.fetch(
            "SELECT topic_id, firm_id, name, summary FROM topics WHERE run_id = $1 ORDER BY firm_id, topic_no",
            run_id,
        ),
        what="load topics for themes",
    )
    texts = [topic_text(r["name"], r["summary"]) for r in rows]
    topic_ids = [r["topic_id"] for r in rows]
    firm_ids = [r["firm_id"] for r in rows]
    log.info("theme_stage_started", topics=len(rows))
    embeddings = await anyio.to_thread.run_sync(embedder.encode, texts, limiter=limiter)

    needed = settings.theme_min_cluster_size * 2
    if len(rows) < needed:
        reason = f"only {len(rows)} topics; at least {needed} needed to form themes"
        log.warning("no_themes", reason=reason)
        await _store(pool, run_id, topic_ids, embeddings, themes=[], assignment=[])
        return ThemeOutcome(len(rows), 0, 0, 0, reason)

    clustering = await anyio.to_thread.run_sync(
        partial(cluster_topics, texts, embeddings, settings, backend), limiter=limiter
    )
    if not clustering.clusters:
        reason = "the theme clustering found no cluster among the topics"
        log.warning("no_themes", reason=reason)
        await _store(pool, run_id, topic_ids, embeddings, themes=[], assignment=[])
        return ThemeOutcome(len(rows), 0, 0, 0, reason)

    # Every topic gets a theme: its cluster's, or the nearest one for an outlier.
    nearest = nearest_clusters(embeddings, clustering)
    number_to_index = {c.number: i for i, c in enumerate(clustering.clusters)}
    assignment = []
    for i, label in enumerate(clustering.labels.tolist()):
        if label == -1:
            assignment.append((int(nearest[i]), "nearest"))
        else:
            assignment.append((number_to_index[label], "cluster"))

    to_name = []
    for index, cluster in enumerate(clustering.clusters):
        members = [i for i, (theme, _) in enumerate(assignment) if theme == index]
        sample = most_central(embeddings, np.asarray(members), MEMBER_SAMPLE)
        to_name.append(
            ThemeToName(
                theme_no=cluster.number,
                keywords=cluster.keywords,
                topics=[MemberTopic(firm_ids[i], rows[i]["name"], rows[i]["summary"]) for i in sample],
                n_topics=len(members),
                n_firms=len({firm_ids[i] for i in members}),
            )
        )
    labels: list[Label | None] = [None] * len(to_name)

    async def name_one(i: int) -> None:
        labels[i] = await namer.name_theme(to_name[i])

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(len(to_name)):
            tg.start_soon(name_one, i)
    log.info("themes_named", themes=len(to_name), seconds=round(time.perf_counter() - started, 1))

    theme_vectors = await anyio.to_thread.run_sync(
        embedder.encode, [topic_text(lab.name, lab.summary) for lab in labels], limiter=limiter
    )
    themes = list(zip(to_name, labels, theme_vectors))
    await _store(pool, run_id, topic_ids, embeddings, themes=themes, assignment=assignment)
    by_cluster = sum(1 for _, how in assignment if how == "cluster")
    return ThemeOutcome(len(rows), len(themes), by_cluster, len(assignment) - by_cluster)


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
