"""``firmtopics search TEXT``: the themes, topics or sentences nearest in meaning to a text.

The text is embedded with the run's own model (``runs.model``: vectors from another
model would not be comparable), and the nearest rows are found by cosine distance
(``<=>``) through the HNSW indexes built at the end of the run. Each hit comes with its
place in the hierarchy (theme -> topic -> firm -> sentence) and its distance
(0 = same direction; 1 = unrelated; 2 = opposite).

An HNSW index is approximate, and a filter (the run, ``--firm``) is applied to what the
index hands up, so a selective filter can leave fewer rows than asked for. Three things
guard against that, cheapest first:

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

import anyio
import asyncpg
import numpy as np

from app.cli import UsageError
from app.logs import get_logger
from app.show import load_run

log = get_logger("search")

LEVELS = ("theme", "topic", "sentence")
MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search

# One query per level. {distance} is the ordering expression and {firm} the optional
# firm filter; both are filled from constants below, never from user text (the values
# themselves are query parameters: $1 vector, $2 run id, $3 limit, $4 firm id).
# The inner query only walks the index; the outer one adds the hierarchy to its hits.
_QUERIES = {
    "theme": """
        WITH hits AS MATERIALIZED (
            SELECT th.theme_id, th.embedding <=> $1 AS distance
            FROM themes th
            WHERE th.run_id = $2 {firm}
            ORDER BY {distance} LIMIT $3)
        SELECT h.distance, th.theme_id, th.name AS theme_name, th.summary AS theme_summary,
               th.n_topics, th.n_firms
        FROM hits h JOIN themes th ON th.theme_id = h.theme_id
        ORDER BY h.distance, th.theme_id""",
    "topic": """
        WITH hits AS MATERIALIZED (
            SELECT t.topic_id, t.embedding <=> $1 AS distance
            FROM topics t
            WHERE t.run_id = $2 {firm}
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
            SELECT st.sentence_id, st.topic_id, st.embedding <=> $1 AS distance
            FROM sentence_topics st
            WHERE st.run_id = $2 {firm}
            ORDER BY {distance} LIMIT $3)
        SELECT h.distance, t.theme_id, th.name AS theme_name, h.topic_id, t.name AS topic_name,
               s.firm_id, f.firm_name, s.sentence_id, s.doc_id, s.text
        FROM hits h
        JOIN sentences s ON s.sentence_id = h.sentence_id
        JOIN firms f ON f.firm_id = s.firm_id
        LEFT JOIN topics t ON t.topic_id = h.topic_id
        LEFT JOIN themes th ON th.theme_id = t.theme_id
        ORDER BY h.distance, s.sentence_id""",
}
_FIRM_FILTERS = {
    # A theme "of a firm" is one that holds at least one of the firm's topics.
    "theme": "AND EXISTS (SELECT 1 FROM topics ft WHERE ft.theme_id = th.theme_id AND ft.firm_id = $4)",
    "topic": "AND t.firm_id = $4",
    "sentence": "AND st.firm_id = $4",
}
_EMBEDDING = {"theme": "th.embedding", "topic": "t.embedding", "sentence": "st.embedding"}


def _query(level: str, *, firm: bool, exact: bool) -> str:
    column = _EMBEDDING[level]
    # The index serves "ORDER BY column <=> $1" only; adding 0 makes the expression one
    # it does not match, so the planner scans the filtered rows and sorts them exactly.
    distance = f"({column} <=> $1) + 0" if exact else f"{column} <=> $1"
    return _QUERIES[level].format(firm=_FIRM_FILTERS[level] if firm else "", distance=distance)


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
) -> list[dict]:
    """The ``limit`` rows of ``level`` nearest to ``vector`` in run ``run_id``.

    Takes an L2-normalised query vector from the run's model; ``firm_id`` restricts the
    hits to one firm (at theme level: to the themes holding one of its topics).
    Returns one dict a hit, nearest first: ``rank``, ``distance`` and the hierarchy
    fields of the level (``theme_*``, ``topic_*``, ``firm_*``, ``sentence_id``, ``text``).
    """
    if level not in LEVELS:
        raise UsageError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    args = [vector, run_id, limit] + ([firm_id] if firm_id is not None else [])
    async with conn.transaction():  # SET LOCAL lasts until the end of this transaction
        await conn.execute(f"SET LOCAL hnsw.ef_search = {min(MAX_EF_SEARCH, max(40, limit * 4))}")
        if await _iterative_scan_available(conn):
            await conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        rows = await conn.fetch(_query(level, firm=firm_id is not None, exact=False), *args)
        if len(rows) < limit:
            exact = await conn.fetch(_query(level, firm=firm_id is not None, exact=True), *args)
            if len(exact) > len(rows):
                log.info("search_exact_fallback", level=level, firm=firm_id, index_rows=len(rows),
                         exact_rows=len(exact))
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
) -> list[dict]:
    """Search run ``run_name`` for ``text``: checks the arguments and the run, embeds the
    text with the run's model and returns ``nearest``'s hits.

    ``embedder`` may be given to reuse a loaded model (it must be the run's model);
    otherwise the run's model is loaded. Raises ``UsageError`` for an unknown or
    unfinished run, an unknown firm, a bad level or limit, or an empty text.
    """
    if not text.strip():
        raise UsageError("search for what? the text is empty")
    if limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    if level not in LEVELS:
        raise UsageError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    run = await load_run(conn, run_name)
    if firm_id is not None and not await conn.fetchval("SELECT 1 FROM firms WHERE firm_id = $1", firm_id):
        raise UsageError(f"no firm {firm_id!r} in the database")
    if embedder is None:
        from app.embedding import load_embedder

        embedder = await anyio.to_thread.run_sync(lambda: load_embedder(run["model"]))
    vector = (await anyio.to_thread.run_sync(embedder.encode, [text]))[0]
    if vector.shape[0] != run["embedding_dim"]:
        raise UsageError(f"the model gives {vector.shape[0]}-dimensional vectors, the run holds "
                         f"{run['embedding_dim']}-dimensional ones")
    return await nearest(conn, vector, run_id=run["run_id"], level=level, firm_id=firm_id, limit=limit)


# --- output -----------------------------------------------------------------------------


def format_hits(hits: list[dict], *, level: str, text: str, run_name: str, width: int | None = None) -> str:
    """A readable table of ``hits``: one line a hit, its hierarchy in columns
    (theme, topic, firm, then the sentence or summary). Long names are clipped; the last
    column is clipped to ``width`` when one is given (a terminal's), else printed whole."""
    if not hits:
        return f"no {level} found in run {run_name!r}"
    # (title, key, widest it may get); 0 = the last column, which takes the width left.
    columns: list[tuple[str, str, int]] = [("#", "rank", 3), ("distance", "distance", 8)]
    if level == "theme":
        columns += [("theme", "theme", 48), ("topics", "n_topics", 6), ("firms", "n_firms", 5),
                    ("summary", "theme_summary", 0)]
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
        }
        rows.append({key: "" if cells.get(key) is None else " ".join(str(cells[key]).split())
                     for _, key, _ in columns})
    # Each column as wide as its widest cell, up to its limit.
    sized = [(title, key, min(cap, max(len(title), *(len(r[key]) for r in rows))) if cap else 0)
             for title, key, cap in columns]
    used = sum(w + 2 for _, _, w in sized if w)
    last = max(30, width - used) if width else max(len(r[sized[-1][1]]) for r in rows)
    sized = [(title, key, w or last) for title, key, w in sized]
    numeric = ("rank", "n_topics", "n_firms", "n_sentences")
    lines = [
        f"{len(hits)} {level}{'s' if len(hits) != 1 else ''} nearest to {text!r} in run {run_name!r}"
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
    """``firmtopics search TEXT [--level L] [--firm ID] [--limit K] [--run NAME] [--json]``."""
    from app.database import open_database

    async with open_database(settings) as pool, pool.acquire() as conn:
        hits = await search(conn, args.text, run_name=args.run, level=args.level, firm_id=args.firm,
                            limit=args.limit)
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    print(format_json_lines(hits) if args.json else
          format_hits(hits, level=args.level, text=args.text, run_name=args.run, width=width))
    return 0
