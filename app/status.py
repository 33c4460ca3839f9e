"""``firmtopics status``: where a run stands, in a few readable lines."""

from __future__ import annotations

import json

import asyncpg

from app.quality import format_quality
from app.runs import find_run, firm_counts


async def run_status(pool: asyncpg.Pool, run_name: str) -> str:
    """A text report of run ``run_name``: state, firms done / skipped / failed / left,
    topics, themes, timings, LLM usage, the run's quality figures (``runs.quality``), and the
    failed firms with their errors."""
    async with pool.acquire() as conn:
        run = await find_run(conn, run_name)
        if run is None:
            total = await conn.fetchval("SELECT count(*) FROM firms")
            sentences = await conn.fetchval("SELECT count(*) FROM sentences")
            return (f"run {run_name!r} has not been started. The database holds {total} firms and "
                    f"{sentences} sentences; start it with: firmtopics run --run {run_name}")
        counts = await firm_counts(conn, run["run_id"])
        topics = await conn.fetchval("SELECT count(*) FROM topics WHERE run_id = $1", run["run_id"])
        per_level = [r["n"] for r in await conn.fetch(
            "SELECT count(*) AS n FROM themes WHERE run_id = $1 GROUP BY level ORDER BY level", run["run_id"])]
        failed = await conn.fetch(
            "SELECT firm_id, reason FROM run_firms WHERE run_id = $1 AND status = 'failed' ORDER BY firm_id",
            run["run_id"],
        )
        skipped = await conn.fetchval(
            "SELECT count(*) FROM run_firms WHERE run_id = $1 AND status = 'skipped'", run["run_id"]
        )
    timings = json.loads(run["timings"]) if run["timings"] else {}
    settings = json.loads(run["settings"])
    usage = json.loads(run["llm_usage"]) if run["llm_usage"] else {}
    lines = [
        f"run {run_name!r} (id {run['run_id']}): {run['status']}",
        f"  model: {run['model']} ({run['embedding_dim']} dimensions), backend: {json.loads(run['backend'])}",
        f"  firms: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed, "
        f"{counts['left']} left, of {counts['total']}",
        f"  topics: {topics}, themes: {per_level[0] if per_level else 0}",
        f"  started: {run['started_at']:%Y-%m-%d %H:%M:%S %Z}"
        + (f", finished: {run['finished_at']:%Y-%m-%d %H:%M:%S %Z}" if run["finished_at"] else ""),
    ]
    if len(per_level) > 1:
        lines.append(f"  theme levels: {len(per_level)}, fine to top: " + " -> ".join(map(str, per_level)))
    elif per_level:
        lines.append(f"  theme levels: one ({per_level[0]} themes, no more than the top level's "
                     f"{settings.get('theme_top_level_size', 'size')}: no broader level needed)")
    if timings:
        lines.append(f"  timings: {json.dumps(timings)}")
    if usage:
        lines.append(f"  naming: {json.dumps(usage)}")
    if run["quality"]:
        lines += format_quality(json.loads(run["quality"]))
    lines.append(f"  settings: {json.dumps(settings)}")
    if skipped:
        lines.append(f"  skipped firms: {skipped} (see run_firms.reason)")
    for row in failed:
        lines.append(f"  failed: {row['firm_id']}: {row['reason']}")
    if failed:
        lines.append(f"  retry them with: firmtopics run --run {run_name} --retry-failed")
    return "\n".join(lines)
