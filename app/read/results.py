"""A run's results for a notebook, as pandas DataFrames.

    from app.results import open_run

    run = open_run("default")          # DATABASE_URL, or the embedded default, like the CLI
    themes = run.themes()              # every level, with parent and sizes
    frame, vectors = run.sentences(embeddings=True)
    run.sentences(firm="AAPL", period="2020Q4")   # a part of the run, filtered in the database
    for chunk in run.sentences_chunks(chunk_rows=100_000):   # a large run, a piece at a time
        ...
    run.periods()                      # theme prevalence per period
    run.panel(level=2)                 # firm x period x theme shares, for regressions
    run.search("supply chain costs", level="theme")

Each method opens a connection, reads, and closes it, so a ``Run`` holds nothing between
calls. The queries run on an event loop of their own in a worker thread: a notebook's
own loop (Jupyter runs one) is never blocked or re-entered.

``sentences()`` without a filter reads the whole run into one frame: fine for a few
million sentences, not for tens of millions. A large run is read filtered (a firm, a
theme, a period) or in chunks (``sentences_chunks``), so memory follows what is asked
for, never the run.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio
import numpy as np
import pandas as pd

from app.database import as_array, create_pool, resolve_url
from app.errors import UsageError
from app.runs import load_run
from app.settings import Settings

_THEMES = """
SELECT o.theme_id, o.level, o.parent_theme_id, p.name AS parent_name, o.theme_name AS name, o.summary,
       o.keywords, o.name_source, o.n_topics, o.n_firms, o.n_sentences
FROM theme_overview o LEFT JOIN themes p ON p.theme_id = o.parent_theme_id
WHERE o.run_id = $1 ORDER BY o.level DESC, o.theme_id
"""
_TOPICS = """
SELECT t.topic_id, t.firm_id, f.firm_name, t.topic_no, t.name, t.summary, t.keywords, t.name_source,
       t.n_sentences, t.theme_id, th.name AS theme_name, l.ancestor_id AS top_theme_id, l.ancestor_name AS top_theme_name
FROM topics t JOIN firms f USING (firm_id)
LEFT JOIN themes th ON th.theme_id = t.theme_id
LEFT JOIN theme_lineage l ON l.theme_id = t.theme_id AND l.ancestor_is_top
WHERE t.run_id = $1 ORDER BY t.firm_id, t.topic_no
"""
_SENTENCES = """
SELECT sa.sentence_id, sa.firm_id, sa.firm_name, sa.doc_id, d.period, sa.text, sa.topic_id, sa.topic_name,
       sa.topic_assignment, sa.theme_id, sa.theme_name, sa.theme_via,
       l.ancestor_id AS top_theme_id, l.ancestor_name AS top_theme_name{embedding}
FROM sentence_assignments sa
LEFT JOIN documents d ON d.firm_id = sa.firm_id AND d.doc_id = sa.doc_id
LEFT JOIN theme_lineage l ON l.theme_id = sa.theme_id AND l.ancestor_is_top
{join}
WHERE sa.run_id = $1 AND sa.sentence_id > $2{filters}
ORDER BY sa.sentence_id LIMIT $3
"""
# The filters of ``sentences``, each with its parameter. The firm's goes through the index
# on (run_id, firm_id) (sql/010_firm_index.sql). A theme is itself and every theme under
# it: theme_lineage pairs each fine theme with all its ancestors.
_FILTERS = {
    "firm": " AND sa.firm_id = ${}",
    "theme": " AND sa.theme_id IN (SELECT theme_id FROM theme_lineage WHERE ancestor_id = ${})",
    "period": " AND d.period = ${}",
}
_NULLABLE_IDS = ("topic_id", "theme_id", "top_theme_id")  # None for a sentence in no topic or theme
_EMBEDDING = (", st.embedding", "JOIN sentence_topics st ON st.run_id = sa.run_id AND st.sentence_id = sa.sentence_id")
_PERIODS = """
SELECT theme_id, theme_name, period, n_firms, n_sentences, share_of_period::float8 AS share_of_period
FROM theme_periods WHERE run_id = $1 ORDER BY period, theme_id
"""


def _in_own_loop(work):
    """Run the coroutine function ``work`` on a fresh event loop in a worker thread and
    return its result (a notebook's running loop cannot run another)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(anyio.run, work).result()


def _on_a_connection(url: str, action):
    """``action(conn)`` on a connection of its own to ``url``, opened and closed around
    it, on an event loop of its own (``_in_own_loop``); returns what it returns."""

    async def work():
        pool = await create_pool(url, min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                return await action(conn)
        finally:
            await pool.close()

    return _in_own_loop(work)


@dataclass(frozen=True)
class Run:
    """One finished run of a database; build it with ``open_run``."""

    name: str
    run_id: int
    # Out of the repr: a notebook cell or a traceback showing the run must not show the
    # database's password.
    url: str = field(repr=False)

    def _frame(self, sql: str, *args) -> pd.DataFrame:
        rows = _on_a_connection(self.url, lambda conn: conn.fetch(sql, self.run_id, *args))
        return pd.DataFrame([dict(r) for r in rows], columns=list(rows[0].keys()) if rows else None)

    def themes(self) -> pd.DataFrame:
        """Every theme of every level (top level first): ``theme_id``, ``level`` (1 =
        fine), ``parent_theme_id`` and ``parent_name`` (None at the top), ``name``,
        ``summary``, ``keywords``, ``name_source``, ``n_topics``, ``n_firms``,
        ``n_sentences`` (of the topics under it)."""
        return self._frame(_THEMES)

    def topics(self) -> pd.DataFrame:
        """Every firm topic: ids, firm, name, summary, keywords, ``n_sentences``, its fine
        theme (``theme_id``, ``theme_name``) and its top theme (``top_theme_id``,
        ``top_theme_name``)."""
        return self._frame(_TOPICS)

    def sentences(self, *, firm: str | None = None, theme: int | None = None, period: str | None = None,
                  embeddings: bool = False) -> pd.DataFrame | tuple[pd.DataFrame, np.ndarray]:
        """The run's sentences in sentence id order, each with its document's ``period``,
        its topic (None for one in no topic), its fine and top theme and how it got the
        theme (``theme_via``).

        Without a filter, every sentence of the run, in one frame: a large run is better
        read filtered or with ``sentences_chunks``. ``firm`` keeps one firm's sentences,
        ``period`` one period's, ``theme`` (a theme id of any level) the sentences in that
        theme or in any theme under it, through their topic or attached to it
        (``theme_via``); filters given together all apply. With ``embeddings=True``,
        returns ``(frame, vectors)``: a float32 array with one row per frame row, in the
        same order. ``topic_id``, ``theme_id`` and ``top_theme_id`` are pandas' nullable
        integers (``Int64``)."""
        return self._sentences(0, None, firm=firm, theme=theme, period=period, embeddings=embeddings)

    def sentences_chunks(self, *, chunk_rows: int = 100_000, firm: str | None = None, theme: int | None = None,
                         period: str | None = None, embeddings: bool = False) -> Iterator:
        """``sentences(...)`` in pieces: yields frames of at most ``chunk_rows`` rows (with
        ``embeddings=True``, ``(frame, vectors)`` pairs) that together are what
        ``sentences`` with the same filters returns, in the same order; nothing when no
        sentence matches. Only one chunk is held at a time, so memory stays flat however
        large the run. Each chunk is one query on a connection of its own, taking the rows
        after the last sentence id of the chunk before (keyset paging). Raises
        ``ValueError`` unless ``chunk_rows`` is at least 1."""
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")

        def chunks():
            after = 0
            while True:
                chunk = self._sentences(after, chunk_rows, firm=firm, theme=theme, period=period,
                                        embeddings=embeddings)
                frame = chunk[0] if embeddings else chunk
                if frame.empty:
                    return
                yield chunk
                if len(frame) < chunk_rows:
                    return
                after = int(frame["sentence_id"].iloc[-1])

        return chunks()

    def _sentences(self, after: int, limit: int | None, *, firm, theme, period, embeddings):
        """The sentences with an id above ``after``, at most ``limit`` (None: all), filtered;
        as ``sentences`` returns them."""
        filters, values = "", []
        for name, value in (("firm", firm), ("theme", theme), ("period", period)):
            if value is not None:
                values.append(int(value) if name == "theme" else value)
                filters += _FILTERS[name].format(3 + len(values))  # $1 run, $2 after, $3 limit
        column, join = _EMBEDDING if embeddings else ("", "")
        frame = self._frame(_SENTENCES.format(embedding=column, join=join, filters=filters), after, limit, *values)
        if not frame.empty:
            # Nullable integers, not floats with NaN: the same dtypes in every chunk,
            # whether or not it happens to hold a sentence in no topic.
            frame = frame.astype({name: "Int64" for name in _NULLABLE_IDS})
        if not embeddings:
            return frame
        if frame.empty:
            return frame, np.zeros((0, 0), dtype=np.float32)
        vectors = np.stack([as_array(v) for v in frame.pop("embedding")])
        return frame, vectors

    def periods(self) -> pd.DataFrame:
        """Theme prevalence per period (the ``theme_periods`` view): ``theme_id``,
        ``theme_name``, ``period``, ``n_firms``, ``n_sentences``, ``share_of_period``.
        Empty for a corpus without periods."""
        return self._frame(_PERIODS)

    def panel(self, *, level: int | None = None) -> pd.DataFrame:
        """The firm x period x theme panel (the view ``firm_theme_periods``), one row per
        firm, period and theme of ``level`` (1 = fine; None: every level): ``firm_id``,
        ``period``, ``level``, ``theme_id``, ``theme_name``, ``n_sentences``,
        ``period_sentences``, ``share``; zero rows for every top-level theme. Raises
        ``UsageError`` for a level the run lacks (``app/read/panel.py``)."""
        from app.read.panel import COLUMN_NAMES, panel_rows

        rows = _on_a_connection(self.url, lambda conn: panel_rows(conn, self.run_id, self.name, level))
        return pd.DataFrame([dict(r) for r in rows], columns=COLUMN_NAMES)

    def search(self, text: str, *, level: str = "topic", firm: str | None = None, limit: int = 10,
               theme_level: int | None = None) -> pd.DataFrame:
        """The hits ``firmtopics search`` gives (the same function), one row each, nearest
        first; ``distance`` is the cosine distance."""
        from app.read.search import search

        models_dir = Settings.from_env().data_dir / "models"  # where the query's model export is kept
        return pd.DataFrame(_on_a_connection(self.url, lambda conn: search(
            conn, text, run_name=self.name, level=level, firm_id=firm, limit=limit, theme_level=theme_level,
            models_dir=models_dir)))


def open_run(name: str = "default", *, database_url: str | None = None) -> Run:
    """The finished run ``name`` of the database ``database_url`` (default: as the CLI
    finds it: ``DATABASE_URL``, else the embedded server in ``FIRMTOPICS_DATA_DIR``).

    Raises ``UsageError`` when there is no such run or it has not finished."""
    settings = Settings.from_env()
    url = database_url or resolve_url(settings)

    run = _on_a_connection(url, lambda conn: load_run(conn, name))
    return Run(name=name, run_id=run["run_id"], url=url)


__all__ = ["Run", "UsageError", "open_run"]
