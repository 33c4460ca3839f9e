"""Bringing what is new into a finished run without refitting what is there
(``firmtopics update``): a new quarter's calls of known firms, and new firms.

What stays: every topic and theme of the run keeps its id, its name and its sentences.
What is added, in this order (each step resumable; see ``run_update``):

1. **New firms** get the whole firm stage, as ``run`` gives them (``app.pipeline``).
2. **Known firms' new sentences** (``app.runs.left_sentences``) are embedded, and only
   they. A new sentence joins its firm's nearest topic when its cosine similarity to the
   topic's centre is at least the outlier threshold (marked ``nearest``, as an outlier
   attached in the firm stage is). When the new sentences that joined no topic are enough
   for a topic of that firm, they are clustered into new topics of the firm, numbered
   after its last one; the rest stay in no topic. One transaction per firm.
3. **New topics** join the nearest fine theme (``theme_assignment = 'nearest'``); the
   themes' counts follow at every level, their names do not change. A theme is not
   renamed, so only new topics are named (an exchange kept before answers again).
4. **New sentences in no topic** are attached to the nearest theme, as the theme stage
   attaches the run's own.
5. **Drift** is recorded with the update: the share of its new sentences that are in new
   topics, and the share of its new topics far from every theme (less similar to their
   nearest theme than 95% of the run's own topics are to theirs). Above ``DRIFT_LIMIT``
   the update and ``status`` recommend a fresh run, which forms the themes again.

The whole update runs under the run's theme lock, so two workers never update one run at
once (the second leaves it to the first) and no update meets a theme stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import anyio
import asyncpg
import numpy as np

from app.backend import ClusteringBackend
from app.claims import FirmClaims, ThemeLock
from app.clustering import (
    REPRESENTATIVES,
    TooFewToCluster,
    attach_outliers,
    cluster_documents,
    firm_min_cluster_size,
    most_central,
)
from app.database import with_connection_retry
from app.embedding import Embedder
from app.errors import UsageError
from app.keywords import KeywordModel, firm_words
from app.logs import get_logger
from app.naming import Namer, TopicToName
from app.pipeline import ClusteredFirm, FirmStage, name_firm, run_firm_stage
from app.progress import Progress
from app.runs import find_run, firms_to_do, left_sentences, open_run, worker_record
from app.settings import RunSettings
from app.themes import THEMED_TOPICS, attach_update, topic_vectors
from app.writer import FirmResult, copy_sentence_topics, insert_topics

log = get_logger("update")

# Above this share of new sentences in new topics, or of new topics far from every theme,
# the run's themes no longer describe what is said: a fresh run forms them again.
DRIFT_LIMIT = 0.25
# A cluster of a firm's new and earlier sentences is a new topic when at least this share
# of it is new: most of it is something the firm did not say before.
NEW_SUBJECT_SHARE = 0.5
# A new topic is far from every theme when it is less similar to its nearest theme than
# this share of the run's own topics are to theirs.
FAR_QUANTILE = 0.05


class RunNotFinished(UsageError, ValueError):
    """``update`` of a run that is not complete: ``run`` finishes it first."""


@dataclass
class UpdateOutcome:
    """How an update ended: ``updated``, ``nothing_to_add``, ``left_to_others`` or
    ``interrupted``; with the update's number, what it added and its drift."""

    run_id: int
    run_name: str
    status: str
    update_no: int | None = None
    added: dict | None = None
    drift: dict | None = None


async def run_update(pool: asyncpg.Pool, settings: RunSettings, *, run_name: str, embedder: Embedder,
                     backend: ClusteringBackend, namer: Namer, stop: anyio.Event | None = None,
                     retry_window_s: float | None = None) -> UpdateOutcome:
    """Bring everything stored but in no result of the finished run ``run_name`` into it
    (see the module docstring); returns an ``UpdateOutcome``.

    Refuses (``SettingsChanged``) other result-changing settings than the run's, and
    (``RunNotFinished``) a run that is not complete. Interrupted, it resumes where it
    stopped when started again: firms are written whole, and the later steps touch only
    rows of this update that are not done. A second update with nothing new adds nothing.
    """
    stop = stop or anyio.Event()
    async with pool.acquire() as conn:
        await check_updatable(conn, run_name)
        recorded, setup = worker_record(backend, embedder, namer)
        run = await open_run(conn, run_name, settings, embedding_dim=embedder.dimension,
                             backend=recorded, setup=setup)
    outcome = UpdateOutcome(run.run_id, run_name, "updated")
    async with ThemeLock(pool, run.run_id, window_s=retry_window_s) as lock:
        if not await lock.take():
            outcome.status = "left_to_others"
            return outcome
        step = _Update(pool, run.run_id, settings, embedder, backend, namer, stop, retry_window_s)
        done = await lock.hold_while(lambda: step.all(outcome))
    if lock.lost:  # another worker took the update over during a failover
        outcome.status = "left_to_others"
        return outcome
    return done


async def check_updatable(conn: asyncpg.Connection, run_name: str) -> None:
    """Raise ``RunNotFinished`` unless run ``run_name`` exists and is complete: an update
    adds to a finished run, and ``run`` finishes one (or resumes it, new firms included).
    The command calls it before loading the model, so a mistyped name fails at once."""
    row = await find_run(conn, run_name)
    if row is None:
        raise RunNotFinished(f"run {run_name!r} does not exist: start it with `firmtopics run --run {run_name}`")
    if row["status"] != "complete":
        raise RunNotFinished(f"run {run_name!r} is {row['status']}, not complete: finish it with "
                             f"`firmtopics run --run {run_name}` before updating it")


@dataclass
class _Update:
    """One update of one run, step by step (the module docstring's numbers)."""

    pool: asyncpg.Pool
    run_id: int
    settings: RunSettings
    embedder: Embedder
    backend: ClusteringBackend
    namer: Namer
    stop: anyio.Event
    retry_window_s: float | None

    async def retried(self, action, what: str):
        return await with_connection_retry(self.pool, action, what=what, window_s=self.retry_window_s)

    async def begin(self, conn: asyncpg.Connection) -> tuple[list, list, int | None]:
        """What is new, and the number of the update (the one left running, or a new one;
        None when there is nothing to add). Safe to repeat: a new update's row, once
        committed, is the one left running."""
        new_firms = await firms_to_do(conn, self.run_id)
        left = await left_sentences(conn, self.run_id)
        update_no = await conn.fetchval(
            "SELECT update_no FROM run_updates WHERE run_id = $1 AND status = 'running'", self.run_id)
        if update_no is None and (new_firms or left):
            update_no = await conn.fetchval(
                "INSERT INTO run_updates (run_id, update_no) SELECT $1, coalesce(max(update_no), 0) + 1"
                " FROM run_updates WHERE run_id = $1 RETURNING update_no", self.run_id)
        return new_firms, left, update_no

    async def all(self, outcome: UpdateOutcome) -> UpdateOutcome:
        started = time.perf_counter()
        new_firms, left, update_no = await self.retried(self.begin, "start the update")
        if update_no is None:
            outcome.status = "nothing_to_add"
            return outcome
        outcome.update_no = update_no
        log.info("update_started", run_id=self.run_id, update=update_no, new_firms=len(new_firms),
                 firms_with_new_sentences=len({r["firm_id"] for r in left}),
                 new_sentences=sum(r["n"] for r in left))
        if new_firms and not await self.new_firms(new_firms):
            outcome.status = "interrupted"
            return outcome
        await self.retried(lambda c: _mark_new_firms(c, self.run_id, update_no), "mark new firms' rows")
        for firm_id in sorted({r["firm_id"] for r in left}):
            if self.stop.is_set():
                outcome.status = "interrupted"
                return outcome
            await self.known_firm(firm_id, update_no)
        await self.link_new_topics(update_no)
        await attach_update(lambda action: self.retried(action, "attach new sentences"), self.run_id,
                            self.settings.theme_outlier_threshold, update_no)
        outcome.added, outcome.drift = await self.retried(lambda c: _finish(c, self.run_id, update_no),
                                                          "record the update")
        log.info("update_finished", run_id=self.run_id, update=update_no, **outcome.added, **outcome.drift,
                 seconds=round(time.perf_counter() - started, 2))
        return outcome

    async def new_firms(self, firms) -> bool:
        """The firm stage for firms the run has not seen. Returns False when stopped
        before every firm was written."""
        progress = Progress(total_firms=len(firms), total_sentences=sum(f.n_sentences for f in firms))
        async with FirmClaims(self.pool, self.run_id, window_s=self.retry_window_s) as claims:
            stage = FirmStage(self.pool, self.run_id, self.settings, self.embedder, self.backend, self.namer,
                              stop=self.stop, claims=claims, retry_window_s=self.retry_window_s)
            completed = await run_firm_stage(stage, firms, progress)
        return completed

    async def known_firm(self, firm_id: str, update_no: int) -> None:
        """Step 2 for one firm, written in one transaction (whole or not at all)."""
        rows, firm = await self.retried(lambda c: _firm_new_rows(c, self.run_id, firm_id),
                                                f"load new sentences of {firm_id}")
        if not rows:
            return
        result = FirmResult(firm_id, firm["name"], status="done",
                            sentence_ids=np.array([r["sentence_id"] for r in rows], dtype=np.int64))
        texts = [r["text"] for r in rows]
        to_name = await anyio.to_thread.run_sync(
            partial(self._place, result, texts, firm))
        result = await name_firm(self.namer, ClusteredFirm(result, to_name))
        await self.retried(lambda c: _write_known_firm(c, self.run_id, result, firm["topics"], update_no),
                           f"write new sentences of {firm_id}")
        log.info("firm_updated", firm=firm_id, sentences=len(rows), new_topics=len(to_name),
                 joined=int((result.labels >= 0).sum()))

    def _place(self, result: FirmResult, texts: list[str], firm: dict) -> list[TopicToName]:
        """Embed the new sentences; each joins its nearest topic when close enough, the
        rest form new topics where they are a subject of their own. Fills ``result``
        (labels are topic numbers, -1 for none); returns the new topics."""
        s, topics = self.settings, firm["topics"]
        result.embeddings = self.embedder.encode(texts)
        result.labels = np.full(len(texts), -1, dtype=np.int64)
        result.nearest = np.zeros(len(texts), dtype=bool)
        if topics:
            numbers = np.array(list(topics))
            similarity = result.embeddings.astype(np.float64) @ np.stack([topics[n][1] for n in numbers]).T
            best = np.argmax(similarity, axis=1)
            close = similarity[np.arange(len(texts)), best] >= s.outlier_threshold
            result.labels[close] = numbers[best[close]]
            result.nearest[close] = True
        rest = np.flatnonzero(result.labels < 0)
        min_size = firm_min_cluster_size(firm["n"], s)
        # The rest are clustered together with the firm's earlier sentences, as the firm
        # stage clusters a firm (a few dozen new sentences alone are too few for UMAP); a
        # cluster made mostly of new sentences is a subject the firm did not speak of.
        old_texts = firm["texts"]
        vectors = np.vstack([firm["vectors"], result.embeddings[rest]]) if old_texts else result.embeddings[rest]
        try:
            clustering = cluster_documents(
                old_texts + [texts[i] for i in rest], vectors,
                backend=self.backend, n_neighbors=s.umap_n_neighbors, n_components=s.umap_n_components,
                min_dist=s.umap_min_dist, n_epochs=s.umap_n_epochs, seed=s.seed, top_n_keywords=s.top_n_keywords,
                min_cluster_size=min_size, min_samples=s.hdbscan_min_samples, cluster_selection=s.cluster_selection,
                keywords=KeywordModel.of(s, firm_words((result.firm_id, result.firm_name))))
        except TooFewToCluster:
            return []
        fresh_labels, kept = np.full(len(rest), -1, dtype=np.int64), []
        for cluster in clustering.clusters:
            fresh = cluster.members[cluster.members >= len(old_texts)] - len(old_texts)
            if len(fresh) >= min_size and len(fresh) >= NEW_SUBJECT_SHARE * len(cluster.members):
                fresh_labels[fresh] = len(kept)
                kept.append(cluster.keywords)
        final = attach_outliers(result.embeddings[rest], fresh_labels, s.outlier_threshold)
        first_no = max(topics, default=-1) + 1
        result.labels[rest[final >= 0]] = final[final >= 0] + first_no
        result.nearest[rest] = (fresh_labels == -1) & (final >= 0)
        to_name = []
        for k, keywords in enumerate(kept):
            shown = [int(rest[i]) for i in most_central(result.embeddings[rest], np.flatnonzero(fresh_labels == k),
                                                        REPRESENTATIVES)]
            to_name.append(TopicToName(
                firm_id=result.firm_id, firm_name=result.firm_name, topic_no=first_no + k, keywords=keywords,
                sentences=[texts[i] for i in shown], sentence_ids=[int(result.sentence_ids[i]) for i in shown],
                n_sentences=int((final == k).sum())))
        return to_name

    async def link_new_topics(self, update_no: int) -> None:
        """Step 3: each topic of this update without a theme joins the nearest fine theme;
        every theme's counts are made true again."""
        rows = await self.retried(lambda c: c.fetch(THEMED_TOPICS.format(where="AND t.update_no = $2"
                                                                         " AND t.theme_id IS NULL"),
                                                    self.run_id, update_no), "load new topics")
        themes = await self.retried(lambda c: c.fetch(
            "SELECT theme_id, embedding FROM themes WHERE run_id = $1 AND level = 1 ORDER BY theme_id",
            self.run_id), "load themes")
        if not rows or not themes:
            return
        vectors, _ = await topic_vectors(rows, self.embedder)
        theme_vectors = np.stack([np.asarray(t["embedding"].to_numpy(), dtype=np.float64) for t in themes])
        theme_vectors /= np.maximum(np.linalg.norm(theme_vectors, axis=1, keepdims=True), 1e-12)
        nearest = np.argmax(vectors.astype(np.float64) @ theme_vectors.T, axis=1)
        links = [(r["topic_id"], vectors[i], themes[int(nearest[i])]["theme_id"]) for i, r in enumerate(rows)]
        await self.retried(lambda c: _link(c, self.run_id, links), "link new topics")


async def _firm_new_rows(conn: asyncpg.Connection, run_id: int, firm_id: str):
    """A known firm's sentences in no result of the run (id, text), and the firm as the
    update needs it: ``name``, ``n`` (all its sentences), ``topics`` ({topic number:
    (topic id, unit centre of its clustered sentences)}), and the ``texts`` and
    ``vectors`` of its sentences already in the run."""
    rows = await conn.fetch(
        "SELECT s.sentence_id, s.text FROM sentences s WHERE s.firm_id = $2 AND NOT EXISTS"
        " (SELECT 1 FROM sentence_topics st WHERE st.run_id = $1 AND st.sentence_id = s.sentence_id)"
        " ORDER BY s.sentence_id", run_id, firm_id)
    # The mean of 16-bit embeddings (halfvec) taken as 32-bit ones, as the theme stage does.
    centres = await conn.fetch(
        "SELECT t.topic_no, t.topic_id, avg(st.embedding::vector) AS centre FROM topics t"
        " JOIN sentence_topics st ON st.run_id = $1 AND st.topic_id = t.topic_id AND st.topic_assignment = 'cluster'"
        " WHERE t.run_id = $1 AND t.firm_id = $2 GROUP BY t.topic_no, t.topic_id", run_id, firm_id)
    topics = {}
    for r in centres:
        centre = np.asarray(r["centre"].to_numpy(), dtype=np.float64)
        topics[r["topic_no"]] = (r["topic_id"], centre / max(float(np.linalg.norm(centre)), 1e-12))
    old = await conn.fetch(
        "SELECT s.text, st.embedding FROM sentence_topics st JOIN sentences s USING (firm_id, sentence_id)"
        " WHERE st.run_id = $1 AND st.firm_id = $2 ORDER BY st.sentence_id", run_id, firm_id)
    vectors = np.array([r["embedding"].to_numpy() for r in old], dtype=np.float32)
    name = await conn.fetchval("SELECT firm_name FROM firms WHERE firm_id = $1", firm_id)
    firm = {"name": name, "n": len(old) + len(rows), "topics": topics, "texts": [r["text"] for r in old],
            "vectors": vectors}
    return rows, firm


async def _mark_new_firms(conn: asyncpg.Connection, run_id: int, update_no: int) -> None:
    """Mark the rows of firms written since the update began as the update's (the firm
    stage writes them as a run's own); repeated after a resume, it marks what is left."""
    since = ("FROM run_firms r, run_updates u WHERE x.run_id = $1 AND x.update_no IS NULL AND r.run_id = $1"
             " AND r.firm_id = x.firm_id AND u.run_id = $1 AND u.update_no = $2 AND r.finished_at >= u.started_at")
    await conn.execute("UPDATE topics x SET update_no = $2 " + since, run_id, update_no)
    await conn.execute("UPDATE sentence_topics x SET update_no = $2 " + since, run_id, update_no)


async def _write_known_firm(conn, run_id: int, result: FirmResult, topics: dict, update_no: int) -> None:
    """Store one known firm's new sentences and new topics, and the counts they change,
    in one transaction."""
    async with conn.transaction():
        topic_ids = {n: topic_id for n, (topic_id, _) in topics.items()}
        topic_ids.update(await insert_topics(conn, run_id, result))
        await copy_sentence_topics(conn, run_id, result, topic_ids)
        await conn.execute(
            "UPDATE sentence_topics SET update_no = $3 WHERE run_id = $1 AND sentence_id = ANY($2)",
            run_id, result.sentence_ids.tolist(), update_no)
        await conn.execute(
            "UPDATE topics SET update_no = $3 WHERE run_id = $1 AND topic_id = ANY($2)",
            run_id, [topic_ids[t.topic_no] for t in result.topics], update_no)
        joined = np.bincount(result.labels[result.labels >= 0], minlength=1)
        old = [(topic_ids[n], int(joined[n])) for n in topics if n < len(joined) and joined[n]]
        await conn.executemany("UPDATE topics SET n_sentences = n_sentences + $2 WHERE topic_id = $1", old)
        await conn.execute(
            "UPDATE run_firms SET n_sentences = n_sentences + $3, n_topics = n_topics + $4,"
            " n_outliers = n_outliers + $5, last_sentence_id = greatest(last_sentence_id, $6)"
            " WHERE run_id = $1 AND firm_id = $2",
            run_id, result.firm_id, result.n_sentences, len(result.topics), result.n_outliers,
            int(result.sentence_ids.max()))


async def _link(conn, run_id: int, links) -> None:
    """Give new topics their theme and vector, then recount every theme of the run."""
    async with conn.transaction():
        await conn.executemany(
            "UPDATE topics SET theme_id = $3, embedding = $2, theme_assignment = 'nearest' WHERE topic_id = $1",
            links)
        await conn.execute(
            "UPDATE themes th SET n_topics = c.n_topics, n_firms = c.n_firms FROM ("
            "  SELECT l.ancestor_id, count(*)::integer AS n_topics, count(DISTINCT t.firm_id)::integer AS n_firms"
            "  FROM topics t JOIN theme_lineage l ON l.theme_id = t.theme_id WHERE t.run_id = $1"
            "  GROUP BY l.ancestor_id) c"
            " WHERE th.theme_id = c.ancestor_id AND (th.n_topics, th.n_firms) IS DISTINCT FROM (c.n_topics, c.n_firms)",
            run_id)


_DRIFT = """
WITH far AS (
    SELECT percentile_cont($3::float8) WITHIN GROUP (ORDER BY 1 - (t.embedding <=> th.embedding)) AS similarity
    FROM topics t JOIN themes th ON th.theme_id = t.theme_id
    WHERE t.run_id = $1 AND t.update_no IS NULL)
SELECT (SELECT count(*) FROM sentence_topics WHERE run_id = $1 AND update_no = $2)::integer AS sentences,
       (SELECT count(*) FROM sentence_topics st JOIN topics t ON t.topic_id = st.topic_id
         WHERE st.run_id = $1 AND st.update_no = $2 AND t.update_no = $2)::integer AS in_new_topics,
       (SELECT count(*) FROM sentence_topics st WHERE st.run_id = $1 AND st.update_no = $2
         AND st.topic_id IS NULL AND st.theme_id IS NOT NULL)::integer AS attached_to_themes,
       (SELECT count(DISTINCT firm_id) FROM sentence_topics WHERE run_id = $1 AND update_no = $2)::integer AS firms,
       (SELECT count(*) FROM topics WHERE run_id = $1 AND update_no = $2)::integer AS topics,
       (SELECT count(*) FROM topics t JOIN themes th ON th.theme_id = t.theme_id, far
         WHERE t.run_id = $1 AND t.update_no = $2
           AND 1 - (t.embedding <=> th.embedding) < far.similarity)::integer AS far_topics
"""


async def _finish(conn: asyncpg.Connection, run_id: int, update_no: int) -> tuple[dict, dict]:
    """Step 5: what the update added and its drift, recorded with it; returns both."""
    row = await conn.fetchrow(_DRIFT, run_id, update_no, FAR_QUANTILE)
    added = {k: row[k] for k in ("sentences", "firms", "topics", "attached_to_themes")}
    new_topic_share = round(row["in_new_topics"] / row["sentences"], 4) if row["sentences"] else 0.0
    far_share = round(row["far_topics"] / row["topics"], 4) if row["topics"] else 0.0
    drift = {"new_topic_sentence_share": new_topic_share, "far_topic_share": far_share,
             "fresh_run_recommended": max(new_topic_share, far_share) > DRIFT_LIMIT}
    await conn.execute(
        "UPDATE run_updates SET status = 'complete', finished_at = now(), added = $3, drift = $4"
        " WHERE run_id = $1 AND update_no = $2", run_id, update_no, added, drift)
    return added, drift


def describe_update(outcome: UpdateOutcome) -> str:
    """The human summary of an update, printed at the end of ``firmtopics update``."""
    name = outcome.run_name
    if outcome.status == "nothing_to_add":
        return f"run {name!r} is up to date: every stored sentence is in its results; nothing to add"
    if outcome.status == "left_to_others":
        return f"run {name!r}: another worker is updating it or forming its themes; this worker leaves it to that one"
    if outcome.status == "interrupted":
        return f"update {outcome.update_no} of run {name!r} interrupted: run the same command again to resume"
    a, d = outcome.added, outcome.drift
    lines = [f"run {name!r} updated (update {outcome.update_no}): {a['sentences']} sentences of {a['firms']} firms"
             f" added, {a['topics']} new topics",
             f"  drift: {d['new_topic_sentence_share']:.0%} of the new sentences in new topics,"
             f" {d['far_topic_share']:.0%} of the new topics far from every theme"]
    if d["fresh_run_recommended"]:
        lines.append(f"  above {DRIFT_LIMIT:.0%}: the themes no longer describe what is said; a fresh run"
                     " (`firmtopics run --run NEW_NAME`) forms them again")
    return "\n".join(lines)
