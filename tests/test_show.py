"""``firmtopics show theme|topic|firm`` on the finished sample run: every way up and down
the hierarchy agrees with the tables, and unknown ids are one clear error (exit 2)."""

from __future__ import annotations

import json
import re

import anyio
import pytest

from app.cli import main
from app.errors import UsageError
from app.read.show import SENTENCE_SAMPLE, firm_detail, format_theme, format_topic, show, theme_detail, topic_detail
from app.sample import sample_rows
from support import fetch, offline_env, one_line_error


@pytest.mark.results
async def test_a_topics_theme_lists_that_topic(conn):
    topics = await conn.fetch("SELECT topic_id, firm_id, theme_id FROM topics ORDER BY topic_id")
    assert topics
    for topic in topics:
        theme = await theme_detail(conn, topic["theme_id"])
        listed = {(t["topic_id"], t["firm_id"]) for t in theme["topics"]}
        assert (topic["topic_id"], topic["firm_id"]) in listed
        # and back up: the topic names that theme
        detail = await topic_detail(conn, topic["topic_id"])
        assert detail["theme"]["theme_id"] == topic["theme_id"]


@pytest.mark.results
async def test_a_theme_lists_exactly_its_topics_with_evidence_from_them(conn):
    theme_id = await conn.fetchval("SELECT theme_id FROM themes ORDER BY n_topics DESC, theme_id LIMIT 1")
    detail = await theme_detail(conn, theme_id)
    expected = {r["topic_id"] for r in await conn.fetch("SELECT topic_id FROM topics WHERE theme_id = $1", theme_id)}
    assert {t["topic_id"] for t in detail["topics"]} == expected
    assert [t["firm_id"] for t in detail["topics"]] == sorted(t["firm_id"] for t in detail["topics"])  # grouped
    assert detail["theme"]["n_sentences"] == sum(t["n_sentences"] for t in detail["topics"])
    assert detail["evidence"]
    for sentence in detail["evidence"]:
        evidence_ids = await conn.fetchval("SELECT evidence_sentence_ids FROM topics WHERE topic_id = $1",
                                           sentence["topic_id"])
        assert sentence["sentence_id"] in evidence_ids
    # the first evidence sentences come from different topics
    firsts = [s["topic_id"] for s in detail["evidence"][: len(expected)]]
    assert len(set(firsts)) == len(firsts)


@pytest.mark.results
async def test_a_topic_shows_its_firm_and_a_sample_of_its_sentences(conn):
    topic = await conn.fetchrow("SELECT * FROM topics ORDER BY n_sentences DESC, topic_id LIMIT 1")
    detail = await topic_detail(conn, topic["topic_id"])
    assert detail["firm"]["firm_id"] == topic["firm_id"]
    assert detail["n_sentences"] == await conn.fetchval(
        "SELECT count(*) FROM sentence_topics WHERE topic_id = $1", topic["topic_id"])
    assert len(detail["sentences"]) == min(SENTENCE_SAMPLE, detail["n_sentences"])
    # evidence first, in the order the namer saw it
    evidence = list(topic["evidence_sentence_ids"])
    assert [s["sentence_id"] for s in detail["sentences"][: len(evidence)]] == evidence
    assert all(s["evidence"] for s in detail["sentences"][: len(evidence)])
    text = (await show(conn, "topic", str(topic["topic_id"]), None))
    assert f"sentences: {detail['n_sentences']}, the first {SENTENCE_SAMPLE}" in text
    assert f"and {detail['n_sentences'] - SENTENCE_SAMPLE} more" in text


@pytest.mark.results
async def test_a_firms_topics_are_the_topics_table(conn):
    for firm in await conn.fetch("SELECT firm_id FROM run_firms WHERE status = 'done'"):
        detail = await firm_detail(conn, firm["firm_id"], "default")
        rows = await conn.fetch("SELECT topic_id, name, theme_id FROM topics WHERE firm_id = $1", firm["firm_id"])
        assert {(t["topic_id"], t["name"], t["theme_id"]) for t in detail["topics"]} == \
            {(r["topic_id"], r["name"], r["theme_id"]) for r in rows}
        assert detail["state"]["n_topics"] == len(rows)


@pytest.mark.results
async def test_a_skipped_firm_says_why(conn):
    skipped = await conn.fetchval("SELECT firm_id FROM run_firms WHERE status = 'skipped'")
    text = await show(conn, "firm", skipped, None)
    assert "skipped" in text and "reason: " in text


@pytest.mark.results
async def test_run_is_checked_against_the_id(conn):
    theme_id = await conn.fetchval("SELECT min(theme_id) FROM themes")
    assert "theme" in await show(conn, "theme", str(theme_id), "default")
    with pytest.raises(UsageError, match="is in run 'default', not in run 'other'"):
        await show(conn, "theme", str(theme_id), "other")


@pytest.mark.results
def test_cli_show_prints_each_level(cli_env, capsys):
    assert main(["show", "firm", "NWL"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("firm NWL (Northwind Logistics Inc.)")
    topic_id = out.split("next: firmtopics show topic ")[1].split()[0]

    assert main(["show", "topic", topic_id]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"topic {topic_id}:") and "firm: NWL" in out
    theme_id = out.split("next: firmtopics show theme ")[1].split()[0]

    assert main(["show", "theme", theme_id, "--run", "default"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"theme {theme_id}:") and f"topic {topic_id}:" in out and "evidence" in out


@pytest.mark.results
def test_cli_show_unknown_ids_exit_2_with_one_line(cli_env, capsys):
    assert "no theme 999999" in one_line_error(capsys, ["show", "theme", "999999"])
    assert "no topic 999999" in one_line_error(capsys, ["show", "topic", "999999"])
    assert "whole number" in one_line_error(capsys, ["show", "topic", "abc"])
    assert "no firm 'NOPE'" in one_line_error(capsys, ["show", "firm", "NOPE"])
    assert "no run named 'nope'" in one_line_error(capsys, ["show", "firm", "NWL", "--run", "nope"])
    assert main(["show", "sentence", "1"]) == 2
    assert "--prompt goes with a theme or a topic" in one_line_error(capsys, ["show", "firm", "NWL", "--prompt"])


@pytest.mark.results
def test_cli_show_prompt_of_a_keyword_name_says_no_request_was_made(cli_env, capsys):
    assert main(["show", "topic", "1", "--prompt"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("topic 1:") and "named from its keywords: no LLM request" in out


# --- theme levels: a run whose themes have two levels ----------------------------------


@pytest.fixture
def levelled_cli_env(levelled_run, monkeypatch, tmp_path):
    """The environment for ``main([...])`` against the levelled run's database."""
    return offline_env(monkeypatch, levelled_run, tmp_path)


@pytest.mark.results
async def test_a_fine_theme_names_its_parent_and_the_parent_lists_it(levelled_conn):
    fine = await levelled_conn.fetch(
        "SELECT theme_id, name, parent_theme_id FROM themes WHERE level = 1 ORDER BY theme_id")
    assert fine and all(t["parent_theme_id"] is not None for t in fine)  # the fixture has two levels
    for theme in fine:
        detail = await theme_detail(levelled_conn, theme["theme_id"])
        assert detail["level"] == 1 and detail["n_levels"] == 2
        assert detail["children"] == []
        parent_name = await levelled_conn.fetchval("SELECT name FROM themes WHERE theme_id = $1",
                                                   theme["parent_theme_id"])
        assert detail["parent"] == {"theme_id": theme["parent_theme_id"], "name": parent_name}
        # a fine theme still lists its own topics, as on a single-level run
        assert {t["topic_id"] for t in detail["topics"]} == {r["topic_id"] for r in await levelled_conn.fetch(
            "SELECT topic_id FROM topics WHERE theme_id = $1", theme["theme_id"])}
        text = format_theme(detail)
        assert f"level 1 of 2; parent: theme {theme['parent_theme_id']}: {parent_name}" in text
        assert "topics, by firm:" in text and "themes below it" not in text
        # and back down: the parent lists it among its children
        parent = await theme_detail(levelled_conn, theme["parent_theme_id"])
        assert theme["theme_id"] in [c["theme_id"] for c in parent["children"]]


@pytest.mark.results
async def test_a_top_theme_says_it_is_at_the_top(levelled_conn):
    tops = await levelled_conn.fetch("SELECT theme_id FROM themes WHERE parent_theme_id IS NULL")
    assert 2 <= len(tops) <= 3
    for top in tops:
        detail = await theme_detail(levelled_conn, top["theme_id"])
        assert detail["level"] == 2 and detail["parent"] is None
        text = format_theme(detail)
        assert "level 2 of 2: top level" in text and "parent:" not in text
        assert "topics, by firm:" not in text  # a broader theme lists its children instead
        for child in detail["children"]:
            assert f"theme {child['theme_id']}: {child['name']}  ({child['n_topics']} topics, " \
                   f"{child['n_firms']} firms)" in text
        for firm_id in {t["firm_id"] for t in detail["topics"]}:
            assert f"\n  {firm_id}" in text


@pytest.mark.results
async def test_the_children_of_a_theme_add_up_to_it(levelled_conn):
    for top in await levelled_conn.fetch("SELECT theme_id, n_topics FROM themes WHERE level = 2"):
        detail = await theme_detail(levelled_conn, top["theme_id"])
        expected = {r["theme_id"] for r in await levelled_conn.fetch(
            "SELECT theme_id FROM themes WHERE parent_theme_id = $1", top["theme_id"])}
        assert {c["theme_id"] for c in detail["children"]} == expected and expected
        assert sum(c["n_topics"] for c in detail["children"]) == top["n_topics"] == detail["theme"]["n_topics"]
        # its topics are exactly its children's topics, and its sentences theirs
        assert len(detail["topics"]) == top["n_topics"]
        assert {t["theme_id"] for t in detail["topics"]} == expected
        children = [await theme_detail(levelled_conn, c) for c in expected]
        assert detail["theme"]["n_sentences"] == sum(c["theme"]["n_sentences"] for c in children)
        assert len({t["firm_id"] for t in detail["topics"]}) == detail["theme"]["n_firms"]
        assert detail["evidence"]


@pytest.mark.results
async def test_a_topics_theme_path_goes_up_to_the_top(levelled_conn):
    for topic in await levelled_conn.fetch("SELECT topic_id, theme_id FROM topics ORDER BY topic_id"):
        detail = await topic_detail(levelled_conn, topic["topic_id"])
        path = detail["theme_path"]
        assert [t["level"] for t in path] == [1, 2]
        assert path[0]["theme_id"] == topic["theme_id"]
        assert path[1]["theme_id"] == await levelled_conn.fetchval(
            "SELECT parent_theme_id FROM themes WHERE theme_id = $1", topic["theme_id"])
        assert (f"  theme: {path[0]['theme_id']}: {path[0]['name']} (level 1) < "
                f"{path[1]['theme_id']}: {path[1]['name']} (level 2)") in format_topic(detail)


@pytest.mark.results
async def test_a_single_level_run_is_at_the_top_with_no_path(conn):
    theme_id = await conn.fetchval("SELECT min(theme_id) FROM themes")
    detail = await theme_detail(conn, theme_id)
    assert (detail["level"], detail["n_levels"], detail["parent"], detail["children"]) == (1, 1, None, [])
    assert "level 1 of 1: top level" in format_theme(detail)
    topic_id = await conn.fetchval("SELECT min(topic_id) FROM topics WHERE theme_id = $1", theme_id)
    topic = await topic_detail(conn, topic_id)
    assert [t["theme_id"] for t in topic["theme_path"]] == [theme_id]
    assert f"  theme: {theme_id}: {detail['theme']['name']}\n" in format_topic(topic)  # as before levels


@pytest.mark.results
def test_cli_show_walks_the_theme_levels(levelled_cli_env, capsys):
    import asyncpg

    async def read():
        c = await asyncpg.connect(levelled_cli_env)
        try:
            return await c.fetchrow("SELECT theme_id, name FROM themes WHERE level = 2 ORDER BY n_topics DESC,"
                                    " theme_id LIMIT 1")
        finally:
            await c.close()

    top = anyio.run(read)
    assert main(["show", "theme", str(top["theme_id"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"theme {top['theme_id']}: ") and "level 2 of 2: top level" in out
    assert "themes below it (level 1), largest first:" in out and "firms (topics and sentences" in out
    child_id = out.split("next: firmtopics show theme ")[1].split()[0]
    assert f"\n  theme {child_id}: " in out

    assert main(["show", "theme", child_id]) == 0
    out = capsys.readouterr().out
    assert f"level 1 of 2; parent: theme {top['theme_id']}: {top['name']}" in out
    topic_id = out.split("next: firmtopics show topic ")[1].split()[0]

    assert main(["show", "topic", topic_id]) == 0
    out = capsys.readouterr().out
    assert f"  theme: {child_id}: " in out and f"(level 1) < {top['theme_id']}: {top['name']} (level 2)" in out


# What a corpus (or a reply) may hold that a terminal would obey: escape sequences that
# clear the screen, retitle the window or colour text, and bidi overrides that reorder it.
TERMINAL_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@pytest.mark.results
def test_no_escape_or_bidi_character_reaches_the_terminal(env, tmp_path, capsys):
    rows = []
    for i, row in enumerate(sample_rows(firms=1)):
        poison = ("\x1b[2J\x1b]0;owned\x07", "\u202e", "\x9b31m")[i % 3]
        rows.append({**row, "firm_name": f"Evil\x1b[31m {row['firm_id']}\u202e",
                     "sentence": f"{poison}{row['sentence']}\u2066"})
    corpus = tmp_path / "poisoned.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["run", "--input", str(corpus)]) == 0
    firm = rows[0]["firm_id"]
    theme, topic = fetch(env, "SELECT theme_id, topic_id FROM topics WHERE firm_id = $1 LIMIT 1", firm)[0]
    capsys.readouterr()
    reads = [["status"], ["runs"], ["search", "revenue"], ["search", "revenue", "--level", "sentence"],
             ["show", "firm", firm], ["show", "topic", str(topic)], ["show", "theme", str(theme)], ["trends"]]
    for argv in reads:
        for json_flag in ([], ["--json"]):
            assert main(argv + json_flag) == 0, argv
            out = capsys.readouterr().out
            assert firm in out or argv[0] in ("runs", "trends"), argv
            assert not TERMINAL_UNSAFE.search(out), (argv + json_flag, TERMINAL_UNSAFE.findall(out))
