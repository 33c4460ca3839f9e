"""``firmtopics report --out DIR``: one self-contained HTML page about a run.

The page (``DIR/report.html``) holds the run's model and settings, its counts, the
themes (name, summary, number of firms and topics, the firms that speak most about
each) and a 2-D map of every firm topic coloured by its theme, to explore: hover for a
topic's name, firm and theme, click the legend to show or hide a theme. It needs no
network and no other file: the CSS and the plotly.js library are inline, so it can be
mailed or attached to a paper's replication package as it is.

Themes may come in levels (``themes.level``, 1 the finest; see ``sql/005_theme_levels.sql``).
Then the page shows the tree: each top theme (no parent) as a block that opens onto its
children, and theirs in turn, and the map colours topics by their top theme, since a
few broad colours read better than dozens of fine ones. A run with a single level reads
as a flat table.

The map places topics by their embeddings (the ones the themes were clustered from),
reduced to two dimensions: by UMAP (cosine) when there are enough topics for UMAP's
neighbourhood graph to mean something, by PCA below that (the same threshold the
clustering uses). Distances on such a map are only roughly faithful; it shows which
themes sit apart and which blend, not exact similarities. A run of more than
``MAP_POINTS`` topics is mapped by a seeded sample of them with every fine theme in it,
drawn with WebGL, and the page says so: the page's size and the browser's work stay
bounded however many topics the run has.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import asyncpg
import numpy as np

from app.clustering import UMAP_MIN_DOCS
from app.database import as_array, open_database
from app.logs import get_logger
from app.read.staging import staged_files
from app.read.text import clip, format_quality
from app.runs import load_run

log = get_logger("report")

TOP_FIRMS = 5  # firms listed per theme
MAP_COLOURS = 20  # themes with a colour of their own on the map; the rest share grey
TREND_THEMES = 8  # the largest themes followed over time
# Dots on the map at most. Above it the map draws a seeded sample with every fine theme in
# it, with WebGL: a page of every topic of a large run (25,000 and more) would weigh tens
# of MB and take a browser long to draw, and a reader sees no more in it.
MAP_POINTS = 5_000


# --- reading the run --------------------------------------------------------------------


async def report_data(conn: asyncpg.Connection, run_name: str, *, map_points: int = MAP_POINTS) -> dict:
    """Everything the page shows, read from the database.

    Returns a dict: ``run`` (the ``runs`` row, JSON columns decoded), ``counts``,
    ``levels`` (how many levels of themes the run has; 0 without themes), ``themes``,
    ``topics`` and ``map_total``. ``themes`` are the top-level themes, largest first; each
    has its ``level``, ``parent_theme_id`` (None), ``top_firms`` and ``children`` (the
    themes one level down, largest first, each shaped alike down to level 1, whose
    ``children`` are empty). In a single-level run that is every theme, as a flat list.
    ``topics`` hold id, firm, fine ``theme_id``, ``top_theme_id`` and embedding of the
    topics to map: every one, or a seeded sample of ``map_points`` when the run has more
    (``map_total`` says how many it has; see ``_map_topics``). Raises ``UsageError`` for
    an unknown or unfinished run.
    """
    from app.runs import firm_counts

    run = await load_run(conn, run_name)
    run_id = run["run_id"]
    firms = await firm_counts(conn, run_id)
    counts = {
        "firms done": firms["done"],
        "firms skipped": firms["skipped"],
        "firms failed": firms["failed"],
        "sentences": await conn.fetchval("SELECT count(*) FROM sentence_topics WHERE run_id = $1", run_id),
        "outlier sentences (in no topic)": await conn.fetchval(
            "SELECT count(*) FROM sentence_topics WHERE run_id = $1 AND topic_id IS NULL", run_id),
        "sentences attached to a topic by nearness": await conn.fetchval(
            "SELECT count(*) FROM sentence_topics WHERE run_id = $1 AND topic_assignment = 'nearest'", run_id),
        "sentences in no topic attached to a theme by nearness": await conn.fetchval(
            "SELECT count(*) FROM sentence_topics WHERE run_id = $1 AND theme_id IS NOT NULL", run_id),
        "topics": await conn.fetchval("SELECT count(*) FROM topics WHERE run_id = $1", run_id),
        "themes": await conn.fetchval("SELECT count(*) FROM themes WHERE run_id = $1", run_id),
    }
    # Topics link to level-1 themes only, so a broader theme's sentences and firms are
    # those of the topics below it: theme_lineage pairs each fine theme with every
    # ancestor (itself included), which makes "everything under a theme" one join.
    themes = [dict(r) for r in await conn.fetch(
        "SELECT th.theme_id, th.name AS theme_name, th.summary, th.keywords, th.level, th.parent_theme_id,"
        "       th.n_topics, th.n_firms, coalesce(under.n_sentences, 0)::integer AS n_sentences"
        " FROM themes th LEFT JOIN ("
        "   SELECT l.ancestor_id, sum(t.n_sentences) AS n_sentences"
        "   FROM topics t JOIN theme_lineage l ON l.theme_id = t.theme_id"
        "   WHERE t.run_id = $1 GROUP BY l.ancestor_id) under ON under.ancestor_id = th.theme_id"
        " WHERE th.run_id = $1 ORDER BY th.n_topics DESC, n_sentences DESC, th.theme_id", run_id)]
    # The firms that speak most about each theme, at any level (by sentences in their topics under it).
    top = await conn.fetch(
        "SELECT theme_id, firm_id, firm_name, n_sentences FROM ("
        "  SELECT l.ancestor_id AS theme_id, t.firm_id, f.firm_name, sum(t.n_sentences)::integer AS n_sentences,"
        "         row_number() OVER (PARTITION BY l.ancestor_id ORDER BY sum(t.n_sentences) DESC, t.firm_id)"
        "           AS place"
        "  FROM topics t JOIN theme_lineage l ON l.theme_id = t.theme_id JOIN firms f ON f.firm_id = t.firm_id"
        "  WHERE t.run_id = $1 GROUP BY l.ancestor_id, t.firm_id, f.firm_name) ranked"
        " WHERE place <= $2 ORDER BY theme_id, place", run_id, TOP_FIRMS)
    levels = max((t["level"] for t in themes), default=0)
    if levels > 1:
        for level in range(levels, 0, -1):
            counts[f"themes at level {level}"] = sum(1 for t in themes if t["level"] == level)
    by_id = {t["theme_id"]: t for t in themes}
    for theme in themes:
        theme["keywords"] = list(theme["keywords"])
        theme["top_firms"] = [dict(r) for r in top if r["theme_id"] == theme["theme_id"]]
        theme["children"] = []
    # Hang each theme under its parent; walking the list in size order keeps every
    # theme's children largest first, like the top level.
    for theme in themes:
        if theme["parent_theme_id"] is not None:
            by_id[theme["parent_theme_id"]]["children"].append(theme)
    topics, total = await _map_topics(conn, run_id, map_points, seed=int(run["settings"].get("seed", 42)))
    return {"run": dict(run), "counts": counts, "levels": levels,
            "themes": [t for t in themes if t["parent_theme_id"] is None], "topics": topics, "map_total": total}


# The topics to map: every one of the run up to a limit, else a sample drawn in the
# database (so a run's topics are never all read): in each fine theme, the topics in the
# order of a seeded hash of their ids; the first of every theme comes before the rest, so
# every theme keeps a dot, and the rest are an even draw, so a large theme keeps more.
_MAP_TOPICS = """
SELECT t.topic_id, t.firm_id, t.name, t.theme_id, th.name AS theme_name, l.ancestor_id AS top_theme_id, t.embedding
FROM (SELECT topic_id FROM (
        SELECT topic_id, md5($3 || ':' || topic_id) AS draw,
               row_number() OVER (PARTITION BY theme_id ORDER BY md5($3 || ':' || topic_id)) AS place
        FROM topics WHERE run_id = $1 AND embedding IS NOT NULL) drawn
      ORDER BY place > 1, draw LIMIT $2) chosen
JOIN topics t USING (topic_id)
LEFT JOIN themes th ON th.theme_id = t.theme_id
LEFT JOIN theme_lineage l ON l.theme_id = t.theme_id AND l.ancestor_is_top
ORDER BY t.topic_id
"""


async def _map_topics(conn: asyncpg.Connection, run_id: int, limit: int, *, seed: int) -> tuple[list[dict], int]:
    """The topics of run ``run_id`` to put on the map (at most ``limit``, a sample drawn
    with ``seed`` when there are more) and how many topics with an embedding it has."""
    total = await conn.fetchval("SELECT count(*) FROM topics WHERE run_id = $1 AND embedding IS NOT NULL", run_id)
    rows = await conn.fetch(_MAP_TOPICS, run_id, limit, str(seed))
    return [dict(r) for r in rows], total


# --- the map ----------------------------------------------------------------------------


def project_2d(embeddings: np.ndarray, *, seed: int = 42) -> np.ndarray:
    """2-D coordinates for the rows of ``embeddings`` (n x d): UMAP (cosine) when there
    are at least ``UMAP_MIN_DOCS`` rows, PCA otherwise. Returns an (n, 2) float array."""
    n = len(embeddings)
    if n == 0:
        return np.zeros((0, 2))
    if n < UMAP_MIN_DOCS:
        centred = embeddings - embeddings.mean(axis=0)
        if n == 1 or not centred.any():
            return np.zeros((n, 2))
        # PCA by SVD: the two directions along which the topics differ most.
        _, _, components = np.linalg.svd(centred, full_matrices=False)
        coords = centred @ components[:2].T
        return np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    from umap import UMAP

    reducer = UMAP(n_components=2, n_neighbors=min(15, n - 1), min_dist=0.1, metric="cosine",
                   random_state=seed, n_jobs=1)  # a seed makes UMAP single-threaded anyway
    return reducer.fit_transform(embeddings)


def topic_map_html(topics: list[dict], themes: list[dict], *, seed: int = 42, total: int | None = None) -> str | None:
    """The map of firm topics as an HTML fragment: an interactive plotly chart, one dot a
    topic, coloured by its top theme, whose hover shows the topic's name, firm and theme
    and whose legend shows or hides a theme (a click; a double click keeps only it). The
    plotly.js library is inlined, so the page needs no network. None when the run has no
    topic.

    ``topics`` as ``report_data`` gives them (``top_theme_id`` picks the colour);
    ``themes`` the top-level themes, largest first. In a single-level run a topic's top
    theme is its own theme, so the map is coloured by theme. ``total``: how many topics
    the run has, when ``topics`` is a sample of them; the title says so, and the dots are
    drawn with WebGL (plotly's ``scattergl``), which stays quick with thousands of them.
    """
    if not topics:
        return None
    import plotly.graph_objects as go

    coords = project_2d(np.stack([as_array(t["embedding"]) for t in topics]), seed=seed)
    theme_ids = np.array([t["top_theme_id"] if t["top_theme_id"] is not None else -1 for t in topics])
    levelled = any(theme.get("children") for theme in themes)
    kind = "top-level theme" if levelled else "theme"
    coloured = themes[:MAP_COLOURS]  # the largest themes (themes come largest first)
    sampled = total is not None and total > len(topics)
    scatter = go.Scattergl if sampled else go.Scatter
    figure = go.Figure()

    def add(mask: np.ndarray, label: str, colour: str) -> None:
        chosen = [t for t, keep in zip(topics, mask) if keep]
        # Hover text is plotly's own small HTML: the names are escaped so they show as written.
        hover = [[html.escape(t["name"]), html.escape(t["firm_id"]), html.escape(t["theme_name"] or "no theme")]
                 for t in chosen]
        figure.add_trace(scatter(
            x=coords[mask, 0], y=coords[mask, 1], mode="markers", name=html.escape(label),
            marker={"size": 8, "color": colour, "opacity": 0.85}, customdata=hover,
            hovertemplate="<b>%{customdata[0]}</b><br>firm: %{customdata[1]}<br>theme: %{customdata[2]}"
                          "<extra></extra>"))

    for colour, theme in zip(PALETTE, coloured):
        mine = theme_ids == theme["theme_id"]
        if mine.any():
            add(mine, f"{theme['theme_id']}: {clip(theme['theme_name'], 38)}", colour)
    rest = ~np.isin(theme_ids, [t["theme_id"] for t in coloured])
    if rest.any():
        add(rest, "other themes" if len(themes) > MAP_COLOURS else "no theme", "#c8c8c8")
    method = "UMAP" if len(topics) >= UMAP_MIN_DOCS else "PCA"
    shown = f"{len(topics):,} of {total:,} firm topics (a sample)" if sampled else f"{len(topics)} firm topics"
    figure.update_layout(
        title={"text": f"{shown}, placed by meaning ({method} of their embeddings), "
                       f"coloured by {kind}", "font": {"size": 13}},
        xaxis={"visible": False}, yaxis={"visible": False}, legend={"title": {"text": kind}},
        height=620, margin={"l": 10, "r": 10, "t": 50, "b": 10}, plot_bgcolor="white",
        hoverlabel={"bgcolor": "white"})
    return figure.to_html(full_html=False, include_plotlyjs=True, div_id="topic-map",
                          config={"displaylogo": False, "responsive": True})


def trends_html(rows: list[dict]) -> str | None:
    """The largest themes' share of each period as an HTML fragment: a plotly line chart,
    one line a theme (the legend shows or hides it). ``rows`` as ``app.trends.trend_rows``
    gives them. None with fewer than two periods (nothing to follow over time). Uses the
    plotly.js the map inlines, so it comes after the map in the page."""
    periods = sorted({r["period"] for r in rows})
    if len(periods) < 2:
        return None
    import plotly.graph_objects as go

    figure = go.Figure()
    themes: dict[int, dict] = {}
    for r in rows:
        themes.setdefault(r["theme_id"], {"name": r["theme_name"], "share": {}})["share"][r["period"]] = \
            r["share_of_period"]
    for colour, (theme_id, theme) in zip(PALETTE, themes.items()):
        figure.add_trace(go.Scatter(
            x=periods, y=[theme["share"].get(p, 0.0) for p in periods], mode="lines+markers",
            name=html.escape(f"{theme_id}: {clip(theme['name'], 38)}"), line={"color": colour},
            hovertemplate="%{x}: %{y:.1%}<extra>" + html.escape(clip(theme["name"], 38)) + "</extra>"))
    figure.update_layout(yaxis={"tickformat": ".0%", "title": {"text": "share of the period's themed sentences"}},
                         xaxis={"type": "category", "title": {"text": "period"}}, height=460,
                         margin={"l": 10, "r": 10, "t": 20, "b": 10}, plot_bgcolor="white")
    return figure.to_html(full_html=False, include_plotlyjs=False, div_id="trends-chart",
                          config={"displaylogo": False, "responsive": True})


# 20 colours, the 10 most distinct first (matplotlib's tab10), then the light shades of tab20.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5"]


# --- the page ---------------------------------------------------------------------------

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1150px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: 0.35em 0.6em; border-bottom: 1px solid #e3e3e3; }
th { background: #f5f5f5; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.kw { color: #777; font-size: 0.85em; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 0 2em; }
.grid table td:first-child { color: #555; }
code { background: #f5f5f5; padding: 0 0.25em; }
footer { color: #888; font-size: 0.85em; margin-top: 3em; }
details.theme { border-left: 3px solid #d0d0d0; margin: 0.9em 0; padding-left: 0.9em; }
details.theme > summary { cursor: pointer; font-size: 1.05em; }
details.theme > p { margin: 0.35em 0; }
.meta { color: #666; font-size: 0.9em; }
"""


def render_html(data: dict, chart: str | None, trends: str | None = None) -> str:
    """The whole page as one string (all text HTML-escaped).

    Takes ``report_data``'s dict, the map's HTML fragment (None: no map) and the themes
    over time (None: the corpus has fewer than two periods). The Themes
    section is a flat table for a single-level run and a tree of nested blocks, top
    themes first, for a levelled one.
    """
    e = html.escape
    run = data["run"]
    finished = run["finished_at"].strftime("%Y-%m-%d %H:%M %Z") if run["finished_at"] else "not finished"
    counts = "".join(f"<tr><td>{e(k)}</td><td class=n>{v:,}</td></tr>" for k, v in data["counts"].items())
    settings = "".join(f"<tr><td>{e(str(k))}</td><td>{e(v if isinstance(v, str) else json.dumps(v))}</td></tr>"
                       for k, v in sorted(run["settings"].items()))
    backend = ", ".join(f"{k} {v}" for k, v in sorted(run["backend"].items())) or "not recorded"
    # The run's own quality figures (runs.quality), as ``firmtopics status`` prints them.
    quality = "".join(f"<li>{e(line.strip())}</li>" for line in format_quality(run.get("quality")))
    quality = f"<ul>{quality}</ul>" if quality else "<p>No quality figures were recorded for this run.</p>"
    versions = ", ".join(f"{e(k)} {e(str(v))}" for k, v in sorted(run["package_versions"].items()))
    if data["levels"] > 1:
        themes = _themes_intro(data) + "".join(_theme_tree(theme) for theme in data["themes"])
        coloured_by = "top-level theme"
    elif data["themes"]:
        themes = "<p>This run has a single level of themes.</p>" + _theme_table(data["themes"])
        coloured_by = "theme"
    else:
        themes = "<p>This run made no themes (too few topics to cluster).</p>"
        coloured_by = "theme"
    picture = chart or "<p>This run has no topics to map.</p>"
    if chart and data["map_total"] > len(data["topics"]):
        picture = (f"<p><b>The map shows a sample of {len(data['topics']):,} of the run's {data['map_total']:,} topics</b>"
                   " (drawn at random with the run's seed, every fine theme kept), so that the page stays light "
                   "and quick to draw; every topic is in the Parquet export and the database.</p>" + picture)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>firmtopics run {e(run['name'])}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>firmtopics run “{e(run['name'])}”</h1>
<p class=sub>run {run['run_id']} · {e(run['status'])} · finished {e(finished)} ·
model <code>{e(run['model'])}</code> ({run['embedding_dim']} dimensions) ·
{e(backend)}</p>

<div class=grid>
<div><h2>Counts</h2><table>{counts}</table></div>
<div><h2>Settings</h2><table>{settings}</table></div>
</div>

<h2>Quality</h2>
<p>Measured by the run itself: a firm's largest topic above half of its sentences is a
catch-all; coherence is the mean NPMI of each topic's keywords over its firm's sentences.</p>
{quality}

<h2>Themes</h2>
{themes}

<h2>Map of firm topics</h2>
<p>Each dot is one firm's topic, placed by the meaning of its sentences (or of its LLM name and
summary); nearby dots are topics that are alike, whichever firm they come from. Colours are by
{coloured_by}; the legend's number is the theme's id in the Themes section. Hover on a dot for its
topic, firm and theme; click a theme in the legend to hide or show it, double-click to see it alone.</p>
{picture}

<h2>Themes over time</h2>
{trends or "<p>The corpus has fewer than two periods (give the corpus a <code>period</code> column, e.g. 2020Q4).</p>"}

<footer>
<p>Drill down with <code>firmtopics show theme ID</code>, <code>firmtopics show topic ID</code> and
<code>firmtopics show firm ID</code>; search by meaning with <code>firmtopics search "TEXT"</code>;
in SQL, the views <code>theme_sentences</code>, <code>firm_themes</code> and <code>topic_overview</code>.</p>
<p>Package versions of the run: {versions}.</p>
</footer>
</body>
</html>
"""


def _theme_table(themes: list[dict]) -> str:
    """A table of ``themes``, one row each: id, name and keywords, summary, counts and the
    firms that speak most of it. The whole Themes section of a single-level run, and
    the fine themes under a broader one in a levelled run."""
    e = html.escape
    rows = []
    for theme in themes:
        firms = ", ".join(f"{e(f['firm_name'] or f['firm_id'])} ({f['n_sentences']:,})" for f in theme["top_firms"])
        rows.append(
            f'<tr id="theme-{theme["theme_id"]}"><td class=n>{theme["theme_id"]}</td>'
            f"<td><b>{e(theme['theme_name'])}</b><br><span class=kw>{e(', '.join(theme['keywords']))}</span></td>"
            f"<td>{e(theme['summary'])}</td>"
            f"<td class=n>{theme['n_firms']:,}</td><td class=n>{theme['n_topics']:,}</td>"
            f"<td class=n>{theme['n_sentences']:,}</td><td>{firms}</td></tr>")
    return ("<table><tr><th>id</th><th>theme</th><th>summary</th><th>firms</th><th>topics</th><th>sentences</th>"
            f"<th>firms that speak most of it (sentences)</th></tr>{''.join(rows)}</table>")


def _theme_tree(theme: dict) -> str:
    """One broader theme as an open ``<details>`` block that encloses its children.

    The block's line names the theme with its id, level and counts; inside are its
    summary, keywords and leading firms, then its children: a table when they are the
    finest themes, blocks like this one (nested, so indented) when they have children
    of their own. ``<details>`` lets a reader fold a theme away without any script.
    """
    e = html.escape
    firms = ", ".join(f"{e(f['firm_name'] or f['firm_id'])} ({f['n_sentences']:,})" for f in theme["top_firms"])
    children = theme["children"]
    narrower = f"{len(children)} narrower theme{'' if len(children) == 1 else 's'}"
    if not children:
        inner = ""
    elif any(child["children"] for child in children):
        inner = "".join(_theme_tree(child) for child in children)
    else:
        inner = _theme_table(children)
    return (
        f'<details class=theme id="theme-{theme["theme_id"]}" open>'
        f"<summary><b>{e(theme['theme_name'])}</b> <span class=meta>theme {theme['theme_id']} · "
        f"level {theme['level']} · {theme['n_firms']:,} firms · {theme['n_topics']:,} topics · "
        f"{theme['n_sentences']:,} sentences · {narrower}</span></summary>"
        f"<p>{e(theme['summary'])}</p>"
        f"<p class=kw>{e(', '.join(theme['keywords']))}</p>"
        f"<p class=meta>Firms that speak most of it (sentences): {firms or 'none'}</p>"
        f"{inner}</details>")


def _themes_intro(data: dict) -> str:
    """The line above a levelled run's themes: how many at each level and how to read them."""
    per_level = ", ".join(f"{data['counts'][f'themes at level {level}']:,} at level {level}"
                          for level in range(data["levels"], 0, -1))
    return (f"<p>This run has {data['levels']} levels of themes ({per_level}). Each top-level theme below "
            "opens onto the narrower themes it groups, down to the fine themes (level 1) that firm topics "
            "belong to; a broader theme's counts cover all the topics under it.</p>")


async def write_report(conn: asyncpg.Connection, run_name: str, out_dir: Path, *,
                       map_points: int = MAP_POINTS) -> Path:
    """Write ``report.html`` for run ``run_name`` into ``out_dir``; returns its path. The
    map shows at most ``map_points`` topics (a sample, said on the page, when the run has
    more).

    Raises ``UsageError`` for an unknown or unfinished run.
    """
    import anyio

    data = await report_data(conn, run_name, map_points=map_points)
    seed = int(data["run"]["settings"].get("seed", 42))
    # The projection and the drawing are CPU work: off the event loop.
    chart = await anyio.to_thread.run_sync(
        lambda: topic_map_html(data["topics"], data["themes"], seed=seed, total=data["map_total"]))
    from app.read.trends import trend_rows

    trends = trends_html(await trend_rows(conn, run_name, top=TREND_THEMES))
    page = render_html(data, chart, trends)
    with staged_files(out_dir) as staging:  # replaced whole; a link at its name is not followed
        (staging / "report.html").write_text(page, encoding="utf-8")
    path = Path(out_dir) / "report.html"
    log.info("report_written", path=str(path), themes=data["counts"]["themes"], levels=data["levels"],
             topics=data["map_total"], topics_mapped=len(data["topics"]))
    return path


async def command(settings, args) -> int:
    """``firmtopics report --out DIR [--run NAME]``."""
    async with open_database(settings) as pool, pool.acquire() as conn:
        path = await write_report(conn, args.run, args.out)
    print(f"report of run {args.run!r}: {path}  (one self-contained HTML file; open it in a browser)")
    return 0

