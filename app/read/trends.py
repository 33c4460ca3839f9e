"""``firmtopics trends``: themes over time, from the ``theme_periods`` view (schemas 8, 14).

Which themes rose and which faded: each fine theme's share of a period's sentences that
are in a theme, period by period (periods sort as text: ``2020Q4`` before ``2021Q1``).
Without ``--theme``, the ``--top`` largest themes side by side, one column a period;
with it, that theme's rows (firms, sentences, share). ``--json`` prints the view's rows,
one JSON object a line, for scripts.
"""

from __future__ import annotations

import json

import asyncpg

from app.errors import UsageError
from app.read.text import clip
from app.runs import load_run
from app.safe_text import printable

NAME_WIDTH = 40


async def trend_rows(conn: asyncpg.Connection, run_name: str, *, theme_id: int | None = None,
                     top: int = 10) -> list[dict]:
    """The ``theme_periods`` rows of a run: one theme's (``theme_id``) or the ``top``
    largest themes' (by sentences over all periods), ordered by theme size, then period.

    Returns dicts with ``theme_id``, ``theme_name``, ``period``, ``n_firms``,
    ``n_sentences`` and ``share_of_period`` (a float). Raises ``UsageError`` for an
    unknown run or a theme not in it."""
    run = await load_run(conn, run_name)
    if theme_id is not None and not await conn.fetchval(
            "SELECT 1 FROM themes WHERE theme_id = $1 AND run_id = $2", theme_id, run["run_id"]):
        raise UsageError(f"no theme {theme_id} in run {run_name!r}")
    # The view is read once (MATERIALIZED), and the largest themes are picked from its rows:
    # a theme and period a row, counted when the run's themes were made (schema 14).
    rows = await conn.fetch(
        "WITH periods AS MATERIALIZED ("
        "  SELECT theme_id, theme_name, period, n_firms, n_sentences, share_of_period FROM theme_periods"
        "  WHERE run_id = $1),"
        " sized AS ("
        "  SELECT theme_id, sum(n_sentences) AS total FROM periods WHERE $2::bigint IS NULL OR theme_id = $2"
        "  GROUP BY theme_id ORDER BY total DESC, theme_id LIMIT $3)"
        " SELECT p.theme_id, p.theme_name, p.period, p.n_firms, p.n_sentences, p.share_of_period"
        " FROM periods p JOIN sized USING (theme_id)"
        " ORDER BY sized.total DESC, p.theme_id, p.period",
        run["run_id"], theme_id, top)
    return [{**dict(r), "share_of_period": float(r["share_of_period"])} for r in rows]


def format_trends(rows: list[dict], run_name: str) -> str:
    """The text ``trends`` prints: a theme a line and a column a period (shares as
    percentages), or, for one theme, a line a period."""
    if not rows:
        return (f"run {run_name!r} has no periods to show: its corpus has no `period` column "
                "(e.g. 2020Q4), or the run has no themes yet")
    periods = sorted({r["period"] for r in rows})
    themes: dict[int, dict] = {}
    for r in rows:
        themes.setdefault(r["theme_id"], {"name": r["theme_name"], "by_period": {}})["by_period"][r["period"]] = r
    if len(themes) == 1:
        (theme_id, theme), = themes.items()
        lines = [f"theme {theme_id}: {theme['name']}   (run {run_name!r})",
                 f"  {'period':<10} {'firms':>6} {'sentences':>10} {'share':>7}"]
        for period in periods:
            r = theme["by_period"].get(period)
            lines.append(f"  {period:<10} {r['n_firms'] if r else 0:>6} {r['n_sentences'] if r else 0:>10} "
                         f"{(r['share_of_period'] if r else 0.0):>7.1%}")
        return "\n".join(lines)
    width = max(7, *(len(p) for p in periods))
    lines = [f"share of each period's themed sentences, run {run_name!r} ({len(themes)} largest themes)",
             f"  {'theme':<{NAME_WIDTH + 8}}" + "".join(f"{p:>{width + 1}}" for p in periods)]
    for theme_id, theme in themes.items():
        label = f"{theme_id:>6}  {clip(theme['name'], NAME_WIDTH)}"
        shares = "".join(f"{(theme['by_period'][p]['share_of_period'] if p in theme['by_period'] else 0.0):>{width + 1}.1%}"
                         for p in periods)
        lines.append(f"  {label:<{NAME_WIDTH + 8}}{shares}")
    return "\n".join(lines)



async def command(settings, args) -> int:
    """``firmtopics trends [--run NAME] [--theme ID] [--top N] [--json]``."""
    from app.database import open_database

    if args.top < 1:
        raise UsageError("--top must be at least 1")
    async with open_database(settings) as pool, pool.acquire() as conn:
        rows = await trend_rows(conn, args.run, theme_id=args.theme, top=args.top)
    if args.json:
        for row in rows:
            print(printable(json.dumps(row)))
    else:
        print(printable(format_trends(rows, args.run)))
    return 0
