"""``firmtopics run --dry-run``: what a run would ask of the LLM, and cost, before it spends.

Nothing is ingested and nothing is written. The corpus is the file given with
``--input`` (read and checked like ``ingest`` would, streamed: only each firm's count
is kept, and the texts of the few firms a sample clusters) or else the sentences
already in the database. The expected number of topics comes from a finished
run in the database (its topics per clustered sentence) or, when there is none, from a
sample of firms clustered here with the run's settings (embedded, never stored). The
number of themes follows from it by the theme stage's own rules (square root, then the
levels above). Tokens are counted from real prompts (the finished run's stored topics,
or the sample's) at about four characters a token; a theme's prompt is taken at the
middle of the range ``docs/naming.md`` gives. With ``LLM_PRICE_PROMPT_PER_M`` and
``LLM_PRICE_COMPLETION_PER_M`` (prices per million tokens), the cost; and how many of the
requests the exchange log already answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from app import prompts
from app.clustering import MIN_TOPICS, level_above, theme_count
from app.exchanges import request_key
from app.naming import TopicToName
from app.runs import latest_complete_run
from app.settings import RunSettings, Settings

CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text and OpenAI-style tokenisers
THEME_PROMPT_TOKENS = 2000  # docs/naming.md: a theme's prompt is 1,000-3,000 tokens
REPLY_TOKENS = 75  # docs/naming.md: a reply is 50-100 tokens
SAMPLE_FIRMS = 3  # firms clustered to estimate topics when no finished run is there
TOPICS_SHOWN = 200  # stored topics whose prompts are rebuilt to count tokens


@dataclass
class Estimate:
    """What a run would do: counts, tokens, cost, and what the figures rest on."""

    firms: int
    sentences: int
    firms_to_cluster: int
    topics: int
    themes: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached: int
    basis: str
    cost: float | None = None


def themes_for(topics: int, settings: RunSettings) -> int:
    """Themes at every level for ``topics`` topics, by the theme stage's rules
    (``theme_count``, then ``level_above`` for each level of ``broader_levels``)."""
    if topics < MIN_TOPICS:
        return 0
    count = theme_count(topics, settings)
    total = count
    while (count := level_above(count, settings.theme_top_level_size)) is not None:
        total += count
    return total


def file_rows(path: Path) -> Iterator:
    """The checked rows of a corpus file, one at a time, as ``ingest`` reads them (bad
    rows left out: ``app.corpus.read_chunks``)."""
    from app.corpus import IngestReport, read_chunks

    for chunk in read_chunks(path, IngestReport(path=path)):
        yield from chunk


def firm_sizes(rows: Iterable) -> dict[str, int]:
    """Sentences per firm of ``rows`` (``app.corpus.Row``s, consumed once, in file order).

    Keeps a count per firm and the texts of the document being read, no more: memory
    follows the number of firms, not of sentences. An exact repeat within a document is
    counted once, as ``ingest`` stores it once, when the document's rows come together
    (a file written document by document); a document whose rows are scattered through
    the file may have a repeat counted again, which makes the estimate a little high.
    """
    sizes: dict[str, int] = {}
    document, texts = None, set()
    for row in rows:
        if (row.firm_id, row.doc_id) != document:
            document, texts = (row.firm_id, row.doc_id), set()
        if row.text not in texts:
            texts.add(row.text)
            sizes[row.firm_id] = sizes.get(row.firm_id, 0) + 1
    return sizes


def firm_texts(rows: Iterable, firms: Iterable[str]) -> dict[str, list[str]]:
    """The sentences of ``firms`` in ``rows``, in file order, an exact repeat within a
    document taken once (as ``ingest`` stores them); the texts of other firms are
    passed over, never kept."""
    wanted = set(firms)
    texts: dict[str, dict[tuple, str]] = {}
    for row in rows:
        if row.firm_id in wanted:
            texts.setdefault(row.firm_id, {})[(row.doc_id, row.text)] = row.text
    return {firm: list(kept.values()) for firm, kept in texts.items()}


async def database_corpus(conn: asyncpg.Connection) -> dict[str, int]:
    """Sentences per firm already in the database (none when it has no tables yet)."""
    try:
        rows = await conn.fetch("SELECT firm_id, count(*) AS n FROM sentences GROUP BY firm_id")
    except asyncpg.UndefinedTableError:
        return {}
    return {r["firm_id"]: r["n"] for r in rows}


async def finished_run(conn: asyncpg.Connection) -> dict | None:
    """The latest complete run: its id and name, topics per clustered sentence, mean prompt
    tokens of a topic request (rebuilt from its stored topics) and the names kept in the
    exchange log's cache; None when there is none."""
    try:
        run = await latest_complete_run(conn)
    except asyncpg.UndefinedTableError:
        return None
    if run is None:
        return None
    counts = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM topics WHERE run_id = $1) AS topics,"
        " (SELECT coalesce(sum(n_sentences), 0) FROM run_firms WHERE run_id = $1 AND status = 'done') AS sentences",
        run["run_id"])
    shown = await conn.fetch(
        "SELECT t.firm_id, f.firm_name, t.topic_no, t.keywords, t.n_sentences,"
        " array(SELECT s.text FROM sentences s WHERE s.sentence_id = ANY (t.evidence_sentence_ids)"
        "       ORDER BY array_position(t.evidence_sentence_ids, s.sentence_id)) AS evidence"
        " FROM topics t JOIN firms f USING (firm_id) WHERE t.run_id = $1 ORDER BY t.topic_id LIMIT $2",
        run["run_id"], TOPICS_SHOWN)
    tokens = [_prompt_tokens(TopicToName(r["firm_id"], r["firm_name"], r["topic_no"], list(r["keywords"]),
                                         list(r["evidence"]), [], r["n_sentences"])) for r in shown]
    cached = await conn.fetchval(
        "SELECT count(*) FROM (SELECT name_request FROM topics WHERE run_id = $1"
        "  UNION ALL SELECT name_request FROM themes WHERE run_id = $1) named"
        " WHERE EXISTS (SELECT 1 FROM llm_exchanges e WHERE e.request_key = named.name_request AND e.usable)",
        run["run_id"])
    return {"name": run["name"], "topics_per_sentence": counts["topics"] / max(counts["sentences"], 1),
            "topic_tokens": sum(tokens) / len(tokens) if tokens else 0.0, "cached": cached}


def sample_topics(texts_by_firm: dict[str, list[str]], settings: RunSettings, model_settings: Settings) -> dict:
    """Cluster up to ``SAMPLE_FIRMS`` firms (the middle-sized ones of those large enough)
    with the run's settings; returns topics per sentence, mean prompt tokens of a topic
    request, and the sample's request keys (to look up in the cache)."""
    from app.backend import choose_backend
    from app.clustering import cluster_firm
    from app.embedding import load_embedder, resolve_backend

    chosen = middle_firms({firm: len(t) for firm, t in texts_by_firm.items()
                           if len(t) >= settings.min_firm_sentences})
    embedder = load_embedder(settings.embedding_model, batch_size=model_settings.embedding_batch_size,
                             backend=resolve_backend(settings.embed_backend), cache_dir=model_settings.data_dir / "models",
                             precision=model_settings.embedding_precision)
    backend = choose_backend()
    sentences, topics, keys = 0, [], []
    for firm in chosen:
        texts = texts_by_firm[firm]
        clustering = cluster_firm(texts, embedder.encode(texts), settings, backend)
        sentences += len(texts)
        for cluster in clustering.clusters:
            topic = TopicToName(firm, None, cluster.number, cluster.keywords,
                                [texts[i] for i in cluster.representatives], [], len(cluster.members))
            topics.append(_prompt_tokens(topic))
            keys.append(_key(topic, model_settings))
    return {"firms": chosen, "topics_per_sentence": len(topics) / max(sentences, 1),
            "topic_tokens": sum(topics) / len(topics) if topics else 0.0, "keys": keys}


def _prompt_tokens(topic: TopicToName) -> int:
    return sum(len(m["content"]) for m in prompts.topic_messages(topic)) // CHARS_PER_TOKEN


def _key(topic: TopicToName, settings: Settings) -> str:
    return request_key({"model": settings.xai_model, "messages": prompts.topic_messages(topic), "temperature": 0,
                        "max_completion_tokens": prompts.MAX_REPLY_TOKENS})


async def estimate(conn: asyncpg.Connection | None, settings: Settings, path: Path | None) -> Estimate:
    """The dry run's figures for the corpus at ``path`` (or, without one, the database's).

    ``conn`` is a connection that is only read (None: no database to read)."""
    import anyio

    run_settings = settings.run
    if path:
        sizes = await anyio.to_thread.run_sync(lambda: firm_sizes(file_rows(path)))
    else:
        sizes = await database_corpus(conn) if conn is not None else {}
    clustered = {firm: n for firm, n in sizes.items() if n >= run_settings.min_firm_sentences}
    previous = await finished_run(conn) if conn is not None else None
    cached = 0
    if previous is not None:
        per_sentence, topic_tokens = previous["topics_per_sentence"], previous["topic_tokens"]
        basis = f"topics per sentence of the finished run {previous['name']!r} in this database"
        cached = previous["cached"]
    elif clustered:
        if path:  # the file again, keeping only the sampled firms' sentences
            texts = await anyio.to_thread.run_sync(lambda: firm_texts(file_rows(path), middle_firms(clustered)))
        else:
            texts = await _database_texts(conn, clustered)
        sample = await anyio.to_thread.run_sync(sample_topics, texts, run_settings, settings)
        per_sentence, topic_tokens = sample["topics_per_sentence"], sample["topic_tokens"]
        basis = f"a sample of {len(sample['firms'])} firms clustered now ({', '.join(sample['firms'])})"
        if conn is not None and sample["keys"]:
            try:
                hits = await conn.fetchval("SELECT count(DISTINCT request_key) FROM llm_exchanges"
                                           " WHERE request_key = ANY ($1::text[]) AND usable", sample["keys"])
            except asyncpg.UndefinedTableError:
                hits = 0
            cached = round(hits / len(sample["keys"]) * per_sentence * sum(clustered.values()))
    else:
        per_sentence, topic_tokens, basis = 0.0, 0.0, "no firm large enough to cluster"
    topics = round(per_sentence * sum(clustered.values()))
    themes = themes_for(topics, run_settings)
    prompt_tokens = round(topics * topic_tokens + themes * THEME_PROMPT_TOKENS)
    completion_tokens = (topics + themes) * REPLY_TOKENS
    result = Estimate(firms=len(sizes), sentences=sum(sizes.values()), firms_to_cluster=len(clustered),
                      topics=topics, themes=themes, requests=topics + themes + 1, prompt_tokens=prompt_tokens,
                      completion_tokens=completion_tokens, cached=min(cached, topics + themes), basis=basis)
    if settings.llm_price_prompt_per_m is not None or settings.llm_price_completion_per_m is not None:
        result.cost = ((prompt_tokens * (settings.llm_price_prompt_per_m or 0.0)
                        + completion_tokens * (settings.llm_price_completion_per_m or 0.0)) / 1e6)
    return result


def middle_firms(sizes: dict[str, int]) -> list[str]:
    """The ``SAMPLE_FIRMS`` firms around the median size (ties by firm id): neither the
    largest nor the smallest stand for the corpus."""
    ordered = sorted((n, firm) for firm, n in sizes.items())
    start = max(0, len(ordered) // 2 - SAMPLE_FIRMS // 2)
    return [firm for _, firm in ordered[start:start + SAMPLE_FIRMS]]


async def _database_texts(conn: asyncpg.Connection, sizes: dict[str, int]) -> dict[str, list[str]]:
    """The sentences of the firms the sample takes (read only)."""
    wanted = middle_firms(sizes)
    rows = await conn.fetch("SELECT firm_id, text FROM sentences WHERE firm_id = ANY ($1::text[])"
                            " ORDER BY sentence_id", wanted)
    texts: dict[str, list[str]] = {}
    for r in rows:
        texts.setdefault(r["firm_id"], []).append(r["text"])
    return texts


def format_estimate(result: Estimate, settings: Settings) -> str:
    """The lines ``run --dry-run`` prints."""
    namer = "the LLM" if settings.llm_wanted else "keywords (no XAI_API_KEY: nothing is spent)"
    lines = [
        "dry run: nothing was ingested or written",
        f"  corpus: {result.firms} firms, {result.sentences} sentences; {result.firms_to_cluster} firms large "
        f"enough to cluster (at least {settings.run.min_firm_sentences} sentences)",
        f"  expected: {result.topics} topics, {result.themes} themes (every level); from {result.basis}",
        f"  names by {namer}: {result.requests} requests, about {result.prompt_tokens:,} prompt and "
        f"{result.completion_tokens:,} completion tokens (model {settings.xai_model})",
        f"  already answered by the exchange log: about {result.cached} of those requests",
    ]
    if result.cost is not None:
        lines.append(f"  expected cost: about {result.cost:,.2f} at the prices given")
    else:
        lines.append("  cost: set LLM_PRICE_PROMPT_PER_M and LLM_PRICE_COMPLETION_PER_M (price per million tokens)")
    return "\n".join(lines)

