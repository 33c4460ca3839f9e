"""``firmtopics report --out DIR``: one self-contained HTML page about a run.

The page (``DIR/report.html``) holds the run's model and settings, its counts, a table
of the themes (name, summary, number of firms and topics, the firms that speak most
about each) and a 2-D map of every firm topic coloured by its theme. It needs no
network and no other file: the CSS is inline and the map is a PNG embedded as base64,
so it can be mailed or attached to a paper's replication package as it is.

The map places topics by their embeddings (the ones the themes were clustered from),
reduced to two dimensions: by UMAP (cosine) when there are enough topics for UMAP's
neighbourhood graph to mean something, by PCA below that (the same threshold the
clustering uses). Distances on such a map are only roughly faithful; it shows which
themes sit apart and which blend, not exact similarities.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import asyncpg
import numpy as np

from app.clustering import UMAP_MIN_DOCS
from app.logs import get_logger
from app.quality import format_quality
from app.show import load_run

log = get_logger("report")

TOP_FIRMS = 5  # firms listed per theme
MAP_COLOURS = 20  # themes with a colour of their own on the map; the rest share grey


# --- reading the run --------------------------------------------------------------------


async def report_data(conn: asyncpg.Connection, run_name: str) -> dict:
    """Everything the page shows, read from the database.

    Returns a dict: ``run`` (the ``runs`` row, JSON columns decoded), ``counts``,
    ``themes`` (largest first, each with its ``top_firms``) and ``topics`` (id, firm,
    theme and embedding of every topic, for the map). Raises ``UsageError`` for an
    unknown or unfinished run.
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
        "topics": await conn.fetchval("SELECT count(*) FROM topics WHERE run_id = $1", run_id),
        "themes": await conn.fetchval("SELECT count(*) FROM themes WHERE run_id = $1", run_id),
    }
    themes = [dict(r) for r in await conn.fetch(
        "SELECT theme_id, theme_name, summary, keywords, n_topics, n_firms, n_sentences"
        " FROM theme_overview WHERE run_id = $1 ORDER BY n_topics DESC, n_sentences DESC, theme_id", run_id)]
    # The firms that speak most about each theme (by sentences in their topics of it).
    top = await conn.fetch(
        "SELECT theme_id, firm_id, firm_name, n_sentences FROM ("
        "  SELECT *, row_number() OVER (PARTITION BY theme_id ORDER BY n_sentences DESC, firm_id) AS place"
        "  FROM firm_themes WHERE run_id = $1) ranked"
        " WHERE place <= $2 ORDER BY theme_id, place", run_id, TOP_FIRMS)
    for theme in themes:
        theme["keywords"] = list(theme["keywords"])
        theme["top_firms"] = [dict(r) for r in top if r["theme_id"] == theme["theme_id"]]
    topics = await conn.fetch(
        "SELECT topic_id, firm_id, theme_id, embedding FROM topics"
        " WHERE run_id = $1 AND embedding IS NOT NULL ORDER BY topic_id", run_id)
    decoded = dict(run)
    for key in ("settings", "backend", "package_versions", "timings", "llm_usage", "quality"):
        if isinstance(decoded[key], str):
            decoded[key] = json.loads(decoded[key])
    return {"run": decoded, "counts": counts, "themes": themes, "topics": [dict(t) for t in topics]}


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


def topic_map_png(topics: list[dict], themes: list[dict], *, seed: int = 42) -> bytes | None:
    """The map of firm topics as PNG bytes: one dot a topic, coloured by theme, each
    coloured theme's number at its centre. None when the run has no topic."""
    if not topics:
        return None
    from matplotlib.figure import Figure  # the object API: no global pyplot state, no GUI backend

    from app.export import as_array

    coords = project_2d(np.stack([as_array(t["embedding"]) for t in topics]), seed=seed)
    theme_ids = np.array([t["theme_id"] if t["theme_id"] is not None else -1 for t in topics])
    figure = Figure(figsize=(10, 6.5), dpi=110, layout="constrained")
    axes = figure.add_subplot()
    palette = _palette()
    coloured = themes[:MAP_COLOURS]  # the largest themes (themes come largest first)
    rest = ~np.isin(theme_ids, [t["theme_id"] for t in coloured])
    if rest.any():
        label = "other themes" if len(themes) > MAP_COLOURS else "no theme"
        axes.scatter(coords[rest, 0], coords[rest, 1], s=18, c="#c8c8c8", label=label, linewidths=0)
    for colour, theme in zip(palette, coloured):
        mine = theme_ids == theme["theme_id"]
        if not mine.any():
            continue
        axes.scatter(coords[mine, 0], coords[mine, 1], s=28, color=colour, alpha=0.85, linewidths=0,
                     label=f"{theme['theme_id']}: {_clip(theme['theme_name'], 38)}")
        centre = coords[mine].mean(axis=0)
        axes.annotate(str(theme["theme_id"]), centre, ha="center", va="center", fontsize=9, weight="bold",
                      bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": colour, "alpha": 0.85})
    method = "UMAP" if len(topics) >= UMAP_MIN_DOCS else "PCA"
    axes.set_title(f"{len(topics)} firm topics, placed by meaning ({method} of their embeddings), coloured by theme",
                   fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False, title="theme")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _palette() -> list:
    """20 colours, the 10 most distinct first (tab10), then the light shades of tab20."""
    from matplotlib import colormaps

    return [colormaps["tab10"](i) for i in range(10)] + [colormaps["tab20"](i) for i in range(1, 20, 2)]


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
img { max-width: 100%; border: 1px solid #e3e3e3; }
code { background: #f5f5f5; padding: 0 0.25em; }
footer { color: #888; font-size: 0.85em; margin-top: 3em; }
"""


def render_html(data: dict, png: bytes | None) -> str:
    """The whole page as one string (all text HTML-escaped)."""
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
    rows = []
    for theme in data["themes"]:
        firms = ", ".join(f"{e(f['firm_name'] or f['firm_id'])} ({f['n_sentences']:,})" for f in theme["top_firms"])
        rows.append(
            f"<tr><td class=n>{theme['theme_id']}</td>"
            f"<td><b>{e(theme['theme_name'])}</b><br><span class=kw>{e(', '.join(theme['keywords']))}</span></td>"
            f"<td>{e(theme['summary'])}</td>"
            f"<td class=n>{theme['n_firms']:,}</td><td class=n>{theme['n_topics']:,}</td>"
            f"<td class=n>{theme['n_sentences']:,}</td><td>{firms}</td></tr>")
    themes = (
        "<table><tr><th>id</th><th>theme</th><th>summary</th><th>firms</th><th>topics</th><th>sentences</th>"
        f"<th>firms that speak most of it (sentences)</th></tr>{''.join(rows)}</table>"
        if rows else "<p>This run made no themes (too few topics to cluster).</p>")
    picture = (f'<img alt="map of firm topics coloured by theme" src="data:image/png;base64,'
               f'{base64.b64encode(png).decode("ascii")}">' if png else "<p>This run has no topics to map.</p>")
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
<p>Each dot is one firm's topic, placed by the meaning of its name and summary; nearby dots are
topics that are alike, whichever firm they come from. The number on a colour marks its theme's centre.</p>
{picture}

<footer>
<p>Drill down with <code>firmtopics show theme ID</code>, <code>firmtopics show topic ID</code> and
<code>firmtopics show firm ID</code>; search by meaning with <code>firmtopics search "TEXT"</code>;
in SQL, the views <code>theme_sentences</code>, <code>firm_themes</code> and <code>topic_overview</code>.</p>
<p>Package versions of the run: {versions}.</p>
</footer>
</body>
</html>
"""


async def write_report(conn: asyncpg.Connection, run_name: str, out_dir: Path) -> Path:
    """Write ``report.html`` for run ``run_name`` into ``out_dir``; returns its path.

    Raises ``UsageError`` for an unknown or unfinished run.
    """
    import anyio

    data = await report_data(conn, run_name)
    seed = int(data["run"]["settings"].get("seed", 42))
    # The projection and the drawing are CPU work: off the event loop.
    png = await anyio.to_thread.run_sync(lambda: topic_map_png(data["topics"], data["themes"], seed=seed))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    path.write_text(render_html(data, png), encoding="utf-8")
    log.info("report_written", path=str(path), themes=len(data["themes"]), topics=len(data["topics"]))
    return path


async def command(settings, args) -> int:
    """``firmtopics report --out DIR [--run NAME]``."""
    from app.database import open_database

    async with open_database(settings) as pool, pool.acquire() as conn:
        path = await write_report(conn, args.run, args.out)
    print(f"report of run {args.run!r}: {path}  (one self-contained HTML file; open it in a browser)")
    return 0


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
