"""Naming topics and themes: the interface every namer implements, and the offline namer.

A namer turns what clustering found (keywords, representative sentences, member topics)
into a short name and a summary. Two implementations exist:

* ``OfflineNamer`` (here): built from the c-TF-IDF keywords and one representative
  sentence; needs no network; ``source = "keywords"``. Used when no API key is set, and
  as the fallback for any topic the LLM could not name.
* ``LLMNamer`` (``app/llm.py``): asks an OpenAI-compatible chat-completions server;
  ``source = "llm"``.

Both are async, so the naming stage can have many topics of many firms in flight at
once while the compute stage goes on clustering the next firms.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Protocol


@dataclass(frozen=True)
class TopicToName:
    """One firm topic, as the namer sees it."""

    firm_id: str
    firm_name: str | None
    topic_no: int
    keywords: list[str]
    # Representative sentences (closest to the topic's centre), the evidence shown to
    # the namer; their ids are stored with the topic.
    sentences: list[str]
    sentence_ids: list[int]
    n_sentences: int


@dataclass(frozen=True)
class MemberTopic:
    """A firm topic inside a theme, as the theme namer sees it."""

    firm_id: str
    name: str
    summary: str


@dataclass(frozen=True)
class ThemeToName:
    """One cross-firm theme, as the namer sees it."""

    theme_no: int
    keywords: list[str]
    topics: list[MemberTopic]  # a sample of its member topics when there are many
    n_topics: int
    n_firms: int


@dataclass(frozen=True)
class Label:
    """A name (a few words) and a summary (1-3 sentences) and where they came from."""

    name: str
    summary: str
    source: str  # "llm" or "keywords"
    # The LLM request whose answer this is (``llm_exchanges.request_key``); None offline.
    request_key: str | None = None


class Namer(Protocol):
    """What the naming stage needs from a namer."""

    # How many names it works on at once (the LLM's semaphore); the naming stage keeps
    # twice as many topics waiting, so that no slot is ever idle.
    concurrency: int

    async def name_topic(self, topic: TopicToName) -> Label:
        """Name one firm topic. Never raises for one topic's trouble: falls back instead."""
        ...

    async def name_theme(self, theme: ThemeToName) -> Label:
        """Name one cross-firm theme. Never raises for one theme's trouble."""
        ...

    def usage(self) -> dict:
        """Counts for the ``runs.llm_usage`` column and the end-of-run summary."""
        ...

    def for_run(self, pool, run_id: int) -> AbstractAsyncContextManager["Namer"]:
        """``async with namer.for_run(pool, run_id) as bound:`` the namer bound to run
        ``run_id`` in the database at ``pool``: it keeps the run's LLM exchanges there and
        answers from those kept (``app.exchanges``), and shares the run-wide request limit
        with the run's other workers (``LLM_RUN_CONCURRENCY``, ``app.claims.LLMSlots``).
        A namer that sends no request yields itself."""
        ...


def usage_since_recorded(namer: Namer) -> dict:
    """``namer.usage()`` less what was returned for it before: counts (numbers) as the
    increase since the last call, other fields as they are now (a peak stays a peak).
    This is what a start of a run adds to ``runs.llm_usage`` (``app.runs.set_status``),
    so the process's start-up check counts once and a namer serving run after run adds
    to each only what that run used. The mark lives in the namer's ``recorded_usage``,
    which its copies bound to a run share; a namer without one gives its whole usage."""
    now = namer.usage()
    recorded = getattr(namer, "recorded_usage", None)
    if recorded is None:
        return now
    since = {key: value - recorded.get(key, 0)
             if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "peak_in_flight" else value
             for key, value in now.items()}
    recorded.clear()
    recorded.update(now)
    return since


def keyword_name(keywords: list[str], words: int = 3) -> str:
    """A short name from the leading keywords, e.g. ``"revenue / growth / quarter"``.

    A keyword whose words an earlier one already has is skipped: after "supply chain",
    "supply" and "chain" say nothing new."""
    chosen: list[str] = []
    said: set[str] = set()
    for keyword in keywords:
        if keyword and not set(keyword.split()) <= said:
            chosen.append(keyword)
            said |= set(keyword.split())
        if len(chosen) == words:
            break
    return " / ".join(chosen) if chosen else "unnamed topic"


def distinct_names(labels: list[Label], keywords: list[list[str]]) -> list[Label]:
    """The labels of one level's themes, no two with the same name.

    Takes each theme's label and its keywords (best first); returns the labels, those
    whose name another shares renamed. Keywords can collide ("musk / elon / twitter"
    twice), and so can an LLM's names; a reader could not tell such themes apart. Each
    theme of a colliding group takes its first keyword that no other theme of the group
    has among its keywords: "musk / elon / twitter / deal" and "... / tesla" (an LLM name
    takes it in brackets: "Cloud growth (aws)"). A theme with no such keyword is numbered
    within its group, so the names always come out distinct."""
    labels = list(labels)
    for _ in range(len(labels)):  # a new name may meet another one: a few rounds at most
        groups: dict[str, list[int]] = defaultdict(list)
        for i, label in enumerate(labels):
            groups[label.name].append(i)
        colliding = [members for members in groups.values() if len(members) > 1]
        if not colliding:
            return labels
        for members in colliding:
            for place, i in enumerate(members):
                others = {w for j in members if j != i for w in keywords[j]}
                in_name = set(re.findall(r"\w+", labels[i].name.lower()))
                mark = next((w for w in keywords[i] if w and w not in others and not set(w.split()) <= in_name), None)
                if mark is None:
                    joined = f"{labels[i].name} ({place + 1})"
                elif labels[i].source == "keywords":
                    joined = f"{labels[i].name} / {mark}"
                else:
                    joined = f"{labels[i].name} ({mark})"
                labels[i] = replace(labels[i], name=joined)
    return labels


@dataclass
class OfflineNamer:
    """Names from keywords alone: deterministic, free, and always available."""

    named_topics: int = field(default=0)
    named_themes: int = field(default=0)
    concurrency: int = 1  # names come back at once: nothing to keep busy
    recorded_usage: dict = field(default_factory=dict)  # see usage_since_recorded

    async def name_topic(self, topic: TopicToName) -> Label:
        self.named_topics += 1
        return topic_label_from_keywords(topic)

    async def name_theme(self, theme: ThemeToName) -> Label:
        self.named_themes += 1
        return theme_label_from_keywords(theme)

    def usage(self) -> dict:
        return {"namer": "keywords", "topics_named": self.named_topics, "themes_named": self.named_themes}

    @asynccontextmanager
    async def for_run(self, pool, run_id: int) -> AsyncIterator["OfflineNamer"]:
        """Itself: no request is sent, so there is nothing to keep or share."""
        yield self


def topic_label_from_keywords(topic: TopicToName) -> Label:
    """The offline label of a firm topic (also the LLM namer's fallback)."""
    summary = f"{topic.n_sentences} sentences about {', '.join(topic.keywords[:6]) or 'no clear keywords'}."
    if topic.sentences:
        example = topic.sentences[0]
        if len(example) > 200:
            example = example[:197] + "..."
        summary += f' For example: "{example}"'
    return Label(name=keyword_name(topic.keywords), summary=summary, source="keywords")


def theme_label_from_keywords(theme: ThemeToName) -> Label:
    """The offline label of a cross-firm theme (also the LLM namer's fallback)."""
    summary = (
        f"{theme.n_topics} firm topics from {theme.n_firms} firms about "
        f"{', '.join(theme.keywords[:6]) or 'no clear keywords'}."
    )
    if theme.topics:
        summary += " Member topics include: " + "; ".join(t.name for t in theme.topics[:3]) + "."
    return Label(name=keyword_name(theme.keywords), summary=summary, source="keywords")
