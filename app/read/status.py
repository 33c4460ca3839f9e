"""``firmtopics status`` (where a run stands) and ``firmtopics runs`` (every run), as a few
readable lines or, with ``--json``, as JSON. Each is built in two steps: a function that
reads the rows into a JSON-ready dict, and one that turns it into text."""

from __future__ import annotations

import json

import asyncpg

from app.read.text import format_quality
from app.runs import describe_left, find_run, firm_counts, left_sentences, run_updates, runs_overview, workers_in_flight


async def status_detail(pool: asyncpg.Pool, run_name: str) -> dict:
    """Where run ``run_name`` stands, as a JSON-ready dict: ``run`` (None when it has not
    been started; then ``firms`` and ``sentences`` count the database), ``status``,
    ``firms`` (done, skipped, failed, left, total), ``topics``, ``themes_per_level``
    (fine first), ``started_at``/``finished_at`` (ISO), ``model``, ``embedding_dim``,
    ``backend``, ``timings``, ``llm_usage``, ``quality``, ``settings``, ``failed``
    (firm id and reason of each failed firm), ``in_flight`` (the firms workers hold
    now: ``worker``, ``firm_id``, ``since``; see ``app.claims``), ``left_sentences``
    (stored sentences of finished firms in no result, by firm and period; their sum is
    ``firms.sentences_left``) and ``updates`` (each ``firmtopics update``: number, status,
    dates, what it added, its drift)."""
    async with pool.acquire() as conn:
        run = await find_run(conn, run_name)
        if run is None:
            return {"run": None, "name": run_name, "firms": await conn.fetchval("SELECT count(*) FROM firms"),
                    "sentences": await conn.fetchval("SELECT count(*) FROM sentences")}
        counts = await firm_counts(conn, run["run_id"])
        topics = await conn.fetchval("SELECT count(*) FROM topics WHERE run_id = $1", run["run_id"])
        per_level = [r["n"] for r in await conn.fetch(
            "SELECT count(*) AS n FROM themes WHERE run_id = $1 GROUP BY level ORDER BY level", run["run_id"])]
        failed = await conn.fetch(
            "SELECT firm_id, reason FROM run_firms WHERE run_id = $1 AND status = 'failed' ORDER BY firm_id",
            run["run_id"])
        in_flight = await workers_in_flight(conn, run["run_id"])
        left = [dict(r) for r in await left_sentences(conn, run["run_id"])]
        updates = await run_updates(conn, run["run_id"])
    counts["sentences_left"] = sum(r["n"] for r in left)

    return {
        "run": run["run_id"], "name": run_name, "status": run["status"], "firms": counts, "topics": topics,
        "themes_per_level": per_level, "model": run["model"], "embedding_dim": run["embedding_dim"],
        "backend": run["backend"], "started_at": run["started_at"].isoformat(timespec="seconds"),
        "finished_at": run["finished_at"].isoformat(timespec="seconds") if run["finished_at"] else None,
        "timings": run["timings"] or {}, "llm_usage": run["llm_usage"] or {}, "quality": run["quality"],
        "settings": run["settings"] or {}, "failed": [dict(r) for r in failed], "in_flight": in_flight,
        "left_sentences": left, "updates": updates,
    }


def format_status(detail: dict) -> str:
    """The text of ``status``: state, firms done / skipped / failed / left, topics, themes,
    timings, LLM usage, the run's quality figures and the failed firms with their errors."""
    name = detail["name"]
    if detail["run"] is None:
        return (f"run {name!r} has not been started. The database holds {detail['firms']} firms and "
                f"{detail['sentences']} sentences; start it with: firmtopics run --run {name}")
    counts, per_level, settings = detail["firms"], detail["themes_per_level"], detail["settings"]
    lines = [
        f"run {name!r} (id {detail['run']}): {detail['status']}",
        f"  model: {detail['model']} ({detail['embedding_dim']} dimensions), backend: {detail['backend']}",
        f"  firms: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed, "
        f"{counts['left']} left, of {counts['total']}",
        f"  topics: {detail['topics']}, themes: {per_level[0] if per_level else 0}",
        f"  started: {detail['started_at']}" + (f", finished: {detail['finished_at']}" if detail["finished_at"] else ""),
    ]
    workers: dict[str, list[dict]] = {}
    for claim in detail.get("in_flight", []):
        workers.setdefault(claim["worker"], []).append(claim)
    for worker, claims in workers.items():
        lines.append(f"  in flight: {worker} (since {claims[0]['since']}): "
                     + ", ".join(c["firm_id"] for c in claims))
    if len(per_level) > 1:
        lines.append(f"  theme levels: {len(per_level)}, fine to top: " + " -> ".join(map(str, per_level)))
    elif per_level:
        lines.append(f"  theme levels: one ({per_level[0]} themes, no more than the top level's "
                     f"{settings.get('theme_top_level_size', 'size')}: no broader level needed)")
    left = describe_left(detail["left_sentences"])
    if left:
        lines.append(f"  left: {left}")
    for update in detail["updates"][-1:]:
        lines.append(f"  updates: {len(detail['updates'])}; the last: {json.dumps(update)}")
        if update["drift"].get("fresh_run_recommended"):
            lines.append("  the last update drifted from the themes: a fresh run (firmtopics run --run NEW_NAME) "
                         "forms them again")
    if detail["timings"]:
        lines.append(f"  timings: {json.dumps(detail['timings'])}")
    if detail["llm_usage"]:
        lines.append(f"  naming: {json.dumps(detail['llm_usage'])}")
    if detail["quality"]:
        lines += format_quality(detail["quality"])
    lines.append(f"  settings: {json.dumps(settings)}")
    if counts["skipped"]:
        lines.append(f"  skipped firms: {counts['skipped']} (see run_firms.reason)")
    for row in detail["failed"]:
        lines.append(f"  failed: {row['firm_id']}: {row['reason']}")
    if detail["failed"]:
        lines.append(f"  retry them with: firmtopics run --run {name} --retry-failed")
    return "\n".join(lines)


async def run_status(pool: asyncpg.Pool, run_name: str) -> str:
    """The text ``firmtopics status`` prints for run ``run_name``."""
    return format_status(await status_detail(pool, run_name))


async def runs_list(pool: asyncpg.Pool) -> list[dict]:
    """Every run of the database, oldest first: ``name``, ``run_id``, ``status``, firms
    done and skipped, topics, fine themes, ``model``, ``started_at``, ``finished_at``."""
    async with pool.acquire() as conn:
        rows = await runs_overview(conn)
    return [{**dict(r), "started_at": r["started_at"].isoformat(timespec="seconds"),
             "finished_at": r["finished_at"].isoformat(timespec="seconds") if r["finished_at"] else None}
            for r in rows]


def format_runs(runs: list[dict]) -> str:
    """The text of ``runs``: one line a run."""
    if not runs:
        return "no run yet: start one with firmtopics run --input FILE"
    header = f"{'run':<16} {'status':<12} {'firms':>6} {'topics':>7} {'themes':>7}  {'model':<24} started / finished"
    lines = [header]
    for r in runs:
        lines.append(f"{r['name'][:16]:<16} {r['status']:<12} {r['firms_done']:>6} {r['topics']:>7} {r['themes']:>7}"
                     f"  {r['model'][:24]:<24} {r['started_at']} / {r['finished_at'] or '-'}")
    return "\n".join(lines)
