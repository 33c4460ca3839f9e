"""``firmtopics search TEXT``: the themes, topics or sentences nearest in meaning to a text.

The text is embedded with the run's own model (``runs.model``: vectors from another
model would not be comparable), and the nearest rows are found by cosine distance
(``<=>``) through the HNSW indexes built at the end of the run. Each hit comes with its
place in the hierarchy (theme -> topic -> firm -> sentence) and its distance
(0 = same direction; 1 = unrelated; 2 = opposite).

Themes come in levels (1 = the fine themes topics belong to; each level above groups the
one below into broader themes). ``--level theme`` searches every level at once, since a
text may be nearest to a broad theme or to a fine one; ``--theme-level N`` keeps one.
Each theme hit carries its level and its parent (the theme one level up).

An HNSW index is approximate, and a filter (the run, ``--firm``, ``--theme-level``) is
applied to what the index hands up, so a selective filter can leave fewer rows than asked
for. Three things guard against that, cheapest first:

1. ``hnsw.ef_search`` (the candidate list, 40 by default) is raised with the limit;
2. on pgvector >= 0.8, ``hnsw.iterative_scan = relaxed_order`` makes the index keep
   scanning until enough rows pass the filter (the outer ``ORDER BY`` restores the
   exact order that "relaxed" gives up);
3. if the index still returns fewer rows than asked for, the same query runs once more
   as an exact scan of the filtered rows (one firm's sentences: cheap).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import anyio
import asyncpg
import numpy as np

from app.errors import UsageError
from app.logs import get_logger
from app.runs import load_run
from app.safe_text import printable

log = get_logger("search")

LEVELS = ("theme", "topic", "sentence")
MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search
# The most hits a search returns: the index hands up at most MAX_EF_SEARCH candidates, and
# more hits than a reader can look at are an export (``firmtopics export``), not a search.
MAX_LIMIT = 1000

# One query per level. {distance} is the ordering expression, {firm} the optional firm
# filter and {theme_level} the optional theme level filter; all are filled from constants
# below, never from user text (the values themselves are query parameters: $1 vector,
# $2 run id, $3 limit, then the firm id and the theme level, each numbered only when given).
# The inner query only walks the index; the outer one adds the hierarchy to its hits.
_QUERIES = {
    "theme": """
        WITH hits AS MATERIALIZED (
            SELECT th.theme_id, th.embedding <=> $1 AS distance
            FROM themes th
            WHERE th.run_id = $2 AND th.run_id = {run_id} {firm} {theme_level}
            ORDER BY {distance} LIMIT $3)
        SELECT h.distance, th.theme_id, th.name AS theme_name, th.level, th.parent_theme_id,
               p.name AS parent_name, th.summary AS theme_summary, th.n_topics, th.n_firms
        FROM hits h
        JOIN themes th ON th.theme_id = h.theme_id
        LEFT JOIN themes p ON p.theme_id = th.parent_theme_id
        ORDER BY h.distance, th.theme_id""",
    "topic": """
        WITH hits AS MATERIALIZED (
            SELECT t.topic_id, t.embedding <=> $1 AS distance
            FROM topics t
            WHERE t.run_id = $2 AND t.run_id = {run_id} {firm}
            ORDER BY {distance} LIMIT $3)
        SELECT h.distance, t.theme_id, th.name AS theme_name, t.topic_id, t.name AS topic_name,
               t.summary AS topic_summary, t.n_sentences, t.firm_id, f.firm_name
        FROM hits h
        JOIN topics t ON t.topic_id = h.topic_id
        JOIN firms f ON f.firm_id = t.firm_id
        LEFT JOIN themes th ON th.theme_id = t.theme_id
        ORDER BY h.distance, t.topic_id""",
    "sentence": """
        WITH hits AS MATERIALIZED (
            SELECT st.sentence_id, st.topic_id, st.theme_id, st.embedding <=> $1 AS distance
            FROM sentence_topics st
            WHERE st.run_id = $2 AND st.run_id = {run_id} {firm}
            ORDER BY {distance} LIMIT $3)
        SELECT h.distance, th.theme_id, th.name AS theme_name, h.topic_id, t.name AS topic_name,
               s.firm_id, f.firm_name, s.sentence_id, s.doc_id, s.text
        FROM hits h
        JOIN sentences s ON s.sentence_id = h.sentence_id
        JOIN firms f ON f.firm_id = s.firm_id
        LEFT JOIN topics t ON t.topic_id = h.topic_id
        LEFT JOIN themes th ON th.theme_id = coalesce(t.theme_id, h.theme_id)
        ORDER BY h.distance, s.sentence_id""",
}
_FIRM_FILTERS = {
    # A theme "of a firm" is one that holds at least one of the firm's topics: a fine theme
    # directly, a broader one through the themes below it. Topics link to fine themes only,
    # so the firm's themes are those and their ancestors, found once (the subquery does
    # not depend on the outer row) by walking up the parents.
    "theme": """AND th.theme_id IN (
                WITH RECURSIVE firm_themes AS (
                    SELECT ft.theme_id FROM topics ft WHERE ft.run_id = $2 AND ft.firm_id = ${n}
                    UNION
                    SELECT up.parent_theme_id FROM firm_themes f JOIN themes up ON up.theme_id = f.theme_id
                    WHERE up.parent_theme_id IS NOT NULL)
                SELECT theme_id FROM firm_themes)""",
    "topic": "AND t.firm_id = ${n}",
    "sentence": "AND st.firm_id = ${n}",
}
_THEME_LEVEL_FILTER = "AND th.level = ${n}"
_EMBEDDING = {"theme": "th.embedding", "topic": "t.embedding", "sentence": "st.embedding"}


def _query(level: str, *, run_id: int, firm: bool, exact: bool, theme_level: bool = False) -> str:
    """The query of ``level``, with the firm and theme level filters where they are given
    (their parameters follow $1-$3 in that order: $4 is the firm id if there is one)."""
    column = _EMBEDDING[level]
    # The index serves "ORDER BY column <=> $1" only; adding 0 makes the expression one
    # it does not match, so the planner scans the filtered rows and sorts them exactly.
    distance = f"({column} <=> $1) + 0" if exact else f"{column} <=> $1"
    # A parameter that no query text mentions has no type, which PostgreSQL refuses, so
    # the optional ones are numbered by what is given rather than fixed.
    firm_filter = _FIRM_FILTERS[level].replace("{n}", "4") if firm else ""
    level_filter = _THEME_LEVEL_FILTER.replace("{n}", str(5 if firm else 4)) if theme_level else ""
    # The run's id also as a literal: each run's HNSW indexes are partial (WHERE run_id = N),
    # and the planner uses a partial index only where it can see the query is inside it,
    # which a parameter does not show in a cached generic plan. It is an integer from the
    # runs table, never user text.
    return _QUERIES[level].format(firm=firm_filter, theme_level=level_filter, distance=distance, run_id=int(run_id))


def _check_theme_level(level: str, theme_level: int | None) -> None:
    """``theme_level`` picks among themes, so it only goes with ``level="theme"``; levels
    count from 1 (the fine themes). A level the run does not have is no error: no hits."""
    if theme_level is None:
        return
    if level != "theme":
        raise UsageError(f"--theme-level goes with --level theme only, not --level {level}")
    if theme_level < 1:
        raise UsageError(f"--theme-level must be at least 1 (1 = the fine themes), got {theme_level}")


async def _iterative_scan_available(conn: asyncpg.Connection) -> bool:
    """pgvector >= 0.8 has ``hnsw.iterative_scan``; older servers (e.g. some managed
    ones) refuse the setting, so it is only set where it exists."""
    version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except (AttributeError, ValueError):
        return False
    return (major, minor) >= (0, 8)


async def nearest(
    conn: asyncpg.Connection,
    vector: np.ndarray,
    *,
    run_id: int,
    level: str = "topic",
    firm_id: str | None = None,
    limit: int = 10,
    theme_level: int | None = None,
) -> list[dict]:
    """The ``limit`` rows of ``level`` nearest to ``vector`` in run ``run_id``.

    Takes an L2-normalised query vector from the run's model; ``firm_id`` restricts the
    hits to one firm (at theme level: to the themes holding one of its topics, at any
    level); ``theme_level`` (with ``level="theme"`` only) to the themes of one level,
    1 = the fine ones; without it themes of every level compete.
    Returns one dict a hit, nearest first: ``rank``, ``distance`` and the hierarchy
    fields of the level (``theme_*``, ``topic_*``, ``firm_*``, ``sentence_id``, ``text``;
    a theme also its ``level``, ``parent_theme_id`` and ``parent_name``, None at the top).
    """
    if level not in LEVELS:
        raise UsageError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    _check_theme_level(level, theme_level)
    args = ([vector, run_id, limit] + ([firm_id] if firm_id is not None else [])
            + ([theme_level] if theme_level is not None else []))
    filters = {"run_id": run_id, "firm": firm_id is not None, "theme_level": theme_level is not None}
    async with conn.transaction():  # SET LOCAL lasts until the end of this transaction
        await conn.execute(f"SET LOCAL hnsw.ef_search = {min(MAX_EF_SEARCH, max(40, limit * 4))}")
        if await _iterative_scan_available(conn):
            await conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        rows = await conn.fetch(_query(level, exact=False, **filters), *args)
        if len(rows) < limit:
            exact = await conn.fetch(_query(level, exact=True, **filters), *args)
            if len(exact) > len(rows):
                log.info("search_exact_fallback", level=level, firm=firm_id, theme_level=theme_level,
                         index_rows=len(rows), exact_rows=len(exact))
                rows = exact
    return [{"rank": i, **dict(row)} for i, row in enumerate(rows, start=1)]


async def search(
    conn: asyncpg.Connection,
    text: str,
    *,
    run_name: str = "default",
    level: str = "topic",
    firm_id: str | None = None,
    limit: int = 10,
    embedder=None,
    theme_level: int | None = None,
    models_dir: Path | None = None,
) -> list[dict]:
    """Search run ``run_name`` for ``text``: checks the arguments and the run, embeds the
    text with the run's model and returns ``nearest``'s hits.

    ``embedder`` may be given to reuse a loaded model (it must be the run's model);
    otherwise the run's model is loaded, from its ONNX export where it can be
    (``app.read.query_embedder``: kept in ``models_dir``, the data folder's ``models``,
    built there by the first search of a run embedded by torch). ``theme_level`` keeps
    the themes of one level (see ``nearest``). Raises ``UsageError`` for an unknown or unfinished run, an unknown
    firm, a bad level, theme level or limit, or an empty text.
    """
    if not text.strip():
        raise UsageError("search for what? the text is empty")
    if not 1 <= limit <= MAX_LIMIT:
        raise UsageError(f"--limit must be between 1 and {MAX_LIMIT}, got {limit}")
    if level not in LEVELS:
        raise UsageError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    # Before the run and the model are loaded: a wrong combination needs neither.
    _check_theme_level(level, theme_level)
    run = await load_run(conn, run_name)
    if firm_id is not None and not await conn.fetchval("SELECT 1 FROM firms WHERE firm_id = $1", firm_id):
        raise UsageError(f"no firm {firm_id!r} in the database")
    if embedder is None:
        from app.read.query_embedder import load_query_embedder

        embedder = await anyio.to_thread.run_sync(lambda: load_query_embedder(run, models_dir))
    vector = (await anyio.to_thread.run_sync(embedder.encode, [text]))[0]
    if vector.shape[0] != run["embedding_dim"]:
        raise UsageError(f"the model gives {vector.shape[0]}-dimensional vectors, the run holds "
                         f"{run['embedding_dim']}-dimensional ones")
    return await nearest(conn, vector, run_id=run["run_id"], level=level, firm_id=firm_id, limit=limit,
                         theme_level=theme_level)


# --- output -----------------------------------------------------------------------------


def format_hits(hits: list[dict], *, level: str, text: str, run_name: str, width: int | None = None,
                theme_level: int | None = None) -> str:
    """A readable table of ``hits``: one line a hit, its hierarchy in columns
    (theme, topic, firm, then the sentence or summary; a theme its level and parent).
    Long names are clipped; the last column is clipped to ``width`` when one is given
    (a terminal's), else printed whole. ``theme_level`` is the level searched, if one was."""
    what = level if theme_level is None else f"level-{theme_level} {level}"
    if not hits:
        return f"no {what} found in run {run_name!r}"
    # (title, key, widest it may get); 0 = the last column, which takes the width left.
    columns: list[tuple[str, str, int]] = [("#", "rank", 3), ("distance", "distance", 8)]
    if level == "theme":
        columns += [("level", "level", 5), ("theme", "theme", 48), ("parent", "parent", 32),
                    ("topics", "n_topics", 6), ("firms", "n_firms", 5), ("summary", "theme_summary", 0)]
    elif level == "topic":
        columns += [("theme", "theme", 40), ("topic", "topic", 40), ("firm", "firm_id", 12),
                    ("sentences", "n_sentences", 9)]
    else:
        columns += [("theme", "theme", 28), ("topic", "topic", 28), ("firm", "firm_id", 12),
                    ("sentence", "text", 0)]
    rows = []
    for hit in hits:
        cells = {
            **hit,
            "distance": f"{hit['distance']:.3f}",
            "theme": _label(hit.get("theme_id"), hit.get("theme_name")),
            "topic": _label(hit.get("topic_id"), hit.get("topic_name")),
            "parent": _label(hit.get("parent_theme_id"), hit.get("parent_name")),
        }
        rows.append({key: "" if cells.get(key) is None else " ".join(str(cells[key]).split())
                     for _, key, _ in columns})
    # Each column as wide as its widest cell, up to its limit.
    sized = [(title, key, min(cap, max(len(title), *(len(r[key]) for r in rows))) if cap else 0)
             for title, key, cap in columns]
    used = sum(w + 2 for _, _, w in sized if w)
    last = max(30, width - used) if width else max(len(r[sized[-1][1]]) for r in rows)
    sized = [(title, key, w or last) for title, key, w in sized]
    numeric = ("rank", "level", "n_topics", "n_firms", "n_sentences")
    lines = [
        f"{len(hits)} {what}{'s' if len(hits) != 1 else ''} nearest to {text!r} in run {run_name!r}"
        " (cosine distance: 0 = same meaning, 1 = unrelated)",
        "  ".join(_fit(title, w, right=key in numeric) for title, key, w in sized).rstrip(),
    ]
    for row in rows:
        lines.append("  ".join(_fit(row[key], w, right=key in numeric) for _, key, w in sized).rstrip())
    return "\n".join(lines)


def format_json_lines(hits: list[dict]) -> str:
    """``hits`` as JSON Lines (one object a hit), for scripts: ``jq``, ``pandas.read_json(lines=True)``."""
    return "\n".join(json.dumps(hit, ensure_ascii=False) for hit in hits)


def _label(item_id, name) -> str | None:
    return None if item_id is None else f"{item_id}: {name}"


def _fit(text: str, width: int, *, right: bool = False) -> str:
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.rjust(width) if right else text.ljust(width)


async def command(settings, args) -> int:
    """``firmtopics search TEXT [--level L] [--theme-level N] [--firm ID] [--limit K] [--run NAME]
    [--json]``."""
    from app.database import open_database

    async with open_database(settings) as pool, pool.acquire() as conn:
        hits = await search(conn, args.text, run_name=args.run, level=args.level, firm_id=args.firm,
                            limit=args.limit, theme_level=args.theme_level, models_dir=settings.data_dir / "models")
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    print(printable(format_json_lines(hits) if args.json else
                    format_hits(hits, level=args.level, text=args.text, run_name=args.run, width=width,
                                theme_level=args.theme_level)))
    return 0
