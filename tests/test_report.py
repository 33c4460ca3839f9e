"""``firmtopics report`` on the finished sample run: one self-contained HTML file that
parses, names every theme, and embeds the topic map as a PNG (no network needed)."""

from __future__ import annotations

import base64
import html
from html.parser import HTMLParser

import numpy as np

from app.cli import main
from app.report import project_2d, write_report
from conftest import one_line_error


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


async def test_report_is_self_contained_and_names_every_theme(conn, tmp_path):
    path = await write_report(conn, "default", tmp_path / "report")
    assert path == tmp_path / "report" / "report.html"
    text = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    page.close()
    assert {"html", "head", "style", "body", "table", "img"} <= set(page.tags)
    assert page.outside == []  # no link, script or stylesheet to fetch
    themes = await conn.fetch("SELECT theme_id, name, summary FROM themes")
    assert themes
    for theme in themes:
        assert html.escape(theme["name"]) in text
        assert html.escape(theme["summary"]) in text
    (image,) = page.images
    assert image.startswith("data:image/png;base64,")
    png = base64.b64decode(image.split(",", 1)[1])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert "all-MiniLM-L6-v2" in text and "1,120" in text  # model and sentence count
    # The run's quality figures, as status prints them.
    assert "<h2>Quality</h2>" in text and "catch-all topic" in text and "coherence (NPMI)" in text


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


def test_cli_report_writes_the_page(cli_env, tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path / "r")]) == 0
    assert str(tmp_path / "r" / "report.html") in capsys.readouterr().out
    assert (tmp_path / "r" / "report.html").stat().st_size > 10_000


def test_cli_report_of_an_unknown_run_exits_2(cli_env, tmp_path, capsys):
    assert "no run named 'nope'" in one_line_error(capsys, ["report", "--out", str(tmp_path), "--run", "nope"])
