"""``firmtopics report`` on the finished sample run: one self-contained HTML file that
parses, names every theme, and carries an interactive topic map and the themes over
time with plotly.js inlined (no network needed). On a run with two levels of themes the
page shows the tree (each top theme enclosing its children) and the map is coloured by
top theme. tests/test_report_browser.py opens the page in headless Chromium."""

from __future__ import annotations

import html
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from plotly.io.json import to_json_plotly

from app.cli import main
from app.read.report import project_2d, report_data, write_report
from support import one_line_error


class Page(HTMLParser):
    """Collects what the tests look at: the tags seen, image sources, outside links."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.outside: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith("data:"):
                self.outside.append(value)
            if tag == "img" and name == "src":
                self.images.append(value)


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class ThemeNesting(HTMLParser):
    """Which theme element (``id="theme-N"``) encloses which, and in what order they open.

    Keeps the stack of open elements, so the page must close every non-void element
    it opens; ``close()`` checks that nothing is left open.
    """

    def __init__(self):
        super().__init__()
        self.stack: list[tuple[str, int | None]] = []
        self.order: list[int] = []  # theme ids as their elements open
        self.enclosing: dict[int, int | None] = {}  # theme id -> nearest enclosing theme id

    def handle_starttag(self, tag, attrs):
        if tag in VOID:
            return
        value = dict(attrs).get("id") or ""
        theme = int(value.removeprefix("theme-")) if value.startswith("theme-") else None
        if theme is not None:
            outer = [t for _, t in self.stack if t is not None]
            self.enclosing[theme] = outer[-1] if outer else None
            self.order.append(theme)
        self.stack.append((tag, theme))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        opened, _ = self.stack.pop()
        assert opened == tag, f"</{tag}> closes <{opened}>"

    def close(self):
        super().close()
        assert self.stack == [], f"left open: {self.stack}"


def map_traces(text: str) -> list[dict]:
    """The traces of the topic map, as plotly wrote them into the page."""
    after = text.index('"topic-map",', text.index("Plotly.newPlot")) + len('"topic-map",')
    traces, _ = json.JSONDecoder().raw_decode(text[after:].lstrip())
    return traces


def every_theme(themes: list[dict]):
    """The themes of report_data's tree, each once, parents before children."""
    for theme in themes:
        yield theme
        yield from every_theme(theme["children"])


@pytest.mark.results
async def test_report_is_self_contained_and_names_every_theme(conn, tmp_path):
    path = await write_report(conn, "default", tmp_path / "report")
    assert path == tmp_path / "report" / "report.html"
    text = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    page.close()
    assert {"html", "head", "style", "body", "table", "script"} <= set(page.tags)
    assert page.outside == []  # no link, script or stylesheet to fetch
    themes = await conn.fetch("SELECT theme_id, name, summary FROM themes")
    assert themes
    for theme in themes:
        assert html.escape(theme["name"]) in text
        assert html.escape(theme["summary"]) in text
    assert 'id="topic-map"' in text and 'id="trends-chart"' in text  # the map, and two quarters to follow
    assert text.count("plotly.js v") == 1  # the library, inlined once
    topics = await conn.fetch("SELECT firm_id, name FROM topics")
    # Each dot's hover names its topic (as plotly writes strings into the page).
    assert all(to_json_plotly(html.escape(t["name"])) in text for t in topics)
    assert "all-MiniLM-L6-v2" in text and "1,120" in text  # model and sentence count
    # The run's quality figures, as status prints them.
    assert "<h2>Quality</h2>" in text and "catch-all topic" in text and "coherence (NPMI)" in text
    assert "a single level of themes" in text
    # Fewer topics than the map takes: every one is a dot, drawn as SVG, and nothing is said of a sample.
    traces = map_traces(text)
    assert sum(len(t["customdata"]) for t in traces) == len(topics) and {t["type"] for t in traces} == {"scatter"}
    assert "a sample" not in text


@pytest.mark.results
async def test_a_run_with_more_topics_than_the_map_takes_is_drawn_from_a_seeded_sample(conn, tmp_path):
    topics = await conn.fetch("SELECT topic_id, theme_id FROM topics")
    cap = 12  # the sample run's 8 themes, and a few more
    assert len(topics) > cap
    text = (await write_report(conn, "default", tmp_path, map_points=cap)).read_text(encoding="utf-8")
    traces = map_traces(text)
    assert sum(len(t["customdata"]) for t in traces) == cap
    assert {t["type"] for t in traces} == {"scattergl"}  # WebGL: many dots stay quick to draw
    assert f"a sample of {cap:,} of the run's {len(topics):,} topics" in text
    data = await report_data(conn, "default", map_points=cap)
    assert len(data["topics"]) == cap and data["map_total"] == len(topics)
    # Every theme keeps at least one dot, and the sample is the same every time (seeded).
    assert {t["theme_id"] for t in data["topics"]} == {t["theme_id"] for t in topics}
    again = await report_data(conn, "default", map_points=cap)
    assert [t["topic_id"] for t in again["topics"]] == [t["topic_id"] for t in data["topics"]]


@pytest.mark.results
async def test_report_data_of_a_single_level_run_is_flat(conn):
    data = await report_data(conn, "default")
    assert data["levels"] == 1
    ids = {r["theme_id"] for r in await conn.fetch("SELECT theme_id FROM themes")}
    assert {t["theme_id"] for t in data["themes"]} == ids
    assert all(t["level"] == 1 and t["parent_theme_id"] is None and t["children"] == [] for t in data["themes"])
    # Every topic's top theme is its own theme.
    assert data["topics"] and all(t["top_theme_id"] == t["theme_id"] for t in data["topics"])


@pytest.mark.results
async def test_report_data_of_a_levelled_run_is_a_tree_down_from_the_top(levelled_conn):
    data = await report_data(levelled_conn, "default")
    rows = await levelled_conn.fetch("SELECT theme_id, level, parent_theme_id, n_topics FROM themes")
    parents = {r["theme_id"]: r["parent_theme_id"] for r in rows}
    tops = {r["theme_id"] for r in rows if r["parent_theme_id"] is None}
    assert data["levels"] == max(r["level"] for r in rows) >= 2
    assert [t["theme_id"] for t in data["themes"]] and {t["theme_id"] for t in data["themes"]} == tops
    assert [t["n_topics"] for t in data["themes"]] == sorted((t["n_topics"] for t in data["themes"]), reverse=True)
    # The tree holds every theme exactly once, each under its parent, one level down.
    seen = [t["theme_id"] for t in every_theme(data["themes"])]
    assert sorted(seen) == sorted(parents)
    for theme in every_theme(data["themes"]):
        assert theme["level"] >= 1 and theme["top_firms"]
        for child in theme["children"]:
            assert child["parent_theme_id"] == theme["theme_id"] and child["level"] == theme["level"] - 1
        if theme["children"]:
            # A broader theme's sentences are those of the topics under it.
            assert theme["n_sentences"] == sum(c["n_sentences"] for c in theme["children"]) > 0
        else:
            assert theme["level"] == 1
    # Each topic's top theme, as walking the parent links by hand finds it.
    assert data["topics"]
    for topic in data["topics"]:
        theme = topic["theme_id"]
        while parents[theme] is not None:
            theme = parents[theme]
        assert topic["top_theme_id"] == theme and theme in tops
    assert data["counts"][f"themes at level {data['levels']}"] == len(tops)


@pytest.mark.results
async def test_report_of_a_levelled_run_shows_the_tree(levelled_conn, tmp_path):
    text = (await write_report(levelled_conn, "default", tmp_path)).read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    page.close()
    assert page.outside == []  # still self-contained: <details> folds without script
    assert "details" in page.tags
    themes = await levelled_conn.fetch("SELECT theme_id, name, summary, level, parent_theme_id FROM themes")
    assert {t["level"] for t in themes} >= {1, 2}
    for theme in themes:  # every theme of every level is named
        assert html.escape(theme["name"]) in text
        assert html.escape(theme["summary"]) in text
    nesting = ThemeNesting()
    nesting.feed(text)
    nesting.close()
    assert sorted(nesting.order) == sorted(t["theme_id"] for t in themes)
    for theme in themes:
        # Each theme sits inside its parent's element (top themes inside none), so the
        # parent comes first in the page.
        assert nesting.enclosing[theme["theme_id"]] == theme["parent_theme_id"]
        if theme["parent_theme_id"] is not None:
            assert nesting.order.index(theme["parent_theme_id"]) < nesting.order.index(theme["theme_id"])
    assert "a single level of themes" not in text and "coloured by top-level theme" in text
    assert 'id="topic-map"' in text


def test_project_2d_uses_pca_for_few_topics_and_umap_for_many():
    rng = np.random.default_rng(0)
    few = rng.normal(size=(12, 16)).astype(np.float32)
    coords = project_2d(few)
    assert coords.shape == (12, 2) and np.isfinite(coords).all()
    # PCA: the first axis carries the most variance
    assert coords[:, 0].var() >= coords[:, 1].var()
    assert project_2d(few[:1]).shape == (1, 2) and project_2d(few[:0]).shape == (0, 2)
    many = rng.normal(size=(80, 16)).astype(np.float32)
    coords = project_2d(many, seed=1)
    assert coords.shape == (80, 2) and np.isfinite(coords).all()


@pytest.mark.results
def test_cli_report_writes_the_page(cli_env, tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path / "r")]) == 0
    assert str(tmp_path / "r" / "report.html") in capsys.readouterr().out
    assert (tmp_path / "r" / "report.html").stat().st_size > 10_000


@pytest.mark.results
def test_cli_report_of_an_unknown_run_exits_2(cli_env, tmp_path, capsys):
    assert "no run named 'nope'" in one_line_error(capsys, ["report", "--out", str(tmp_path), "--run", "nope"])


@pytest.mark.results
async def test_report_replaces_a_symlink_and_never_writes_through_it(conn, tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere.html"
    out.mkdir()
    elsewhere.write_text("not the report's to touch")
    (out / "report.html").symlink_to(elsewhere)
    path = await write_report(conn, "default", out)
    assert elsewhere.read_text() == "not the report's to touch"
    assert path == out / "report.html" and not path.is_symlink()
    assert "<html" in path.read_text() and [p.name for p in out.iterdir()] == ["report.html"]
