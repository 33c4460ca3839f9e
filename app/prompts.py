"""Everything the LLM is told, and how its replies are read.

All prompt text lives in this one module so that a reader (or a reviewer of a published
result) can see exactly what the model was asked, without digging through HTTP code.

Two prompts name things:

* a **firm topic**: the firm's name, the topic's top keywords and its representative
  sentences; the model answers with a short name and a 1-3 sentence summary of what the
  firm says about it.
* a **cross-firm theme**: the names and summaries of (a sample of) its member topics and
  how many topics and firms it spans; the summary states what belongs in the theme, so it
  reads as the theme's inclusion criteria.

Both ask for one JSON object ``{"name": ..., "summary": ...}``. Models do not always obey
to the letter, so ``parse_label`` is forgiving about code fences, chatter around the JSON
and over-long names, and strict about everything else: a reply it cannot use raises
``ReplyError``, which the caller treats as a failed attempt (and retries).
"""

from __future__ import annotations

import json
import re

from app.naming import Label, ThemeToName, TopicToName
from app.safe_text import clean

# A name is a label on a chart or a table row, not a sentence.
MAX_NAME_WORDS = 6
MAX_NAME_CHARS = 80
# The evidence shown for one topic: enough to name it, few enough tokens to stay cheap.
MAX_SENTENCES = 10
MAX_SENTENCE_CHARS = 400
MAX_KEYWORDS = 10
# A theme prompt shows at most this many member topics (the caller already samples).
MAX_THEME_TOPICS = 40
MAX_MEMBER_SUMMARY_CHARS = 300
# A summary longer than this is a runaway reply; it is cut at a sentence end.
MAX_SUMMARY_CHARS = 1000
# Upper bound on reply length. A name and three sentences need about 100 tokens; the
# headroom keeps a verbose model from having its JSON cut off mid-way.
MAX_REPLY_TOKENS = 400

SYSTEM_PROMPT = (
    "You are a careful research assistant who labels topics found in what companies say "
    "in earnings calls and annual reports. You answer with one JSON object and nothing else."
)

_ANSWER_FORMAT = (
    'Answer with one JSON object: {"name": "...", "summary": "..."}\n'
    f"- name: at most {MAX_NAME_WORDS} words, specific and plain (no firm name, no quotes, no final period).\n"
)

TOPIC_INSTRUCTIONS = (
    "Below is one topic that a clustering algorithm found in the sentences of one company. "
    "Name the topic and summarise it.\n"
    + _ANSWER_FORMAT
    + "- summary: 1 to 3 sentences on what the company says about this topic.\n"
)

THEME_INSTRUCTIONS = (
    "Below is one theme: a group of similar topics found across many companies. "
    "Name the theme and summarise it.\n"
    + _ANSWER_FORMAT
    + "- summary: 1 to 3 sentences that state what belongs in this theme, so that a reader "
    "could decide whether another company's topic belongs in it (its inclusion criteria).\n"
)


class ReplyError(ValueError):
    """The model's reply cannot be turned into a name and a summary."""


def _shorten(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def topic_messages(topic: TopicToName) -> list[dict]:
    """The chat messages that ask for a firm topic's name and summary.

    Takes the topic as clustering found it; returns OpenAI-style ``messages``. The
    evidence is bounded (``MAX_SENTENCES`` sentences of ``MAX_SENTENCE_CHARS``) so one
    huge topic cannot make one request expensive.
    """
    firm = topic.firm_name or topic.firm_id
    lines = [TOPIC_INSTRUCTIONS, f"Company: {firm}", f"Keywords: {', '.join(topic.keywords[:MAX_KEYWORDS])}",
             f"The topic has {topic.n_sentences} sentences. The most representative ones:"]
    for number, sentence in enumerate(topic.sentences[:MAX_SENTENCES], start=1):
        lines.append(f"{number}. {_shorten(sentence, MAX_SENTENCE_CHARS)}")
    return _messages("\n".join(lines))


def theme_messages(theme: ThemeToName) -> list[dict]:
    """The chat messages that ask for a cross-firm theme's name and summary.

    Takes the theme with (a sample of) its member topics, already named; returns
    OpenAI-style ``messages``.
    """
    shown = theme.topics[:MAX_THEME_TOPICS]
    if len(shown) < theme.n_topics:
        intro = f"A sample of {len(shown)} of its topics (name: summary):"
    else:
        intro = "Its topics (name: summary):"
    lines = [THEME_INSTRUCTIONS, f"The theme spans {theme.n_topics} topics from {theme.n_firms} companies.",
             f"Keywords: {', '.join(theme.keywords[:MAX_KEYWORDS])}", intro]
    for member in shown:
        lines.append(f"- {_shorten(member.name, 80)}: {_shorten(member.summary, MAX_MEMBER_SUMMARY_CHARS)}")
    return _messages("\n".join(lines))


def check_messages() -> list[dict]:
    """A minimal request for the start-up check: proves key and model work, costs ~10 tokens."""
    return [{"role": "user", "content": "Reply with the word OK."}]


def _messages(user_text: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user_text}]


# --- reading replies ------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def reply_content(body: dict) -> str:
    """The assistant message's text in a chat-completion body; ``ReplyError`` when absent."""
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ReplyError("the reply has no choices[0].message.content") from None
    if not isinstance(content, str):
        raise ReplyError("the reply's message content is not text")
    return content


def parse_label(content: str) -> Label:
    """The ``Label`` (source ``"llm"``) in a model's reply.

    Accepts a bare JSON object, one inside a Markdown code fence, or one with text around
    it; keys are matched case-insensitively. Tidies the name (quotes, trailing period,
    whitespace) and cuts it to ``MAX_NAME_WORDS`` words; control, escape, bidi and
    surrogate characters are dropped from both (``app.safe_text``). Raises ``ReplyError``
    when there is no JSON object with a string ``name`` and ``summary``, or either is
    empty once cleaned (the caller asks again, then falls back to keywords).
    """
    data = _find_json_object(content or "")
    fields = {str(key).lower(): value for key, value in data.items()}
    name, summary = fields.get("name"), fields.get("summary")
    if not isinstance(name, str) or not isinstance(summary, str):
        raise ReplyError("the JSON object lacks a string 'name' and 'summary'")
    name, summary = clean_name(name), clean_summary(summary)
    if not name or not summary:
        raise ReplyError("the reply's name or summary is empty")
    return Label(name=name, summary=summary, source="llm")


def _find_json_object(text: str) -> dict:
    """The first JSON object in ``text`` (code fences first, then any ``{`` that parses)."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        # Try every "{" in turn: chatter before the object may itself contain braces.
        for start in (i for i, char in enumerate(candidate) if char == "{"):
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise ReplyError(f"no JSON object in the reply: {_shorten(text, 80)!r}")


def clean_name(name: str) -> str:
    """A name on one line, without control characters, wrapping quotes or a final period,
    at most ``MAX_NAME_WORDS`` words and ``MAX_NAME_CHARS`` characters (cut at a word end
    where there is one)."""
    words = clean(name).strip().strip("\"'`*").split()[:MAX_NAME_WORDS]
    name = " ".join(words)
    if len(name) > MAX_NAME_CHARS:
        cut = name[:MAX_NAME_CHARS]
        name = cut[: cut.rfind(" ")] if " " in cut else cut
    return name.strip().rstrip(".;:,").strip("\"'`*").strip()


def clean_summary(summary: str) -> str:
    """A summary on one line without control characters, cut at a sentence end when it
    runs past ``MAX_SUMMARY_CHARS``."""
    summary = " ".join(clean(summary).split())
    if len(summary) <= MAX_SUMMARY_CHARS:
        return summary
    cut = summary[:MAX_SUMMARY_CHARS]
    end = cut.rfind(". ")
    return cut[: end + 1] if end > 0 else cut[: MAX_SUMMARY_CHARS - 3].rstrip() + "..."
