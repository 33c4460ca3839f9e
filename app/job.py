"""The whole job for one run: firm stage, theme stage, vector indexes, resumably; and
what the commands that start it need around it (``run`` and ``demo``).

The order of a start (``run_with_signals``, which builds the namer, the model and the
clustering backend, then calls ``run_job``):

1. the namer is checked (a bad API key fails here, before any GPU work);
2. the model is loaded once and the clustering backend chosen;
3. the run is opened: created, or resumed if its settings match (else refused);
4. firms not yet recorded for the run are processed (one query finds them);
5. the theme stage runs, and the run's quality figures are stored with it (redone cleanly if a previous process died in it; skipped if a
   previous process stored it and died in the index build, with no firm added since);
6. the HNSW indexes are built, once, at the end.

A run that is already complete, with no new firm, does nothing and says so.

SIGTERM and SIGINT drain the run (``run_with_signals``): the first stops new firms and
lets the ones in flight finish for up to ``DRAIN_SECONDS``; a second, or the end of that
time, cancels them. ``describe_outcome`` is the summary the commands print at the end;
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass, field

import anyio
import asyncpg

from app.backend import ClusteringBackend, choose_backend
from app.claims import FirmClaims, release_theme_lock, take_theme_lock, workers_in_flight
from app.clustering import warm_up
from app.database import abandon_if_client_gone, with_connection_retry
from app.embedding import Embedder, load_embedder
from app.llm import make_namer
from app.logs import get_logger
from app.naming import Namer
from app.pipeline import FirmStage, run_firm_stage
from app.progress import Progress
from app.runs import find_run, firm_counts, firms_to_do, open_run, set_status, store_run_quality
from app.schema import build_vector_indexes, drop_vector_indexes, fix_embedding_dimension
from app.settings import RunSettings, Settings
from app.themes import run_theme_stage, stored_themes

log = get_logger("job")
# The events of the signal handling are logged under the logger name they had before it
# moved here from the command line module, so their log lines are unchanged.
signal_log = get_logger("cli")

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


async def run_with_signals(pool: asyncpg.Pool, settings: Settings, *, run_name: str,
                           retry_failed: bool = False) -> JobOutcome:
    """Build the namer, the model and the clustering backend, and run the job
    ``run_name`` (``run_job``) with SIGTERM/SIGINT handled; returns its ``JobOutcome``.

    The first signal stops new firms and lets the ones in flight finish (for up to
    ``DRAIN_SECONDS``); a second signal, or the end of that grace period, cancels them
    (their transactions roll back: nothing half-written), and the outcome is then read
    back from the run's record, ``interrupted``.
    """
    stop = anyio.Event()
    outcome: JobOutcome | None = None
    async with make_namer(settings) as namer:  # checks the LLM key before any heavy work
        embedder = await anyio.to_thread.run_sync(
            lambda: load_embedder(settings.run.embedding_model, batch_size=settings.embedding_batch_size)
        )
        backend = choose_backend()
        signal_log.info("backend_chosen", clustering=backend.name, device=embedder.device)
        async with anyio.create_task_group() as tg:

            async def watch_signals(scope: anyio.CancelScope) -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        if stop.is_set():
                            signal_log.warning("second_signal", signal=signal.Signals(signum).name)
                            scope.cancel()
                            return
                        signal_log.warning("signal_received", signal=signal.Signals(signum).name,
                                           drain_s=DRAIN_SECONDS)
                        stop.set()
                        scope.deadline = anyio.current_time() + DRAIN_SECONDS

            async def job(scope: anyio.CancelScope) -> None:
                nonlocal outcome
                with scope:
                    outcome = await run_job(pool, settings.run, run_name=run_name, embedder=embedder,
                                            backend=backend, namer=namer, retry_failed=retry_failed, stop=stop)
                tg.cancel_scope.cancel()  # the job is over: stop watching signals

            job_scope = anyio.CancelScope()
            tg.start_soon(watch_signals, job_scope)
            tg.start_soon(job, job_scope)
    if outcome is None:  # cancelled after the grace period: firms in flight were dropped whole
        async with pool.acquire() as conn:
            row = await find_run(conn, run_name)
        outcome = JobOutcome(row["run_id"] if row else 0, run_name, "interrupted")
    return outcome


def describe_outcome(outcome: JobOutcome) -> str:
    """The human summary of a job's outcome, printed at the end of ``run`` and ``demo``."""
    if outcome.status == "nothing_to_do":
        return f"run {outcome.run_name!r} is already complete: nothing to do ({_firm_line(outcome.firms)})"
    if outcome.status == "left_to_others":
        return (f"run {outcome.run_name!r}: this worker is done; another worker holds the rest and finishes the "
                f"run ({_firm_line(outcome.firms)})")
    if outcome.status == "interrupted":
        return (f"run {outcome.run_name!r} interrupted: {_firm_line(outcome.firms)}; "
                "run the same command again to resume")
    lines = [
        f"run {outcome.run_name!r} complete: {_firm_line(outcome.firms)}",
        f"  topics: {outcome.topics}, themes: {outcome.themes}",
        f"  wall time: {outcome.timings.get('wall_s', 0):.1f} s",
    ]
    if outcome.llm_usage:
        lines.append(f"  naming: {json.dumps(outcome.llm_usage)}")
    return "\n".join(lines)


def _firm_line(firms: dict) -> str:
    if not firms:
        return "no firm recorded"
    return ", ".join(f"{firms.get(k, 0)} {k}" for k in ("done", "skipped", "failed", "left"))


async def run_job(
    pool: asyncpg.Pool,
    settings: RunSettings,
    *,
    run_name: str,
    embedder: Embedder,
    backend: ClusteringBackend,
    namer: Namer,
    retry_failed: bool = False,
    stop: anyio.Event | None = None,
) -> JobOutcome:
    """Run (or resume) the job ``run_name``; returns a ``JobOutcome``.

    ``stop``, when set (by a signal handler), makes the firm stage stop taking new firms
    and keeps any later stage from starting; the run is then left ``interrupted`` (or at
    the stage it finished: ``firms_done``, ``themes_done``) and a later start resumes it.
    Any error marks the run ``failed`` (also resumable) and is raised. A dropped database
    connection between and inside the stages is retried (``with_connection_retry``).
    """
    started = time.perf_counter()
    async with pool.acquire() as conn:
        await fix_embedding_dimension(conn, embedder.dimension)
        run = await open_run(conn, run_name, settings, embedding_dim=embedder.dimension,
                             backend={**backend.describe(), "device": embedder.device,
                                      "fp16": embedder.device == "cuda"})
        todo = await firms_to_do(conn, run.run_id, retry_failed=retry_failed)
    outcome = JobOutcome(run.run_id, run_name, "complete")
    if run.status == "complete" and not todo:
        outcome.status = "nothing_to_do"
        async with pool.acquire() as conn:
            outcome.firms = await firm_counts(conn, run.run_id)
        log.info("run_already_complete", run=run_name, **outcome.firms)
        return outcome
    namer.join_run(pool, run.run_id)
    log.info("run_started" if run.created else "run_resumed", run=run_name, run_id=run.run_id,
             firms_left=len(todo), previous_status=run.status, backend=backend.name, device=embedder.device)

    async def record(status: str, **fields) -> None:
        # One UPDATE: safe to repeat, so a dropped connection is retried, not fatal.
        await with_connection_retry(pool, lambda conn: set_status(conn, run.run_id, status, **fields),
                                    what=f"run status {status}")

    async def stopped(reached: str | None) -> JobOutcome:
        # A stop request (a signal) ends the run between stages. ``reached`` is the stage
        # finished last, kept as the run's status so a resume starts after it; None means
        # firms are left, and the run is recorded ``interrupted``, unless other workers
        # hold firms of it: the run goes on with them, and says so.
        outcome.status = "interrupted"
        if reached is None:
            others = await with_connection_retry(pool, lambda conn: workers_in_flight(conn, run.run_id),
                                                 what="workers in flight")
            if others:
                log.info("run_goes_on_with_other_workers", workers=sorted({o["worker"] for o in others}))
            else:
                await record("interrupted", llm_usage=namer.usage())
        else:
            log.warning("stopped_between_stages", stopped_after=reached, reason="no stage starts after a stop")
        outcome.firms = await with_connection_retry(pool, lambda conn: firm_counts(conn, run.run_id),
                                                    what="firm counts")
        return outcome

    async def left_to_others(reason: str) -> JobOutcome:
        # Other workers of the run hold what is left: the last of them finishes the run.
        outcome.status = "left_to_others"
        outcome.firms = await with_connection_retry(pool, lambda conn: firm_counts(conn, run.run_id),
                                                    what="firm counts")
        log.info("left_to_other_workers", reason=reason, **outcome.firms)
        return outcome

    if run.status in ("interrupted", "failed") and todo:
        await record("running")  # resumed: what status shows while firms are processed
    try:
        # Passes over the firms not recorded: each is taken only when this worker claims it
        # (app.claims). Firms another worker holds are passed over; a pass that takes none
        # of them while some are left means other workers hold them all.
        took_any = False
        while todo:
            completed, taken = await _firm_stage(pool, run.run_id, settings, embedder, backend, namer, todo,
                                                 stop, outcome)
            if not completed:
                return await stopped(None)
            took_any = took_any or taken > 0
            todo = await with_connection_retry(pool, lambda conn: firms_to_do(conn, run.run_id),
                                               what="firms left")
            if todo and not taken:
                return await left_to_others(f"{len(todo)} firms are in flight on other workers")
        # A run whose themes are stored already (a worker died in the index stage) keeps
        # that status when no firm was added since: the theme stage is then skipped below.
        status_before = await with_connection_retry(
            pool, lambda conn: conn.fetchval("SELECT status FROM runs WHERE run_id = $1", run.run_id),
            what="run status")
        if took_any or status_before not in ("themes_done", "complete"):
            await record("firms_done")
        if stop is not None and stop.is_set():
            return await stopped("firms_done")

        async with pool.acquire() as theme_lock:
            # One worker runs the theme and index stages: the one holding this lock (a
            # session lock: if it dies, a later start of any worker takes it again).
            if not await take_theme_lock(theme_lock, run.run_id):
                return await left_to_others("another worker is running the theme stage")
            try:
                status_now = await theme_lock.fetchval("SELECT status FROM runs WHERE run_id = $1", run.run_id)
                if status_now == "complete" and not took_any:
                    # Another worker finished the run while this one wrote its last firm.
                    outcome.status = "nothing_to_do"
                    outcome.firms = await firm_counts(theme_lock, run.run_id)
                    return outcome
                if status_now == "themes_done" and not took_any:
                    # A worker died in the index stage, after the themes were stored: they
                    # stand (no new firm since), so go straight to the indexes.
                    themes = await with_connection_retry(pool, lambda conn: stored_themes(conn, run.run_id),
                                                         what="count themes")
                    log.info("stage_skipped", stage="themes", reason="themes already stored for this run",
                             themes=themes.themes, topics=themes.topics)
                else:
                    stage_started = time.perf_counter()
                    log.info("stage_started", stage="themes")
                    themes = await run_theme_stage(pool, run.run_id, settings, embedder, backend, namer)
                    outcome.timings["themes_s"] = round(time.perf_counter() - stage_started, 2)
                    log.info("stage_finished", stage="themes", themes=themes.themes, topics=themes.topics,
                             linked_by_cluster=themes.linked_by_cluster,
                             linked_by_nearest=themes.linked_by_nearest,
                             reason=themes.reason, seconds=outcome.timings["themes_s"])
                outcome.themes, outcome.topics = themes.themes, themes.topics
                outcome.quality = await with_connection_retry(
                    pool, lambda conn: store_run_quality(conn, run.run_id), what="run quality")
                log.info("run_quality", **outcome.quality["firms"],
                         **{f"theme_{k}": v for k, v in outcome.quality["themes"].items()})
                await record("themes_done")
                if stop is not None and stop.is_set():
                    return await stopped("themes_done")

                stage_started = time.perf_counter()
                log.info("stage_started", stage="index")
                await with_connection_retry(pool, lambda conn: _build_indexes(conn, run.run_id),
                                            what="build vector indexes")
                outcome.timings["index_s"] = round(time.perf_counter() - stage_started, 2)
                log.info("stage_finished", stage="index", seconds=outcome.timings["index_s"])
            finally:
                with anyio.CancelScope(shield=True):
                    await release_theme_lock(theme_lock, run.run_id)

        outcome.timings["wall_s"] = round(time.perf_counter() - started, 2)
        outcome.llm_usage = namer.usage()
        await record("complete", timings=outcome.timings, llm_usage=outcome.llm_usage)
        outcome.firms = await with_connection_retry(pool, lambda conn: firm_counts(conn, run.run_id),
                                                    what="firm counts")
    except BaseException as exc:
        # Cancelled (a signal's grace period ran out) is an interruption; anything else a failure.
        # Both resume the same way: start the run again.
        status = "interrupted" if isinstance(exc, anyio.get_cancelled_exc_class()) else "failed"
        with anyio.CancelScope(shield=True):
            try:
                async with pool.acquire() as conn:
                    await set_status(conn, run.run_id, status, llm_usage=namer.usage())
            except Exception:  # the database may be what failed; the run stays resumable anyway
                pass
        raise
    log.info("run_finished", run=run_name, **outcome.firms, topics=outcome.topics, themes=outcome.themes,
             **outcome.timings, llm=outcome.llm_usage)
    return outcome


async def _build_indexes(conn: asyncpg.Connection, run_id: int) -> None:
    """The HNSW indexes, on one connection. The server is told to check that this client
    is still there while it builds: otherwise a build whose process was killed goes on
    alone for as long as it takes, commits, and collides with the resumed run's build."""
    await abandon_if_client_gone(conn)
    await build_vector_indexes(conn, run_id)


async def _firm_stage(pool, run_id, settings, embedder, backend, namer, todo, stop, outcome) -> tuple[bool, int]:
    """Warm up, drop the vector indexes, process the firms this worker can claim; returns
    (False if stopped early, how many firms this worker took)."""
    async with pool.acquire() as conn:
        # Bulk-loading rule: no vector index while loading; rebuilt once at the end.
        await drop_vector_indexes(conn, run_id)
    outcome.timings["warm_up_s"] = round(
        await anyio.to_thread.run_sync(
            lambda: warm_up(backend, settings, largest_firm=max(f.n_sentences for f in todo))
        ),
        2,
    )
    stage_started = time.perf_counter()
    log.info("stage_started", stage="firms", firms=len(todo), sentences=sum(f.n_sentences for f in todo))
    progress = Progress(total_firms=len(todo), total_sentences=sum(f.n_sentences for f in todo))
    async with FirmClaims(pool, run_id) as claims:
        stage = FirmStage(pool, run_id, settings, embedder, backend, namer, stop=stop or anyio.Event(),
                          claims=claims)
        completed = await run_firm_stage(stage, todo, progress)
    outcome.timings["firms_s"] = round(time.perf_counter() - stage_started, 2)
    outcome.timings["firm_stage_seconds"] = {k: round(v, 2) for k, v in progress.stage_seconds.items()}
    outcome.timings["sentences"] = progress.sentences_done
    log.info("stage_finished", stage="firms", taken_by_other_workers=stage.taken_elsewhere, **progress.snapshot())
    return completed, progress.firms_finished
