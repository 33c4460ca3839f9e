"""The prompt text sent to the LLM, and the parsing of its replies (no network here)."""

from __future__ import annotations

import json

import pytest

from app import prompts
from app.naming import Label, MemberTopic, ThemeToName, TopicToName


def make_topic(**changes) -> TopicToName:
    values = dict(
        firm_id="AAPL",
        firm_name="Apple Inc.",
        topic_no=3,
        keywords=["iphone", "revenue", "china", "demand"],
        sentences=["iPhone revenue grew 8% in Greater China.", "Demand for iPhone 15 Pro was strong."],
        sentence_ids=[11, 12],
        n_sentences=42,
    )
    values.update(changes)
    return TopicToName(**values)


def make_theme(**changes) -> ThemeToName:
    values = dict(
        theme_no=7,
        keywords=["supply", "chain", "shortage"],
        topics=[
            MemberTopic("AAPL", "Component shortages", "Apple says chip shortages limited iPhone supply."),
            MemberTopic("F", "Semiconductor supply", "Ford cut truck output because of missing chips."),
        ],
        n_topics=12,
        n_firms=9,
    )
    values.update(changes)
    return ThemeToName(**values)


def user_text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


# --- prompts -------------------------------------------------------------------------


def test_topic_prompt_shows_firm_keywords_and_sentences():
    messages = prompts.topic_messages(make_topic())
    assert messages[0]["role"] == "system"
    text = user_text(messages)
    assert "Apple Inc." in text
    assert "iphone, revenue, china, demand" in text
    assert "iPhone revenue grew 8% in Greater China." in text
    assert "Demand for iPhone 15 Pro was strong." in text
    assert '"name"' in text and '"summary"' in text
    assert "6 words" in text


def test_topic_prompt_uses_firm_id_when_the_name_is_unknown():
    text = user_text(prompts.topic_messages(make_topic(firm_name=None)))
    assert "AAPL" in text


def test_topic_prompt_bounds_the_evidence():
    long_sentence = "word " * 1000
    topic = make_topic(sentences=[long_sentence] * 50, sentence_ids=list(range(50)))
    text = user_text(prompts.topic_messages(topic))
    assert text.count("word word") < prompts.MAX_SENTENCES * prompts.MAX_SENTENCE_CHARS
    assert len(text) < prompts.MAX_SENTENCES * (prompts.MAX_SENTENCE_CHARS + 20) + 2000


def test_theme_prompt_shows_member_topics_counts_and_asks_for_inclusion_criteria():
    text = user_text(prompts.theme_messages(make_theme()))
    assert "Component shortages" in text
    assert "Ford cut truck output because of missing chips." in text
    assert "12" in text and "9" in text
    assert "supply, chain, shortage" in text
    assert "belongs" in text.lower()


def test_theme_prompt_says_when_topics_are_a_sample():
    text = user_text(prompts.theme_messages(make_theme(n_topics=300)))
    assert "sample" in text.lower()


def test_check_prompt_is_tiny():
    messages = prompts.check_messages()
    assert len(json.dumps(messages)) < 200


# --- parsing replies -----------------------------------------------------------------


def test_parses_plain_json():
    label = prompts.parse_label('{"name": "iPhone demand in China", "summary": "Sales of iPhones in China."}')
    assert label == Label("iPhone demand in China", "Sales of iPhones in China.", "llm")


def test_parses_code_fenced_json():
    reply = '```json\n{"name": "Supply chain", "summary": "Chip shortages."}\n```'
    assert prompts.parse_label(reply).name == "Supply chain"


def test_parses_json_with_text_around_it():
    reply = 'Here is the label you asked for:\n{"name": "Buybacks", "summary": "Share repurchases {and} dividends."}\nHope it helps!'
    label = prompts.parse_label(reply)
    assert label.name == "Buybacks"
    assert label.summary == "Share repurchases {and} dividends."


def test_skips_a_brace_that_is_not_json():
    reply = 'Format {name, summary}: {"name": "Margins", "summary": "Gross margin fell."}'
    assert prompts.parse_label(reply).name == "Margins"


def test_trims_an_overlong_name_and_tidies_it():
    reply = json.dumps({"name": '  "Revenue growth across every single product line worldwide."  ', "summary": "x."})
    name = prompts.parse_label(reply).name
    assert len(name.split()) == prompts.MAX_NAME_WORDS
    assert name == "Revenue growth across every single product"


def test_collapses_whitespace_in_the_summary():
    reply = json.dumps({"name": "Costs", "summary": "Costs   rose.\n\nMargins fell."})
    assert prompts.parse_label(reply).summary == "Costs rose. Margins fell."


def test_caps_a_runaway_summary():
    reply = json.dumps({"name": "Costs", "summary": "Costs rose. " * 500})
    assert len(prompts.parse_label(reply).summary) <= prompts.MAX_SUMMARY_CHARS


def test_accepts_keys_in_other_case():
    assert prompts.parse_label('{"Name": "Costs", "Summary": "Costs rose."}').name == "Costs"


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "   ",
        "I cannot help with that.",
        "Name: Costs. Summary: costs rose.",
        '["Costs", "Costs rose."]',
        '{"name": "", "summary": "Costs rose."}',
        '{"name": "Costs"}',
        '{"summary": "Costs rose."}',
        '{"name": 42, "summary": "Costs rose."}',
        '{"name": "Costs", "summary": ["a", "b"]}',
        '{"name": "Costs", "summary": "Costs rose."',  # cut off
    ],
)
def test_unusable_replies_raise_reply_error(reply):
    with pytest.raises(prompts.ReplyError):
        prompts.parse_label(reply)


# What a model (or a server in between) may put in a reply that a database column or a
# terminal must never get: NUL, a lone surrogate, terminal escape sequences, bidi controls.
POISON = "\x00\ud800\x1b[2J\x1b]0;pwned\x07\u202e\u2066\x9b\x7f"


def reply_of(name: str, summary: str = "A summary.") -> str:
    return json.dumps({"name": name, "summary": summary})


def test_control_bidi_and_surrogate_characters_are_stripped():
    label = prompts.parse_label(reply_of(f"Rev{POISON}enue\x1b[31m growth\x1b[0m",
                                         f"Revenue {POISON}grew.\x00 Costs\u202e fell."))
    assert label.name == "Revenue growth"
    assert label.summary == "Revenue grew. Costs fell."
    label.name.encode("utf-8"), label.summary.encode("utf-8")  # no lone surrogate left to fail on


def test_a_name_is_capped_in_characters_too():
    name = prompts.parse_label(reply_of("Supercalifragilistic" * 20)).name
    assert 0 < len(name) <= prompts.MAX_NAME_CHARS


@pytest.mark.parametrize("name", [POISON, "\x1b[2J\x1b[H", "\u202e\u202c", '"\x00"'])
def test_a_name_of_nothing_but_control_characters_is_a_bad_reply(name):
    with pytest.raises(prompts.ReplyError):
        prompts.parse_label(reply_of(name))
    with pytest.raises(prompts.ReplyError):
        prompts.parse_label(reply_of("A name", summary=name.strip('"')))
