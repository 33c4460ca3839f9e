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
are deleted first, in the same transaction that writes the new ones. Attaching the
sentences in no topic is the exception: it runs after the themes are stored, in batches
of sentences, each a short transaction of its own that records how far it came
(``runs.attached_through``, ``sql/012_attach_progress.sql``), so a run that dies while
attaching keeps its themes and takes up after the last batch done.
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
from app.exchanges import UNSTORABLE, forget_replies
from app.keywords import KeywordModel, firm_words, single_firm_words
from app.logs import get_logger
from app.naming import Label, MemberTopic, Namer, ThemeToName, distinct_names
from app.settings import RunSettings

log = get_logger("themes")

MEMBER_SAMPLE = 12  # member topics shown to the namer per theme
# Sentences in no topic compared with the themes per transaction: a batch holds its rows'
# locks for a second or so, and an interruption loses at most one batch's work.
ATTACH_BATCH_ROWS = 20_000


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
# narrows it (``app.update`` takes only an update's new topics). The sentences' embeddings
# are 16-bit floats (halfvec); their mean is taken as 32-bit ones (vector), as a topic's
# embedding is stored, rather than rounded to 16 bits again.
THEMED_TOPICS = """
SELECT t.topic_id, t.firm_id, (SELECT f.firm_name FROM firms f WHERE f.firm_id = t.firm_id) AS firm_name,
       t.name, t.summary, t.keywords, t.name_source,
       (SELECT string_agg(s.text, ' ' ORDER BY s.sentence_id) FROM sentences s
         WHERE s.sentence_id = ANY (t.evidence_sentence_ids)) AS evidence,
       (SELECT avg(st.embedding::vector) FROM sentence_topics st
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


def theme_keyword_model(rows, texts: list[str], settings: RunSettings) -> tuple[KeywordModel, frozenset[str]]:
    """How the run's theme keywords are made, and the terms no theme takes: the words of
    every firm's name and id are left out, and so are the terms only one firm's topics
    use (``app.keywords``), when the run leaves firm words out.

    Takes rows of ``THEMED_TOPICS`` and their c-TF-IDF texts; returns the keyword model
    and the terms to drop, for ``theme_keywords``."""
    model = KeywordModel.of(settings, firm_words(n for r in rows for n in (r["firm_id"], r["firm_name"])))
    if not settings.leave_out_firm_words:
        return model, frozenset()
    return model, frozenset(single_firm_words(texts, [r["firm_id"] for r in rows], model.analyzer()))


async def run_theme_stage(pool: asyncpg.Pool, run_id: int, settings: RunSettings, embedder: Embedder, namer: Namer,
                          limiter: anyio.CapacityLimiter | None = None,
                          retry_window_s: float | None = None, *, resume: bool = False) -> ThemeOutcome:
    """Represent the run's topics, group them into themes, name and store the themes,
    then attach the sentences in no topic to them.

    Returns a ``ThemeOutcome``. With fewer than ``MIN_TOPICS`` topics, the topics still
    get their vectors and no theme is made (the reason says why). A dropped connection is
    retried for ``retry_window_s`` (``DB_RETRY_WINDOW_S``). The grouping needs no clustering
    backend: Ward runs on the CPU (200,000 topics in minutes, docs/benchmarks.md). With
    ``resume`` (no firm was added since the run last stopped), themes a stopped start
    stored already stand, and only the sentences left are attached.
    """
    if resume and await with_connection_retry(pool, lambda conn: conn.fetchval(
            "SELECT attached_through FROM runs WHERE run_id = $1", run_id), what="attach progress",
            window_s=retry_window_s) is not None:
        log.info("theme_stage_resumed", reason="themes stored before the run stopped; attaching the sentences left")
        attached = await _attach(pool, run_id, settings.theme_outlier_threshold, retry_window_s)
        log.info("sentences_attached", sentences_attached=attached)
        return await with_connection_retry(pool, lambda conn: stored_themes(conn, run_id), what="count themes",
                                           window_s=retry_window_s)
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
        await _store(pool, run_id, topic_ids, embeddings, levels=[], assignment=[], window_s=retry_window_s)
        return ThemeOutcome(len(rows), 0, 0, reason)

    n_themes = theme_count(len(rows), settings)
    labels = await anyio.to_thread.run_sync(partial(theme_labels, embeddings, n_themes, seed=settings.seed),
                                            limiter=limiter)
    words_of = await anyio.to_thread.run_sync(partial(theme_keyword_model, rows, texts, settings), limiter=limiter)
    keywords = await anyio.to_thread.run_sync(
        partial(theme_keywords, texts, embeddings, labels, settings.top_n_keywords, *words_of), limiter=limiter
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
            partial(theme_keywords, texts, embeddings, topic_theme, settings.top_n_keywords, *words_of),
            limiter=limiter
        )
        level = await _name_level(namer, embedder, limiter, rows, embeddings, topic_theme, words,
                                  children=[[b for b in below if parents[b.to_name.theme_no] == number]
                                            for number in range(int(parents.max()) + 1)])
        for child in below:
            child.parent_no = int(parents[child.to_name.theme_no])
        levels.append(level)
    await _store(pool, run_id, topic_ids, embeddings, levels=levels, assignment=assignment, window_s=retry_window_s)
    attached = await _attach(pool, run_id, settings.theme_outlier_threshold, retry_window_s)
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
    # No two themes of a level share a name, or a reader could not tell them apart.
    names = distinct_names(names, [t.keywords for t in to_name])
    return [FormedTheme(t, label, vector) for t, label, vector in zip(to_name, names, vectors)]


async def _store(pool, run_id, topic_ids, embeddings, *, levels, assignment, window_s) -> None:
    """Replace the run's themes and topic links, clear its attached sentences and start
    their attaching afresh (``restart_attaching``), in one transaction (retried whole on a
    dropped connection: the transaction rolled back, so a retry starts clean)."""

    async def store(conn: asyncpg.Connection) -> None:
        try:
            async with conn.transaction():
                await _replace_themes(conn, run_id, topic_ids, embeddings, levels=levels, assignment=assignment)
                await restart_attaching(conn, run_id)
        except UNSTORABLE:  # never served again from the log (see app.writer.write_firm)
            await forget_replies(conn, [theme.label.request_key for level in levels for theme in level])
            raise

    await with_connection_retry(pool, store, what="store themes", window_s=window_s)


async def _attach(pool, run_id: int, threshold: float, window_s: float | None) -> int:
    """``attach_remaining`` on pooled connections, each step retried over a dropped one."""
    return await attach_remaining(
        lambda action: with_connection_retry(pool, action, what="attach sentences to themes", window_s=window_s),
        run_id, threshold)


# The centre of each fine theme is the mean of its topics' sentences (pgvector's avg; the
# cosine distance ignores its length), computed once for all batches. The sentences'
# 16-bit embeddings (halfvec) are read as 32-bit ones (vector), for the mean and for the
# distances of a batch, so neither the centres nor the distances are rounded to 16 bits.
_CENTRES = """
SELECT t.theme_id, avg(st.embedding::vector) AS v
FROM sentence_topics st JOIN topics t ON t.topic_id = st.topic_id
WHERE st.run_id = $1 AND t.theme_id IS NOT NULL
GROUP BY t.theme_id ORDER BY t.theme_id
"""
# One batch: the next sentences in no topic after the mark ($2), in sentence id order, each
# given its nearest centre when close enough. Ties in distance go to the lower theme id, so
# the same input gives the same themes, whatever the batches.
_ATTACH_BATCH = """
WITH centre AS MATERIALIZED (SELECT * FROM unnest($3::bigint[], $4::vector[]) AS c (theme_id, v)),
batch AS MATERIALIZED (
    SELECT sentence_id, embedding::vector AS embedding FROM sentence_topics
    WHERE run_id = $1 AND topic_id IS NULL AND sentence_id > $2 AND ($7::integer IS NULL OR update_no = $7)
    ORDER BY sentence_id LIMIT $5),
nearest AS (
    SELECT b.sentence_id, c.theme_id, c.distance
    FROM batch b
    CROSS JOIN LATERAL (SELECT theme_id, b.embedding <=> v AS distance FROM centre
                        ORDER BY 2, theme_id LIMIT 1) c),
attached AS (
    UPDATE sentence_topics st SET theme_id = n.theme_id
    FROM nearest n
    WHERE st.run_id = $1 AND st.sentence_id = n.sentence_id AND 1 - n.distance >= $6
    RETURNING 1)
SELECT (SELECT max(sentence_id) FROM batch) AS last, (SELECT count(*) FROM attached) AS attached
"""


async def themes_out_of_date(conn: asyncpg.Connection, run_id: int) -> None:
    """Mark the run's stored themes as out of date (``runs.attached_through`` NULL), before
    firms are added to it: its next theme stage is then run whole, never resumed."""
    await conn.execute("UPDATE runs SET attached_through = NULL WHERE run_id = $1", run_id)


async def restart_attaching(conn: asyncpg.Connection, run_id: int) -> None:
    """Detach every sentence of the run from its attached theme and set the run's mark
    (``runs.attached_through``) to 0, in one transaction (a savepoint inside the caller's):
    the next ``attach_remaining`` starts from the first sentence."""
    async with conn.transaction():
        await conn.execute("UPDATE sentence_topics SET theme_id = NULL WHERE run_id = $1 AND theme_id IS NOT NULL",
                           run_id)
        await conn.execute("UPDATE runs SET attached_through = 0 WHERE run_id = $1", run_id)


async def attach_remaining(on_a_connection, run_id: int, threshold: float, *,
                           batch_rows: int = ATTACH_BATCH_ROWS) -> int:
    """Give each sentence of the run in no topic, after the run's mark, the nearest fine
    theme when its cosine similarity to the centre of the theme's sentences is at least
    ``threshold``; returns how many were attached.

    ``on_a_connection(action)`` awaits ``action(conn)`` on a connection (retried, in the
    theme stage). The sentences go ``batch_rows`` at a time in sentence id order, each
    batch in a transaction of its own that moves the mark past it, so memory and locks
    follow a batch, and a call after an interruption takes up after the last batch done.
    The result is the same whatever the batch size. Sentences in a topic keep their theme
    through it (the table refuses both)."""
    records = await on_a_connection(lambda conn: conn.fetch(_CENTRES, run_id))
    if not records:
        return 0
    centres = ([r["theme_id"] for r in records], [r["v"] for r in records])

    async def one_batch(conn: asyncpg.Connection) -> int | None:
        async with conn.transaction():
            after = await conn.fetchval("SELECT attached_through FROM runs WHERE run_id = $1 FOR UPDATE", run_id)
            row = await conn.fetchrow(_ATTACH_BATCH, run_id, after or 0, *centres, batch_rows, float(threshold), None)
            if row["last"] is None:
                return None  # no sentence left after the mark
            await conn.execute("UPDATE runs SET attached_through = $2 WHERE run_id = $1", run_id, row["last"])
            return row["attached"]

    total = 0
    while (attached := await on_a_connection(one_batch)) is not None:
        total += attached
    await on_a_connection(lambda conn: count_theme_periods(conn, run_id))
    return total


async def attach_update(on_a_connection, run_id: int, threshold: float, update_no: int, *,
                        batch_rows: int = ATTACH_BATCH_ROWS) -> int:
    """Attach the sentences in no topic that update ``update_no`` brought (``app.update``)
    as ``attach_remaining`` attaches the run's, batch by batch, leaving the run's mark and
    every other sentence as they are; returns how many were attached. Each batch is one
    statement, so a repeated batch (a retry, a resumed update) attaches the same again."""
    records = await on_a_connection(lambda conn: conn.fetch(_CENTRES, run_id))
    centres = ([r["theme_id"] for r in records], [r["v"] for r in records])
    after, total = 0, 0
    while records:
        row = await on_a_connection(lambda conn, after=after: conn.fetchrow(
            _ATTACH_BATCH, run_id, after, *centres, batch_rows, float(threshold), update_no))
        if row["last"] is None:
            break
        after, total = row["last"], total + row["attached"]
    await on_a_connection(lambda conn: count_theme_periods(conn, run_id))
    return total


_COUNT_PERIODS = """
INSERT INTO theme_period_counts (run_id, theme_id, period, n_firms, n_sentences)
SELECT st.run_id, coalesce(t.theme_id, st.theme_id), d.period, count(DISTINCT st.firm_id), count(*)
FROM sentence_topics st
JOIN sentences s   ON s.sentence_id = st.sentence_id
JOIN documents d   ON d.firm_id = s.firm_id AND d.doc_id = s.doc_id
LEFT JOIN topics t ON t.topic_id = st.topic_id
WHERE st.run_id = $1 AND coalesce(t.theme_id, st.theme_id) IS NOT NULL
GROUP BY st.run_id, coalesce(t.theme_id, st.theme_id), d.period
"""


async def count_theme_periods(conn: asyncpg.Connection, run_id: int) -> None:
    """Count each fine theme's firms and sentences per period for the run, afresh
    (``theme_period_counts``, read by the ``theme_periods`` view and ``trends``), in one
    transaction. Called once the run's sentences are all in their themes: at the end of
    the attaching, in the theme stage and in an update. One pass over the run's dated
    sentences, so ``trends`` need not aggregate them at each read."""
    async with conn.transaction():
        await conn.execute("DELETE FROM theme_period_counts WHERE run_id = $1", run_id)
        await conn.execute(_COUNT_PERIODS, run_id)


async def attach_sentences_to_themes(conn: asyncpg.Connection, run_id: int, threshold: float, *,
                                     batch_rows: int = ATTACH_BATCH_ROWS) -> int:
    """Attach the run's sentences in no topic to their nearest fine theme afresh, on one
    connection: ``restart_attaching``, then ``attach_remaining`` with ``threshold`` and
    ``batch_rows``, each batch a transaction of its own (a savepoint inside the caller's).
    Returns how many sentences were attached."""
    await restart_attaching(conn, run_id)
    return await attach_remaining(lambda action: action(conn), run_id, threshold, batch_rows=batch_rows)


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
