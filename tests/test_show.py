"""``firmtopics show theme|topic|firm`` on the finished sample run: every way up and down
the hierarchy agrees with the tables, and unknown ids are one clear error (exit 2)."""

from __future__ import annotations

import pytest

from app.cli import UsageError, main
from app.show import SENTENCE_SAMPLE, firm_detail, show, theme_detail, topic_detail
from conftest import one_line_error


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


async def test_a_firms_topics_are_the_topics_table(conn):
    for firm in await conn.fetch("SELECT firm_id FROM run_firms WHERE status = 'done'"):
        detail = await firm_detail(conn, firm["firm_id"], "default")
        rows = await conn.fetch("SELECT topic_id, name, theme_id FROM topics WHERE firm_id = $1", firm["firm_id"])
        assert {(t["topic_id"], t["name"], t["theme_id"]) for t in detail["topics"]} == \
            {(r["topic_id"], r["name"], r["theme_id"]) for r in rows}
        assert detail["state"]["n_topics"] == len(rows)


async def test_a_skipped_firm_says_why(conn):
    skipped = await conn.fetchval("SELECT firm_id FROM run_firms WHERE status = 'skipped'")
    text = await show(conn, "firm", skipped, None)
    assert "skipped" in text and "reason: " in text


async def test_run_is_checked_against_the_id(conn):
    theme_id = await conn.fetchval("SELECT min(theme_id) FROM themes")
    assert "theme" in await show(conn, "theme", str(theme_id), "default")
    with pytest.raises(UsageError, match="is in run 'default', not in run 'other'"):
        await show(conn, "theme", str(theme_id), "other")


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


def test_cli_show_unknown_ids_exit_2_with_one_line(cli_env, capsys):
    assert "no theme 999999" in one_line_error(capsys, ["show", "theme", "999999"])
    assert "no topic 999999" in one_line_error(capsys, ["show", "topic", "999999"])
    assert "whole number" in one_line_error(capsys, ["show", "topic", "abc"])
    assert "no firm 'NOPE'" in one_line_error(capsys, ["show", "firm", "NOPE"])
    assert "no run named 'nope'" in one_line_error(capsys, ["show", "firm", "NWL", "--run", "nope"])
    assert main(["show", "sentence", "1"]) == 2
