"""``firmtopics show theme|topic|firm ID``: walk the hierarchy up and down.

* a **theme**: its summary, its level and parent theme, its topics grouped by firm (a
  fine theme) or the themes one level below it and its firms (a broader theme), and a
  few evidence sentences (the sentences that were shown to the namer of its topics);
* a **topic**: its firm, its theme (with the broader themes above it), and its sentences
  (a sample when there are many);
* a **firm**: its state in the run and its topics, each with its theme;
* with ``--prompt``, a theme's or topic's exact LLM exchange instead: the messages sent
  and the reply that named it (``llm_exchanges``).

Each view is built in two steps: a ``*_detail`` function reads the rows into a plain
dict (easy to test, and JSON-ready), and a ``format_*`` function turns that dict into
the text printed.
"""

from __future__ import annotations

import json

import asyncpg

from app.errors import UsageError
from app.prompts import reply_content
from app.read.text import clip
from app.runs import load_run, run_brief, run_by_id
from app.safe_text import printable

KINDS = ("theme", "topic", "firm")
SENTENCE_SAMPLE = 20  # sentences printed for a topic; the rest are counted
EVIDENCE_SAMPLE = 8  # evidence sentences printed for a theme


def _parse_id(kind: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"a {kind} id is a whole number, got {raw!r}") from None


async def _run_of(conn: asyncpg.Connection, kind: str, item_id: int, run_id: int | None,
                  run_name: str | None) -> asyncpg.Record:
    """The run a theme or topic belongs to (``run_id``, None when the id is unknown),
    checked against ``--run`` when one is given."""
    if run_id is None:
        raise UsageError(f"no {kind} {item_id} in this database")
    run = await run_by_id(conn, run_id)
    if run_name is not None and run["name"] != run_name:
        raise UsageError(f"{kind} {item_id} is in run {run['name']!r}, not in run {run_name!r}")
    return run


# --- theme ------------------------------------------------------------------------------


async def theme_detail(conn: asyncpg.Connection, theme_id: int, run_name: str | None = None) -> dict:
    """A theme with its place in the theme levels, its topics (ordered by firm, then
    size) and evidence sentences.

    Takes the theme's id and, optionally, the run it must belong to. Returns a dict:
    ``run``, ``theme`` (the theme's columns), ``level`` (1 = fine), ``n_levels`` (the
    run's number of theme levels), ``parent`` (``theme_id`` and ``name`` of the theme one
    level up, None at the top), ``children`` (the themes one level down, largest first,
    each with ``theme_id``, ``name``, ``n_topics``, ``n_firms``; empty for a fine theme),
    ``topics`` (every topic under the theme, at any depth, each with its firm and its
    fine ``theme_id``) and ``evidence`` (a few sentences, one from each of the largest
    topics first). Raises ``UsageError`` for an unknown id.
    """
    theme = await conn.fetchrow(
        "SELECT theme_id, run_id, name, summary, keywords, name_source, n_topics, n_firms, level"
        " FROM themes WHERE theme_id = $1", theme_id)
    run = await _run_of(conn, "theme", theme_id, theme and theme["run_id"], run_name)
    parent = await conn.fetchrow(
        "SELECT p.theme_id, p.name FROM themes th JOIN themes p ON p.theme_id = th.parent_theme_id"
        " WHERE th.theme_id = $1", theme_id)
    children = await conn.fetch(
        "SELECT theme_id, name, n_topics, n_firms FROM themes WHERE parent_theme_id = $1"
        " ORDER BY n_topics DESC, theme_id", theme_id)
    n_levels = await conn.fetchval("SELECT max(level) FROM themes WHERE run_id = $1", run["run_id"])
    # Topics link to fine themes only; theme_lineage brings a broader theme every theme
    # under it (for a fine theme it is the theme itself, at distance 0), so n_topics,
    # n_sentences and the evidence mean the same thing at every level. The themes come
    # first, as a list of ids: joined to the recursive view, the planner cannot tell how
    # few they are and read every topic of the database (at 1,000,000 sentences, 25,635
    # topics, to keep a few hundred); by a list, the topics come through their index.
    under = [r["theme_id"] for r in await conn.fetch("SELECT theme_id FROM theme_lineage WHERE ancestor_id = $1",
                                                     theme_id)]
    topics = await conn.fetch(
        "SELECT t.topic_id, t.firm_id, f.firm_name, t.name, t.n_sentences, t.theme_id, t.theme_assignment,"
        "       t.evidence_sentence_ids"
        " FROM topics t JOIN firms f ON f.firm_id = t.firm_id"
        " WHERE t.theme_id = ANY($1::bigint[]) ORDER BY t.firm_id, t.n_sentences DESC, t.topic_id", under)
    # One evidence sentence from each topic, largest topics first, then a second round,
    # and so on: the sample shows as many firms as it can.
    by_size = sorted(topics, key=lambda t: (-t["n_sentences"], t["topic_id"]))
    picked: list[tuple[int, int]] = []  # (sentence_id, topic_id)
    round_no = 0
    while len(picked) < EVIDENCE_SAMPLE and any(len(t["evidence_sentence_ids"]) > round_no for t in by_size):
        for t in by_size:
            if round_no < len(t["evidence_sentence_ids"]) and len(picked) < EVIDENCE_SAMPLE:
                picked.append((t["evidence_sentence_ids"][round_no], t["topic_id"]))
        round_no += 1
    texts = {
        r["sentence_id"]: r
        for r in await conn.fetch(
            "SELECT sentence_id, firm_id, doc_id, text FROM sentences WHERE sentence_id = ANY($1::bigint[])",
            [sid for sid, _ in picked])
    }
    evidence = [
        {"sentence_id": sid, "topic_id": tid, "firm_id": texts[sid]["firm_id"],
         "doc_id": texts[sid]["doc_id"], "text": texts[sid]["text"]}
        for sid, tid in picked if sid in texts
    ]
    n_sentences = sum(t["n_sentences"] for t in topics)
    return {
        "run": run_brief(run),
        "theme": {**dict(theme), "keywords": list(theme["keywords"]), "n_sentences": n_sentences},
        "level": theme["level"],
        "n_levels": n_levels,
        "parent": dict(parent) if parent else None,
        "children": [dict(c) for c in children],
        "topics": [
            {k: t[k] for k in ("topic_id", "firm_id", "firm_name", "name", "n_sentences", "theme_id",
                               "theme_assignment")}
            for t in topics
        ],
        "evidence": evidence,
    }


def format_theme(detail: dict) -> str:
    """The text of ``show theme``: header, level and parent, summary, then the topics
    grouped by firm (a fine theme) or the themes below and the firms (a broader one),
    then evidence."""
    theme = detail["theme"]
    lines = [
        f"theme {theme['theme_id']}: {theme['name']}   ({_run_label(detail['run'])})",
        f"  {theme['n_topics']} topics from {theme['n_firms']} firms, {theme['n_sentences']} sentences;"
        f" named from {_source(theme['name_source'])}",
        _level_line(detail),
        f"  summary: {theme['summary']}",
        f"  keywords: {', '.join(theme['keywords'])}",
        "",
    ]
    if detail["level"] > 1:
        lines += _broader_theme_lines(detail)
    else:
        lines.append("topics, by firm:")
        firm = None
        for topic in detail["topics"]:
            if topic["firm_id"] != firm:
                firm = topic["firm_id"]
                lines.append(f"  {_firm_label(topic['firm_id'], topic['firm_name'])}")
            lines.append(f"    topic {topic['topic_id']}: {topic['name']}  ({topic['n_sentences']} sentences)")
    if detail["evidence"]:
        lines += ["", "evidence (sentences shown to the namer of each topic):"]
        for s in detail["evidence"]:
            lines.append(f"  {s['firm_id']}, topic {s['topic_id']}: {clip(s['text'], 160)}")
    if detail["level"] > 1 and detail["children"]:
        lines += ["", f"next: firmtopics show theme {detail['children'][0]['theme_id']}"]
    else:
        lines += ["", f"next: firmtopics show topic {detail['topics'][0]['topic_id']}" if detail["topics"] else ""]
    return "\n".join(lines).rstrip()


def _level_line(detail: dict) -> str:
    """``level L of N``, then the parent theme, or that the theme is at the top."""
    level = f"  level {detail['level']} of {detail['n_levels']}"
    if detail["parent"]:
        return f"{level}; parent: theme {detail['parent']['theme_id']}: {detail['parent']['name']}"
    if detail["n_levels"] == 1:
        return f"{level}: top level (this run's themes have a single level)"
    return f"{level}: top level"


def _broader_theme_lines(detail: dict) -> list[str]:
    """A broader theme's themes one level below, then its firms with their topics under
    it: listing every topic of a broad theme would be too long to read, and each child's
    own ``show theme`` lists them."""
    lines = [f"themes below it (level {detail['level'] - 1}), largest first:"]
    for child in detail["children"]:
        lines.append(f"  theme {child['theme_id']}: {child['name']}"
                     f"  ({child['n_topics']} topics, {child['n_firms']} firms)")
    firms: dict[str, list[dict]] = {}  # topics come ordered by firm
    for topic in detail["topics"]:
        firms.setdefault(topic["firm_id"], []).append(topic)
    lines += ["", "firms (topics and sentences under this theme):"]
    for topics in firms.values():
        lines.append(f"  {_firm_label(topics[0]['firm_id'], topics[0]['firm_name'])}: {len(topics)} topics,"
                     f" {sum(t['n_sentences'] for t in topics)} sentences")
    return lines


# --- topic ------------------------------------------------------------------------------


async def topic_detail(conn: asyncpg.Connection, topic_id: int, run_name: str | None = None,
                       *, sample: int = SENTENCE_SAMPLE) -> dict:
    """A topic with its firm, its theme and up to ``sample`` of its sentences.

    The evidence sentences come first (they are the most typical ones: the namer saw
    them), then the others in id order. Returns a dict: ``run``, ``topic``, ``firm``,
    ``theme`` (None when the run made no themes), ``theme_path`` (the topic's theme and
    each theme above it up to the top, each with ``theme_id``, ``name``, ``level``; empty
    when the run made no themes), ``sentences`` and ``n_sentences``.
    Raises ``UsageError`` for an unknown id.
    """
    topic = await conn.fetchrow(
        "SELECT topic_id, run_id, firm_id, topic_no, name, summary, keywords, name_source, n_sentences,"
        "       evidence_sentence_ids, theme_id, theme_assignment"
        " FROM topics WHERE topic_id = $1", topic_id)
    run = await _run_of(conn, "topic", topic_id, topic and topic["run_id"], run_name)
    firm = await conn.fetchrow("SELECT firm_id, firm_name FROM firms WHERE firm_id = $1", topic["firm_id"])
    theme, path = None, []
    if topic["theme_id"] is not None:
        theme = await conn.fetchrow("SELECT theme_id, name, summary FROM themes WHERE theme_id = $1",
                                    topic["theme_id"])
        path = await conn.fetch(
            "SELECT ancestor_id AS theme_id, ancestor_name AS name, ancestor_level AS level"
            " FROM theme_lineage WHERE theme_id = $1 ORDER BY distance", topic["theme_id"])
    sentences = await conn.fetch(
        "SELECT s.sentence_id, s.doc_id, s.text, s.sentence_id = ANY($2::bigint[]) AS evidence"
        " FROM sentence_topics st JOIN sentences s ON s.sentence_id = st.sentence_id"
        " WHERE st.topic_id = $1"
        " ORDER BY array_position($2::bigint[], s.sentence_id) NULLS LAST, s.sentence_id"
        " LIMIT $3",
        topic_id, list(topic["evidence_sentence_ids"]), sample)
    n_sentences = await conn.fetchval("SELECT count(*) FROM sentence_topics WHERE topic_id = $1", topic_id)
    record = dict(topic)
    record["keywords"] = list(record["keywords"])
    record["evidence_sentence_ids"] = list(record["evidence_sentence_ids"])
    return {
        "run": run_brief(run),
        "topic": record,
        "firm": dict(firm),
        "theme": dict(theme) if theme else None,
        "theme_path": [dict(p) for p in path],
        "sentences": [dict(s) for s in sentences],
        "n_sentences": n_sentences,
    }


def format_topic(detail: dict) -> str:
    """The text of ``show topic``: header, firm, theme, summary, sentences."""
    topic, firm, theme = detail["topic"], detail["firm"], detail["theme"]
    if theme:
        path = detail["theme_path"]
        if len(path) > 1:
            # Fine theme first, then each broader one: "12: Supply chains (level 1) < 40: ..."
            steps = " < ".join(f"{t['theme_id']}: {t['name']} (level {t['level']})" for t in path)
            theme_line = f"  theme: {steps}"
        else:  # a single level of themes
            theme_line = f"  theme: {theme['theme_id']}: {theme['name']}"
    else:
        theme_line = "  theme: none (the run made no themes)"
    lines = [
        f"topic {topic['topic_id']}: {topic['name']}   ({_run_label(detail['run'])})",
        f"  firm: {_firm_label(firm['firm_id'], firm['firm_name'])}",
        theme_line,
        f"  summary: {topic['summary']}",
        f"  keywords: {', '.join(topic['keywords'])}",
        f"  named from {_source(topic['name_source'])}",
        "",
    ]
    shown, total = len(detail["sentences"]), detail["n_sentences"]
    lines.append(f"sentences: {total}" + (f", the first {shown} (* = evidence shown to the namer):"
                                          if shown < total else " (* = evidence shown to the namer):"))
    for s in detail["sentences"]:
        mark = "*" if s["evidence"] else " "
        lines.append(f" {mark}[{s['sentence_id']}] {clip(s['text'], 160)}")
    if shown < total:
        lines.append(f"  ... and {total - shown} more: SELECT text FROM sentence_assignments"
                     f" WHERE topic_id = {topic['topic_id']};")
    if theme:
        lines += ["", f"next: firmtopics show theme {theme['theme_id']}"]
    return "\n".join(lines)


# --- firm -------------------------------------------------------------------------------


async def firm_detail(conn: asyncpg.Connection, firm_id: str, run_name: str) -> dict:
    """A firm's state in run ``run_name`` and its topics, each with its theme.

    Returns a dict: ``run``, ``firm`` (id and name), ``state`` (the ``run_firms`` row, or
    None when the run has not reached the firm yet) and ``topics`` (largest first).
    Raises ``UsageError`` for an unknown firm or run.
    """
    run = await load_run(conn, run_name, complete=False)
    firm = await conn.fetchrow("SELECT firm_id, firm_name FROM firms WHERE firm_id = $1", firm_id)
    if firm is None:
        raise UsageError(f"no firm {firm_id!r} in the database")
    state = await conn.fetchrow(
        "SELECT status, reason, n_sentences, n_topics, n_outliers FROM run_firms"
        " WHERE run_id = $1 AND firm_id = $2", run["run_id"], firm_id)
    topics = await conn.fetch(
        "SELECT t.topic_id, t.name, t.n_sentences, t.theme_id, th.name AS theme_name, t.theme_assignment"
        " FROM topics t LEFT JOIN themes th ON th.theme_id = t.theme_id"
        " WHERE t.run_id = $1 AND t.firm_id = $2 ORDER BY t.n_sentences DESC, t.topic_id",
        run["run_id"], firm_id)
    return {
        "run": run_brief(run),
        "firm": dict(firm),
        "state": dict(state) if state else None,
        "topics": [dict(t) for t in topics],
    }


def format_firm(detail: dict) -> str:
    """The text of ``show firm``: the firm's state in the run, then its topics and themes."""
    firm, state = detail["firm"], detail["state"]
    lines = [f"firm {_firm_label(firm['firm_id'], firm['firm_name'])}   ({_run_label(detail['run'])})"]
    if state is None:
        lines.append(f"  not processed by this run yet: firmtopics run --run {detail['run']['name']}")
        return "\n".join(lines)
    lines.append(f"  {state['status']}: {state['n_sentences']} sentences, {state['n_topics']} topics, "
                 f"{state['n_outliers']} outliers (sentences in no topic)")
    if state["reason"]:
        lines.append(f"  reason: {state['reason']}")
    if detail["topics"]:
        lines += ["", "topics (largest first) and their themes:"]
        for t in detail["topics"]:
            theme = f"theme {t['theme_id']}: {t['theme_name']}" if t["theme_id"] is not None else "no theme"
            lines.append(f"  topic {t['topic_id']}: {t['name']}  ({t['n_sentences']} sentences)  ->  {theme}")
        lines += ["", f"next: firmtopics show topic {detail['topics'][0]['topic_id']}"]
    return "\n".join(lines)


# --- the command ------------------------------------------------------------------------


_NAMED = {
    "theme": "SELECT run_id, name, name_source, name_request FROM themes WHERE theme_id = $1",
    "topic": "SELECT run_id, name, name_source, name_request FROM topics WHERE topic_id = $1",
}


async def prompt_detail(conn: asyncpg.Connection, kind: str, item_id: int, run_name: str | None = None) -> dict:
    """The LLM exchange that named a theme or topic.

    Returns a dict: ``kind``, ``id``, ``name``, ``name_source``, ``run`` and ``exchange``
    (None for a name made from keywords, else ``model``, ``created_at``, ``status``,
    ``prompt_tokens``, ``completion_tokens``, ``latency_ms``, ``messages`` (the list
    sent), ``reply`` (the answer's text), ``from_run`` (the run that paid for it: another
    run's answer was reused from the cache)). Raises ``UsageError`` for an unknown id or
    a kind that has no prompt.
    """
    from app.exchanges import exchange_for

    row = await conn.fetchrow(_NAMED[kind], item_id)
    run = await _run_of(conn, kind, item_id, row and row["run_id"], run_name)
    exchange = await exchange_for(conn, row["name_request"])
    detail = {"kind": kind, "id": item_id, "name": row["name"], "name_source": row["name_source"],
              "run": run_brief(run), "exchange": None}
    if exchange is not None:
        request, reply = exchange["request"], exchange["reply"]
        try:
            reply = reply_content(json.loads(reply))
        except ValueError:  # not JSON, or no message in it
            pass  # shown as received
        from_run = (await run_by_id(conn, exchange["run_id"]))["name"]
        detail["exchange"] = {
            "model": exchange["model"], "created_at": exchange["created_at"].isoformat(timespec="seconds"),
            "status": exchange["status"], "prompt_tokens": exchange["prompt_tokens"],
            "completion_tokens": exchange["completion_tokens"], "latency_ms": exchange["latency_ms"],
            "messages": request.get("messages", []), "reply": reply, "from_run": from_run,
        }
    return detail


def format_prompt(detail: dict) -> str:
    """The text of ``show theme|topic ID --prompt``: each message sent, then the reply."""
    head = f"{detail['kind']} {detail['id']}: {detail['name']}   ({_run_label(detail['run'])})"
    exchange = detail["exchange"]
    if exchange is None:
        why = ("it was named from its keywords: no LLM request" if detail["name_source"] == "keywords"
               else "its LLM exchange is no longer kept")
        return f"{head}\n  {why}"
    reused = "" if exchange["from_run"] == detail["run"]["name"] else \
        f"; answered earlier for run {exchange['from_run']!r}, reused from the cache"
    lines = [head, f"  {exchange['model']}, {exchange['created_at']}, HTTP {exchange['status']}, "
                   f"{exchange['prompt_tokens']} + {exchange['completion_tokens']} tokens, "
                   f"{exchange['latency_ms']} ms{reused}", ""]
    for message in exchange["messages"]:
        lines += [f"--- {message.get('role', '?')} ---", str(message.get("content", "")), ""]
    lines += ["--- reply ---", str(exchange["reply"])]
    return "\n".join(lines)


async def show_detail(conn: asyncpg.Connection, kind: str, raw_id: str, run_name: str | None, *,
                      prompt: bool = False) -> dict:
    """The dict behind ``firmtopics show KIND ID`` (JSON-ready with ``default=str``).

    A theme or topic id names one row of one run, so ``run_name`` (``--run``) is only a
    check there; a firm appears in every run, so for a firm it picks the run
    (``default`` when not given). ``prompt``: the LLM exchange behind the name instead.
    """
    if prompt and kind in ("theme", "topic"):
        return await prompt_detail(conn, kind, _parse_id(kind, raw_id), run_name)
    if prompt:
        raise UsageError("--prompt goes with a theme or a topic: a firm is not named")
    if kind == "theme":
        return await theme_detail(conn, _parse_id(kind, raw_id), run_name)
    if kind == "topic":
        return await topic_detail(conn, _parse_id(kind, raw_id), run_name)
    if kind == "firm":
        return await firm_detail(conn, raw_id, run_name or "default")
    raise UsageError(f"show what? one of: {', '.join(KINDS)}")


async def show(conn: asyncpg.Connection, kind: str, raw_id: str, run_name: str | None, *,
               prompt: bool = False) -> str:
    """The text ``firmtopics show KIND ID`` prints (see ``show_detail``)."""
    detail = await show_detail(conn, kind, raw_id, run_name, prompt=prompt)
    if prompt:
        return format_prompt(detail)
    return {"theme": format_theme, "topic": format_topic, "firm": format_firm}[kind](detail)


async def command(settings, args) -> int:
    """``firmtopics show KIND ID [--run NAME] [--prompt] [--json]``: print one theme, topic
    or firm, or the LLM exchange that named a theme or topic; ``--json``: its dict."""
    from app.database import open_database

    async with open_database(settings) as pool, pool.acquire() as conn:
        if args.json:
            detail = await show_detail(conn, args.kind, args.id, args.run, prompt=args.prompt)
            print(printable(json.dumps(detail, default=str, ensure_ascii=False)))
        else:
            print(printable(await show(conn, args.kind, args.id, args.run, prompt=args.prompt)))
    return 0


def _run_label(run: dict) -> str:
    return f"run {run['name']!r}" + ("" if run["status"] == "complete" else f", {run['status']}")


def _firm_label(firm_id: str, firm_name: str | None) -> str:
    return f"{firm_id} ({firm_name})" if firm_name and firm_name != firm_id else firm_id


def _source(name_source: str) -> str:
    return "its keywords (no LLM key was set)" if name_source == "keywords" else "the LLM"

