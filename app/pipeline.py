"""The firm stage: bounded queues between a compute stage, a naming stage and a writer.

::

    firms left ──> [compute] ──queue(2)──> [naming] ─────────────queue(2)──> [writer]
                   embed + cluster         every clustered firm's topics     one transaction
                   (worker thread,         on the namer at once, while       per firm (COPY)
                    one firm at a time)    fewer than 2 × LLM_CONCURRENCY
                                           topics wait for a name

* The compute stage runs the blocking embedding and clustering in a worker thread, one
  firm at a time (the model is loaded once; the GPU is used by one firm at a time).
* The naming stage hands every topic of a clustered firm to the namer at once and
  passes the firm on when its last topic is named. It takes the next clustered firm as
  long as fewer than twice the namer's concurrency of topics are waiting for a name, so
  every LLM slot always has a topic to work on (no slot waits for a slow firm's last
  topic) while clustering goes on; only when the LLM is far behind does compute wait.
* The writer stores each firm whole, in one transaction.

Memory is bounded by the queue sizes and the naming backlog (each firm held in naming
has at least one topic waiting) times the largest firm, never by the corpus; what
clustering takes is bounded by ``max_firm_sentences``, on which a larger firm is
clustered as a sample (``app.clustering.firm_sample``). A failure
in any stage cancels the others (an anyio task group) and surfaces as the run's error:
nothing hangs. A firm whose own processing fails is recorded as failed, with its error,
and the run goes on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import partial

import anyio
import asyncpg
import numpy as np
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from app.backend import ClusteringBackend
from app.claims import FirmClaims
from app.clustering import TooFewToCluster, attach_outliers, cluster_firm, firm_sample
from app.database import with_connection_retry
from app.embedding import Embedder
from app.errors import first_error
from app.logs import get_logger
from app.memory import release_free_memory
from app.naming import Namer, TopicToName
from app.progress import Progress
from app.quality import firm_quality
from app.runs import FirmToDo, firm_sentences
from app.settings import RunSettings
from app.writer import FirmResult, TopicResult, write_firm_with_retry

log = get_logger("pipeline")

COMPUTE_QUEUE = 2  # clustered firms waiting to be taken by the naming stage
WRITE_QUEUE = 2  # named firms waiting for the writer
BACKLOG_PER_SLOT = 2  # topics waiting for a name, per request the namer has in flight at once


@dataclass
class FirmStage:
    """What the firm stage needs: where to read and write, and the loaded tools."""

    pool: asyncpg.Pool
    run_id: int
    settings: RunSettings
    embedder: Embedder
    backend: ClusteringBackend
    namer: Namer
    # Set by a signal handler: stop taking new firms, finish the ones in flight.
    stop: anyio.Event = field(default_factory=anyio.Event)
    # One thread for compute: the model and the GPU serve one firm at a time.
    compute_limiter: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(1))
    in_flight: set = field(default_factory=set)
    # Other workers may share the run (app.claims): a firm is taken only when claimed.
    claims: FirmClaims | None = None
    taken_elsewhere: int = 0  # firms passed over because another worker holds them
    retry_window_s: float | None = None  # how long a lost connection is retried (DB_RETRY_WINDOW_S)
    # Set when clustering's warm-up is done (``app.clustering.warm_up``, run beside the
    # first firms' embedding); clustering waits for it. None: nothing to wait for.
    warmed: threading.Event | None = None


@dataclass
class ClusteredFirm:
    """A firm after compute, before naming: the result minus its topics' labels."""

    result: FirmResult
    to_name: list[TopicToName]


async def run_firm_stage(stage: FirmStage, firms: list[FirmToDo], progress: Progress) -> bool:
    """Process ``firms`` through compute -> naming -> writer. Returns True when every
    firm was taken, False when a stop request ended it early (firms in flight were
    still finished and written whole)."""
    to_name_send, to_name_receive = anyio.create_memory_object_stream[ClusteredFirm](COMPUTE_QUEUE)
    to_write_send, to_write_receive = anyio.create_memory_object_stream[FirmResult](WRITE_QUEUE)
    finished = anyio.Event()
    stop_watch = anyio.CancelScope()
    completed = True

    async def report_stop() -> None:
        # The moment a stop is requested, log the firms in flight: they are finished and
        # written (or dropped whole if the grace period runs out); no other firm is taken.
        with stop_watch:
            await stage.stop.wait()
            log.warning("stop_requested", in_flight=sorted(stage.in_flight),
                        firms_not_started=len(firms) - progress.firms_finished - len(stage.in_flight))

    async def compute() -> None:
        nonlocal completed
        async with to_name_send:
            looking_since = time.perf_counter()  # claim time: finding a firm no other worker holds
            for firm in firms:
                if stage.stop.is_set():
                    completed = False
                    break
                if stage.claims is not None and not await stage.claims.take(firm.firm_id):
                    stage.taken_elsewhere += 1
                    continue
                claim_s = time.perf_counter() - looking_since
                stage.in_flight.add(firm.firm_id)
                log.info("firm_claimed", firm=firm.firm_id, sentences=firm.n_sentences)
                clustered = await compute_firm(stage, firm)
                if stage.claims is not None:
                    clustered.result.seconds["claim"] = claim_s
                await to_name_send.send(clustered)
                looking_since = time.perf_counter()

    async def writer() -> None:
        async with to_write_receive:
            async for result in to_write_receive:
                await write_one(stage, result, progress)
        finished.set()
        stop_watch.cancel()

    async def ticker() -> None:
        while not finished.is_set():
            with anyio.move_on_after(1.0):
                await finished.wait()
            progress.maybe_report()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(compute)
            backlog = TopicBacklog(BACKLOG_PER_SLOT * stage.namer.concurrency)
            tg.start_soon(naming_stage, stage.namer, to_name_receive, to_write_send, backlog)
            tg.start_soon(writer)
            tg.start_soon(ticker)
            tg.start_soon(report_stop)
    except BaseExceptionGroup as group:
        # The stage that failed first is what the run reports; the others were cancelled.
        raise first_error(group) from None
    except anyio.get_cancelled_exc_class():
        # Cancelled from outside (the grace period after a signal ran out): the firms in
        # flight are dropped whole; their transactions roll back and a resume takes them.
        if stage.in_flight:
            log.warning("firms_dropped", firms=sorted(stage.in_flight),
                        reason="cancelled before they were written; a resume takes them again")
        raise
    progress.maybe_report(force=True)
    return completed


async def write_one(stage: FirmStage, result: FirmResult, progress: Progress) -> None:
    """The writer stage's work on one named firm: write it whole, give its claim back,
    count it and log it."""
    started = time.perf_counter()
    written = await write_firm_with_retry(stage.pool, stage.run_id, result, window_s=stage.retry_window_s)
    result.seconds["write"] = time.perf_counter() - started
    stage.in_flight.discard(result.firm_id)
    if stage.claims is not None:
        await stage.claims.release(result.firm_id)
    if not written:
        # Another worker wrote it (this one's claim was lost with its connection):
        # that copy stands, and this one is dropped; the firm is that worker's.
        log.warning("firm_written_by_another_worker", firm=result.firm_id,
                    reason="this worker's claim was lost with its connection; the other copy stands")
        return
    progress.firm_finished(result.status, result.n_sentences, result.seconds)
    log.info("firm_finished", firm=result.firm_id, status=result.status, reason=result.reason,
             sentences=result.n_sentences, topics=len(result.topics), outliers=result.n_outliers,
             seconds={k: round(v, 3) for k, v in result.seconds.items()},
             firms_finished=progress.firms_finished, firms_total=progress.total_firms)
    progress.maybe_report()


class TopicBacklog:
    """Topics handed to the namer and not named yet, with a ceiling on taking more firms.

    The naming stage calls ``admit`` before it takes a firm (it waits while ``limit``
    or more topics are waiting); each topic calls ``named`` when its name is back. One
    caller of ``admit`` at a time (the naming stage's loop).
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.waiting = 0
        self.peak = 0  # most topics waiting at once, for tests and benchmarks
        self._room = anyio.Event()

    async def admit(self, n_topics: int) -> None:
        """Wait until fewer than ``limit`` topics are waiting, then count ``n_topics`` in."""
        while self.waiting >= self.limit:
            self._room = anyio.Event()
            await self._room.wait()
        self.waiting += n_topics
        self.peak = max(self.peak, self.waiting)

    def named(self) -> None:
        """One topic's name is back."""
        self.waiting -= 1
        if self.waiting < self.limit:
            self._room.set()


async def naming_stage(namer: Namer, receive: MemoryObjectReceiveStream[ClusteredFirm],
                       send: MemoryObjectSendStream[FirmResult], backlog: TopicBacklog) -> None:
    """Take clustered firms while the backlog has room; name each firm's topics
    concurrently with every other firm's; send each firm on when all its topics are
    named (firms may leave in another order than they came)."""

    async def name_and_pass_on(clustered: ClusteredFirm) -> None:
        await send.send(await name_firm(namer, clustered, on_named=backlog.named))

    # The task group closes before the send stream, so every firm is sent before the
    # writer sees the end of the stream.
    async with receive, send, anyio.create_task_group() as tg:
        async for clustered in receive:
            await backlog.admit(len(clustered.to_name))
            tg.start_soon(name_and_pass_on, clustered)


async def name_firm(namer: Namer, clustered: ClusteredFirm, on_named=None) -> FirmResult:
    """Label every topic of one firm (concurrently; the namer's semaphore caps requests).

    ``on_named``, when given, is called as each topic's name comes back."""
    started = time.perf_counter()
    labels = [None] * len(clustered.to_name)

    async def one(i: int, topic: TopicToName) -> None:
        labels[i] = await namer.name_topic(topic)
        if on_named is not None:
            on_named()

    async with anyio.create_task_group() as tg:
        for i, topic in enumerate(clustered.to_name):
            tg.start_soon(one, i, topic)
    result = clustered.result
    result.topics = [
        TopicResult(topic_no=topic.topic_no, keywords=topic.keywords, label=label, n_sentences=topic.n_sentences,
                    evidence_sentence_ids=topic.sentence_ids)
        for topic, label in zip(clustered.to_name, labels)
    ]
    result.seconds["name"] = time.perf_counter() - started
    return result


async def compute_firm(stage: FirmStage, firm: FirmToDo) -> ClusteredFirm:
    """Load, embed and cluster one firm. Never raises for the firm's own trouble: a
    firm that cannot be processed comes back with status ``failed`` and the error."""
    started = time.perf_counter()
    rows = await with_connection_retry(stage.pool, lambda conn: firm_sentences(conn, firm.firm_id),
                                       what=f"load firm {firm.firm_id}", window_s=stage.retry_window_s)
    sentence_ids = np.fromiter((r["sentence_id"] for r in rows), dtype=np.int64, count=len(rows))
    texts = [r["text"] for r in rows]
    del rows  # a giant firm's records would otherwise stay beside its texts while it is embedded
    result = FirmResult(firm.firm_id, firm.firm_name, status="done", sentence_ids=sentence_ids)
    result.seconds["load"] = time.perf_counter() - started
    try:
        to_name = await anyio.to_thread.run_sync(
            partial(_embed_and_cluster, stage, firm, texts, result), limiter=stage.compute_limiter
        )
    except Exception as exc:  # isolate the firm: record it as failed, go on with the run
        log.error("firm_failed", firm=firm.firm_id, error=f"{type(exc).__name__}: {exc}")
        # Keep the ids (for counts) but no embeddings: none of its sentence rows are written.
        result = FirmResult(firm.firm_id, firm.firm_name, status="failed", sentence_ids=sentence_ids,
                            reason=f"{type(exc).__name__}: {str(exc)[:500]}", seconds=result.seconds)
        return ClusteredFirm(result, [])
    return ClusteredFirm(result, to_name)


def _embed_and_cluster(stage: FirmStage, firm: FirmToDo, texts: list[str], result: FirmResult) -> list[TopicToName]:
    """The blocking part of compute (runs in the worker thread); fills ``result``.

    What the firm's embedding and clustering freed is handed back to the operating
    system before the next firm (``app.memory``): memory follows the largest firm, not
    the number of firms."""
    try:
        return _embed_and_cluster_firm(stage, firm, texts, result)
    finally:
        release_free_memory()


def _embed_and_cluster_firm(
    stage: FirmStage, firm: FirmToDo, texts: list[str], result: FirmResult
) -> list[TopicToName]:
    started = time.perf_counter()
    result.embeddings = stage.embedder.encode(texts)
    result.seconds["embed"] = time.perf_counter() - started
    result.labels = np.full(len(texts), -1, dtype=np.int64)
    if len(texts) < stage.settings.min_firm_sentences:
        result.status = "skipped"
        result.reason = f"only {len(texts)} sentences; at least {stage.settings.min_firm_sentences} needed to cluster"
        return []
    if stage.warmed is not None:
        stage.warmed.wait()
    sample = firm_sample(len(texts), stage.settings, firm.firm_id)
    if sample is not None:
        log.info("firm_sampled", firm=firm.firm_id, sentences=len(texts), sample=len(sample))
    started = time.perf_counter()
    try:
        clustering = cluster_firm(texts, result.embeddings, stage.settings, stage.backend, sample=sample,
                                  names=(firm.firm_id, firm.firm_name))
    except TooFewToCluster as exc:
        result.status = "skipped"
        result.reason = str(exc)
        return []
    finally:
        result.seconds["cluster"] = time.perf_counter() - started
    final = attach_outliers(result.embeddings, clustering.labels, stage.settings.outlier_threshold)
    result.labels = final
    result.nearest = (clustering.labels == -1) & (final >= 0)
    result.quality = firm_quality(clustering.labels, final, [c.keywords for c in clustering.clusters], texts)
    if sample is not None:
        result.quality["sample"] = len(sample)
        result.reason = (f"clustered on a seeded sample of {len(sample)} of its {len(texts)} sentences"
                         " (FIRMTOPICS_MAX_FIRM_SENTENCES); the others joined their nearest topic when close enough")
    if not clustering.clusters:
        result.reason = "no topic found: HDBSCAN left every sentence as an outlier"
    return [
        TopicToName(
            firm_id=firm.firm_id,
            firm_name=firm.firm_name,
            topic_no=cluster.number,
            keywords=cluster.keywords,
            sentences=[texts[i] for i in cluster.representatives],
            sentence_ids=[int(result.sentence_ids[i]) for i in cluster.representatives],
            # Its sentences, those attached by nearness included (sentence_topics tells which).
            n_sentences=int((final == cluster.number).sum()),
        )
        for cluster in clustering.clusters
    ]
