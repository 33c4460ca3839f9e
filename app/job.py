"""The whole job for one run: firm stage, theme stage, vector indexes, resumably; and
what the commands that start it need around it (``run`` and ``demo``).

The order of a start (``run_with_signals``, which builds the namer, the model and the
clustering backend, then calls ``run_job``):

1. the namer is checked while the model loads (a bad API key fails here, before any
   firm is embedded), and the clustering backend is chosen;
2. the run is opened: created, or resumed if its settings match (else refused), and
   the namer is bound to it (``Namer.for_run``: its exchange log and run-wide slots);
3. firms not yet recorded for the run are processed (one query finds them);
4. the theme stage runs, and the run's quality figures are stored with it (redone
   cleanly if a previous process died in it, except that a process that died while
   attaching sentences to the stored themes is taken up after its last batch; skipped
   if a previous process stored it and died in the index build; both only with no firm
   added since);
5. the HNSW indexes are built, once, at the end.

A run that is already complete, with no new firm, does nothing and says so.

SIGTERM and SIGINT drain the run (``run_with_signals``): the first stops new firms and
lets the ones in flight finish for up to ``DRAIN_SECONDS``; a second, or the end of that
time, cancels them. ``describe_outcome`` is the summary the commands print at the end.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from functools import partial

import anyio
import asyncpg
from threadpoolctl import threadpool_limits

from app.backend import ClusteringBackend, choose_backend
from app.claims import FirmClaims, ThemeLock
from app.clustering import warm_up
from app.database import abandon_if_client_gone, with_connection_retry
from app.embedding import Embedder, load_run_embedder, resolve_backend
from app.errors import first_error
from app.llm import make_namer
from app.logs import get_logger
from app.naming import Namer, usage_since_recorded
from app.pipeline import FirmStage, run_firm_stage
from app.progress import Progress
from app.runs import (
    FirmToDo,
    describe_left,
    find_run,
    firm_counts,
    firms_to_do,
    left_sentences,
    open_run,
    run_status,
    set_status,
    store_run_quality,
    worker_record,
    workers_in_flight,
)
from app.schema import build_vector_indexes, drop_vector_indexes, fix_embedding_dimension
from app.settings import RunSettings, Settings, recorded_embed_backend
from app.themes import run_theme_stage, stored_themes, themes_out_of_date
from app.update import UpdateOutcome, run_update

log = get_logger("job")

# Seconds to let in-flight firms finish after SIGTERM before dropping them (a spot
# instance gives about 120 s notice; the rest of the budget is for closing cleanly).
DRAIN_SECONDS = 25.0


@dataclass
class JobOutcome:
    """How the job ended, for the command's summary and exit code."""

    run_id: int
    run_name: str
    status: str  # complete | interrupted | nothing_to_do | left_to_others
    firms: dict = field(default_factory=dict)
    themes: int = 0
    topics: int = 0
    timings: dict = field(default_factory=dict)
    llm_usage: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    left: list = field(default_factory=list)  # app.runs.left_sentences: stored, in no result


async def run_with_signals(pool: asyncpg.Pool, settings: Settings, *, run_name: str,
                           retry_failed: bool = False, update: bool = False) -> JobOutcome | UpdateOutcome:
    """Build the namer, the model and the clustering backend, and run the job
    ``run_name`` (``run_job``; with ``update``, ``app.update.run_update``) with
    SIGTERM/SIGINT handled; returns its outcome.

    The first signal stops new firms and lets the ones in flight finish (for up to
    ``DRAIN_SECONDS``); a second signal, or the end of that grace period, cancels them
    (their transactions roll back: nothing half-written), and the outcome is then read
    back from the run's record, ``interrupted``.
    """
    stop = anyio.Event()
    outcome: JobOutcome | None = None
    settings = await with_run_backend(pool, settings, run_name)
    async with make_namer(settings, check=False) as namer:
        embedder = await load_while_checking(namer, settings)
        backend = choose_backend()
        log.info("backend_chosen", clustering=backend.name, device=embedder.device)
        # OpenBLAS on one thread: its pool, called from our worker threads, was seen to spin
        # forever in a small product (numpy/numpy#17752); its share of a firm's time is small.
        threadpool_limits(limits=1, user_api="blas")
        async with anyio.create_task_group() as tg:

            async def watch_signals(scope: anyio.CancelScope) -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        if stop.is_set():
                            log.warning("second_signal", signal=signal.Signals(signum).name)
                            scope.cancel()
                            return
                        log.warning("signal_received", signal=signal.Signals(signum).name, drain_s=DRAIN_SECONDS)
                        stop.set()
                        scope.deadline = anyio.current_time() + DRAIN_SECONDS

            async def job(scope: anyio.CancelScope) -> None:
                nonlocal outcome
                work = run_update if update else partial(run_job, retry_failed=retry_failed)
                with scope:
                    outcome = await work(pool, settings.run, run_name=run_name, embedder=embedder, backend=backend,
                                         namer=namer, stop=stop, retry_window_s=settings.db_retry_window_s)
                tg.cancel_scope.cancel()  # the job is over: stop watching signals

            job_scope = anyio.CancelScope()
            tg.start_soon(watch_signals, job_scope)
            tg.start_soon(job, job_scope)
    if outcome is None:  # cancelled after the grace period: firms in flight were dropped whole
        async with pool.acquire() as conn:
            row = await find_run(conn, run_name)
        run_id = row["run_id"] if row else 0
        outcome = UpdateOutcome(run_id, run_name, "interrupted") if update else JobOutcome(run_id, run_name,
                                                                                           "interrupted")
    return outcome


async def with_run_backend(pool: asyncpg.Pool, settings: Settings, run_name: str) -> Settings:
    """``settings`` with an ``auto`` embedding backend resolved (``resolve_backend``) for the
    run ``run_name``: the backend it recorded, when it exists, so a resume or an update
    loads the model as the run ran it; the machine's choice for a new run."""
    if settings.run.embed_backend != "auto":
        return settings
    async with pool.acquire() as conn:
        row = await find_run(conn, run_name)
    recorded = recorded_embed_backend(row["settings"]) if row else None
    return replace(settings, run=settings.run.ran_by(resolve_backend("auto", recorded)))


async def load_while_checking(namer: Namer, settings: Settings) -> Embedder:
    """Load the run's model (``load_run_embedder``) while the LLM namer's start-up check
    (``LLMNamer.check``) is on the wire; returns the model, or raises the check's error.

    The check is a round trip to the server (a second or more; longer on a busy one) and
    the load is seconds of CPU: done one after the other, the LLM run began that much
    later than an offline one (docs/benchmarks.md, "Overlap of clustering and LLM
    naming"). A bad key still fails before any firm is embedded."""
    check = getattr(namer, "check", None)
    if check is None:  # offline names: nothing to check
        return await anyio.to_thread.run_sync(load_run_embedder, settings)
    loaded: list[Embedder] = []

    async def load() -> None:
        loaded.append(await anyio.to_thread.run_sync(load_run_embedder, settings))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(load)
            await check()
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    return loaded[0]


def describe_outcome(outcome: JobOutcome) -> str:
    """The human summary of a job's outcome, printed at the end of ``run`` and ``demo``."""
    left = describe_left(outcome.left)
    if outcome.status == "nothing_to_do":
        line = f"run {outcome.run_name!r} is already complete: nothing to do ({_firm_line(outcome.firms)})"
        return f"{line}\n  left: {left}" if left else line
    if outcome.status == "left_to_others":
        return (f"run {outcome.run_name!r}: this worker is done; another worker holds the rest and finishes the "
                f"run ({_firm_line(outcome.firms)})")
    if outcome.status == "interrupted":
        return (f"run {outcome.run_name!r} interrupted: {_firm_line(outcome.firms)}; "
                "run the same command again to resume")
    lines = [ f"run {outcome.run_name!r} complete: {_firm_line(outcome.firms)}",
             f"  topics: {outcome.topics}, themes: {outcome.themes}",
             f"  wall time: {outcome.timings.get('wall_s', 0):.1f} s"]
    if outcome.llm_usage:
        lines.append(f"  naming: {json.dumps(outcome.llm_usage)}")
    if left:
        lines.append(f"  left: {left}")
    return "\n".join(lines)


def _firm_line(firms: dict) -> str:
    if not firms:
        return "no firm recorded"
    return ", ".join(f"{firms.get(k, 0)} {k}" for k in ("done", "skipped", "failed", "left"))


async def run_job(pool: asyncpg.Pool, settings: RunSettings, *, run_name: str, embedder: Embedder,
                  backend: ClusteringBackend, namer: Namer, retry_failed: bool = False,
                  stop: anyio.Event | None = None, retry_window_s: float | None = None) -> JobOutcome:
    """Run (or resume) the job ``run_name``; returns a ``JobOutcome``.

    ``stop``, when set (by a signal handler), makes the firm stage stop taking new firms
    and keeps any later stage from starting; the run is then left ``interrupted`` (or at
    the stage it finished: ``firms_done``, ``themes_done``) and a later start resumes it.
    Any error marks the run ``failed`` (also resumable) and is raised. A dropped database
    connection between and inside the stages is retried (``with_connection_retry``) for
    ``retry_window_s`` (the ``DB_RETRY_WINDOW_S`` setting; its default when not given).
    """
    started = time.perf_counter()
    async with pool.acquire() as conn:
        await fix_embedding_dimension(conn, embedder.dimension)
        recorded, setup = worker_record(backend, embedder, namer)
        run = await open_run(conn, run_name, settings, embedding_dim=embedder.dimension,
                             backend=recorded, setup=setup)
        todo = await firms_to_do(conn, run.run_id, retry_failed=retry_failed)
        finished = run.status == "complete" and not todo
        counts = await firm_counts(conn, run.run_id) if finished else {}
        left = list(await left_sentences(conn, run.run_id)) if finished else []
    if finished:
        log.info("run_already_complete", run=run_name, **counts, sentences_left=sum(r["n"] for r in left))
        return JobOutcome(run.run_id, run_name, "nothing_to_do", firms=counts, left=left)
    log.info("run_started" if run.created else "run_resumed", run=run_name, run_id=run.run_id,
             firms_left=len(todo), previous_status=run.status, backend=backend.name, device=embedder.device)
    async with namer.for_run(pool, run.run_id) as run_namer:
        job = _Job(pool, run.run_id, JobOutcome(run.run_id, run_name, "complete"), stop or anyio.Event(),
                   settings, embedder, backend, run_namer, retry_window_s)
        if run.status in ("interrupted", "failed") and todo:
            await job.record("running")  # resumed: what status shows while firms are processed
        try:
            ended = await job.firm_passes(todo) or await job.themes_and_indexes()
            if ended is not None:
                return ended
            await job.finish(started)
        except BaseException as exc:
            await job.record_end(exc)
            raise
    outcome = job.outcome
    log.info("run_finished", run=run_name, **outcome.firms, topics=outcome.topics, themes=outcome.themes,
             **outcome.timings, llm=outcome.llm_usage)
    return outcome


@dataclass
class _Job:
    """One start of one run, step by step: the firm passes (``firm_passes``), the theme
    and index stages under the run's theme lock (``themes_and_indexes``), the end
    (``finish``). A step returns the outcome when the job ends there (a stop, other
    workers holding the rest), None when the next step is to follow."""

    pool: asyncpg.Pool
    run_id: int
    outcome: JobOutcome
    stop: anyio.Event
    settings: RunSettings
    embedder: Embedder
    backend: ClusteringBackend
    namer: Namer
    retry_window_s: float | None  # how long a lost connection is retried (DB_RETRY_WINDOW_S)
    took_any: bool = False  # this start wrote at least one firm

    async def retried(self, action, what: str):
        """``action(conn)`` on a pooled connection, retried over a dropped one."""
        return await with_connection_retry(self.pool, action, what=what, window_s=self.retry_window_s)

    async def record(self, status: str, **fields) -> dict:
        """Set the run's status (one UPDATE: safe to repeat, so retried, not fatal);
        returns the run's LLM usage now (``set_status``)."""
        return await self.retried(lambda conn: set_status(conn, self.run_id, status, **fields), f"run status {status}")

    async def firm_counts(self) -> dict:  # app.runs.firm_counts, retried
        return await self.retried(lambda conn: firm_counts(conn, self.run_id), "firm counts")

    async def firm_passes(self, todo: list[FirmToDo]) -> JobOutcome | None:
        """Passes over the firms not recorded: each is taken only when this worker claims
        it (``app.claims``). Firms another worker holds are passed over; a pass that takes
        none of them while some are left means other workers hold them all."""
        while todo:
            completed, taken = await self.firm_stage(todo)
            if not completed:
                return await self.stopped(None)
            self.took_any = self.took_any or taken > 0
            todo = await self.retried(lambda conn: firms_to_do(conn, self.run_id), "firms left")
            if todo and not taken:
                return await self.left_to_others(f"{len(todo)} firms are in flight on other workers")
        # A run whose themes are stored already (a worker died in the index stage) keeps
        # that status when no firm was added since: the theme stage is then skipped.
        status_before = await self.retried(lambda conn: run_status(conn, self.run_id), "run status")
        if self.took_any or status_before not in ("themes_done", "complete"):
            await self.record("firms_done")
        if self.stop.is_set():
            return await self.stopped("firms_done")
        return None

    async def firm_stage(self, todo: list[FirmToDo]) -> tuple[bool, int]:
        """Warm up, drop the vector indexes, process the firms this worker can claim;
        returns (False if stopped early, how many firms this worker took)."""
        timings = self.outcome.timings
        async with self.pool.acquire() as conn:
            # Bulk-loading rule: no vector index while loading; rebuilt once at the end.
            await drop_vector_indexes(conn, self.run_id)
            # Firms are coming: themes stored before are no longer to be resumed.
            await themes_out_of_date(conn, self.run_id)
        largest = min(max(f.n_sentences for f in todo), self.settings.max_firm_sentences)  # what is clustered
        warmed = threading.Event()

        async def warm() -> None:
            try:
                warm_s = await anyio.to_thread.run_sync(
                    lambda: warm_up(self.backend, self.settings, largest_firm=largest))
                timings["warm_up_s"] = round(warm_s, 2)
            finally:
                warmed.set()

        stage_started = time.perf_counter()
        sentences = sum(f.n_sentences for f in todo)
        log.info("stage_started", stage="firms", firms=len(todo), sentences=sentences)
        progress = Progress(total_firms=len(todo), total_sentences=sentences)
        try:
            async with anyio.create_task_group() as tg:
                # The warm-up (a first run's compilation) goes on beside the first firms'
                # embedding, and their clustering waits for it (``FirmStage.warmed``). A
                # worker stopped already takes no firm: nothing to warm up for.
                if self.stop.is_set():
                    warmed.set()
                else:
                    tg.start_soon(warm)
                async with FirmClaims(self.pool, self.run_id, window_s=self.retry_window_s) as claims:
                    stage = FirmStage(self.pool, self.run_id, self.settings, self.embedder, self.backend,
                                      self.namer, stop=self.stop, claims=claims, retry_window_s=self.retry_window_s,
                                      warmed=warmed)
                    completed = await run_firm_stage(stage, todo, progress)
        except BaseExceptionGroup as group:
            raise first_error(group) from None  # the stage's own error, not a group of it
        timings["firms_s"] = round(time.perf_counter() - stage_started, 2)
        timings["firm_stage_seconds"] = {k: round(v, 2) for k, v in progress.stage_seconds.items()}
        timings["sentences"] = progress.sentences_done
        log.info("stage_finished", stage="firms", taken_by_other_workers=stage.taken_elsewhere, **progress.snapshot())
        return completed, progress.firms_finished

    async def themes_and_indexes(self) -> JobOutcome | None:
        """The theme and index stages, run by the one worker that holds the run's theme
        lock (a session lock: if that worker dies, a later start of any worker takes it;
        if its connection is lost, it is taken again, see ``app.claims.ThemeLock``)."""
        async with ThemeLock(self.pool, self.run_id, window_s=self.retry_window_s) as lock:
            if not await lock.take():
                return await self.left_to_others("another worker is running the theme stage")
            ended = await lock.hold_while(self.locked_stages)
            if lock.lost:
                return await self.left_to_others("another worker took the theme stage while this one's "
                                                 "connection to the database was lost")
        return ended

    async def locked_stages(self) -> JobOutcome | None:
        """``themes_and_indexes`` once the lock is held."""
        status_now = await self.retried(lambda conn: run_status(conn, self.run_id), "run status")
        if status_now == "complete" and not self.took_any:
            # Another worker finished the run while this one wrote its last firm.
            self.outcome.status = "nothing_to_do"
            self.outcome.firms = await self.firm_counts()
            return self.outcome
        await self.themes(redo=status_now != "themes_done" or self.took_any)
        await self.record("themes_done")
        if self.stop.is_set():
            return await self.stopped("themes_done")
        await self.indexes()
        return None

    async def themes(self, *, redo: bool) -> None:
        """The theme stage and the run's quality figures. Without ``redo`` (a worker died
        in the index stage, after the themes were stored, and no firm came since) the
        stored themes stand and only their counts are read."""
        if redo:
            stage_started = time.perf_counter()
            log.info("stage_started", stage="themes")
            themes = await run_theme_stage(self.pool, self.run_id, self.settings, self.embedder, self.namer,
                                           retry_window_s=self.retry_window_s, resume=not self.took_any)
            self.outcome.timings["themes_s"] = round(time.perf_counter() - stage_started, 2)
            log.info("stage_finished", stage="themes", themes=themes.themes, topics=themes.topics,
                     linked_by_cluster=themes.linked_by_cluster, reason=themes.reason, seconds=self.outcome.timings["themes_s"])
        else:
            themes = await self.retried(lambda conn: stored_themes(conn, self.run_id), "count themes")
            log.info("stage_skipped", stage="themes", reason="themes already stored for this run",
                     themes=themes.themes, topics=themes.topics)
        self.outcome.themes, self.outcome.topics = themes.themes, themes.topics
        quality = await self.retried(lambda conn: store_run_quality(
            conn, self.run_id, topics=themes.topics, linked=themes.linked_by_cluster), "run quality")
        self.outcome.quality = quality
        log.info("run_quality", **quality["firms"], **{f"theme_{k}": v for k, v in quality["themes"].items()})

    async def indexes(self) -> None:
        """The HNSW indexes, built once at the end."""
        stage_started = time.perf_counter()
        log.info("stage_started", stage="index")
        await self.retried(lambda conn: _build_indexes(conn, self.run_id), "build vector indexes")
        self.outcome.timings["index_s"] = round(time.perf_counter() - stage_started, 2)
        log.info("stage_finished", stage="index", seconds=self.outcome.timings["index_s"])

    async def finish(self, started: float) -> None:
        """Record the run complete, with its timings and LLM usage."""
        outcome = self.outcome
        outcome.timings["wall_s"] = round(time.perf_counter() - started, 2)
        # The run's usage: what every worker and start of it added, this one's included.
        outcome.llm_usage = await self.record("complete", timings=outcome.timings,
                                              llm_usage=usage_since_recorded(self.namer))
        outcome.firms = await self.firm_counts()
        outcome.left = await self.retried(lambda conn: left_sentences(conn, self.run_id), "sentences left")

    async def stopped(self, reached: str | None) -> JobOutcome:
        """A stop request (a signal) ends the run between stages. ``reached`` is the stage
        finished last, kept as the run's status so a resume starts after it; None means
        firms are left, and the run is recorded ``interrupted``, unless other workers hold
        firms of it: the run goes on with them, and says so."""
        self.outcome.status = "interrupted"
        if reached is None:
            others = await self.retried(lambda conn: workers_in_flight(conn, self.run_id), "workers in flight")
            if others:
                log.info("run_goes_on_with_other_workers", workers=sorted({o["worker"] for o in others}))
            else:
                await self.record("interrupted", llm_usage=usage_since_recorded(self.namer))
        else:
            log.warning("stopped_between_stages", stopped_after=reached, reason="no stage starts after a stop")
        self.outcome.firms = await self.firm_counts()
        return self.outcome

    async def left_to_others(self, reason: str) -> JobOutcome:
        """Other workers of the run hold what is left: the last of them finishes the run."""
        self.outcome.status = "left_to_others"
        self.outcome.firms = await self.firm_counts()
        log.info("left_to_other_workers", reason=reason, **self.outcome.firms)
        return self.outcome

    async def record_end(self, exc: BaseException) -> None:
        """Record how the job ended on an error: cancelled (a signal's grace period ran
        out) is an interruption, anything else a failure; both resume the same way."""
        status = "interrupted" if isinstance(exc, anyio.get_cancelled_exc_class()) else "failed"
        with anyio.CancelScope(shield=True):
            try:
                async with self.pool.acquire() as conn:
                    await set_status(conn, self.run_id, status, llm_usage=usage_since_recorded(self.namer))
            except Exception as error:  # the database may be what failed; the run stays resumable anyway
                log.warning("run_status_not_recorded", status=status, error=f"{type(error).__name__}: {error}",
                            reason="the run stays resumable: start it again")


async def _build_indexes(conn: asyncpg.Connection, run_id: int) -> None:
    """The HNSW indexes, on one connection. The server is told to check that this client
    is still there while it builds: otherwise a build whose process was killed goes on
    alone for as long as it takes, commits, and collides with the resumed run's build."""
    await abandon_if_client_gone(conn)
    await build_vector_indexes(conn, run_id)
