"""Writing one firm's results: one transaction per firm, so a firm is in the database
whole or not at all.

The firm's ``run_firms`` row is inserted first, inside the same transaction: its
primary key (run, firm) makes a second write of the same firm fail instead of
duplicating rows, and its presence is what "done" means when a run resumes. Sentence
results go in with a binary COPY (the fastest way into PostgreSQL), into a table
without vector indexes (they are built once at the end of the run).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
import numpy as np

from app.database import with_connection_retry
from app.exchanges import UNSTORABLE, forget_replies
from app.naming import Label


class AlreadyWritten(RuntimeError):
    """The firm is already recorded for this run; nothing was written again."""


@dataclass
class TopicResult:
    """One named firm topic, ready to store."""

    topic_no: int
    keywords: list[str]
    label: Label
    n_sentences: int
    evidence_sentence_ids: list[int]


@dataclass
class FirmResult:
    """Everything the writer stores for one firm of a run."""

    firm_id: str
    firm_name: str | None
    status: str  # done | skipped | failed
    reason: str | None = None
    sentence_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    embeddings: np.ndarray | None = None  # (n, dim) float32, or None when not embedded
    labels: np.ndarray | None = None  # BERTopic topic number per sentence, -1 = outlier
    nearest: np.ndarray | None = None  # per sentence: True where attached to its topic by nearness
    quality: dict | None = None  # app.quality.firm_quality of a clustered firm
    topics: list[TopicResult] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    @property
    def n_sentences(self) -> int:
        return len(self.sentence_ids)

    @property
    def n_outliers(self) -> int:
        return 0 if self.labels is None else int((self.labels == -1).sum())


async def write_firm(conn: asyncpg.Connection, run_id: int, result: FirmResult) -> None:
    """Store ``result`` in one transaction: the firm's state, its topics, and each
    sentence's embedding and topic. Raises ``AlreadyWritten`` (and writes nothing) when
    the firm is already recorded for the run. A name the database refuses (a character no
    cleaning foresaw) makes the LLM replies behind the firm's names unusable in the
    exchange log, and is raised: a resume asks again instead of failing the same way."""
    try:
        await _write_firm(conn, run_id, result)
    except UNSTORABLE:
        await forget_replies(conn, [t.label.request_key for t in result.topics])
        raise


async def _write_firm(conn: asyncpg.Connection, run_id: int, result: FirmResult) -> None:
    async with conn.transaction():
        try:
            await conn.execute(
                "INSERT INTO run_firms (run_id, firm_id, status, reason, n_sentences, n_topics, n_outliers, seconds,"
                " quality, last_sentence_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10)",
                run_id,
                result.firm_id,
                result.status,
                result.reason,
                result.n_sentences,
                len(result.topics),
                result.n_outliers,
                {k: round(v, 3) for k, v in result.seconds.items()},
                result.quality,
                int(result.sentence_ids.max()) if result.n_sentences else None,
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyWritten(f"firm {result.firm_id!r} is already recorded for run {run_id}") from None
        topic_ids = await insert_topics(conn, run_id, result)
        if result.embeddings is not None and result.n_sentences:
            await copy_sentence_topics(conn, run_id, result, topic_ids)


async def insert_topics(conn: asyncpg.Connection, run_id: int, result: FirmResult) -> dict[int, int]:
    """Insert the firm's topics of run ``run_id`` in one statement; returns {BERTopic
    number: topic_id}. ``write_firm`` calls it inside the firm's transaction; the writer
    benchmark (``bench/writer.py``) calls it alone, to give its COPYs topics to point at."""
    if not result.topics:
        return {}
    rows = await conn.fetch(
        "INSERT INTO topics (run_id, firm_id, topic_no, name, summary, keywords, name_source, n_sentences,"
        " evidence_sentence_ids, name_request)"
        " SELECT $1, $2, t.topic_no, t.name, t.summary, t.keywords::text[], t.source, t.n, t.evidence::bigint[],"
        " t.request"
        " FROM jsonb_to_recordset($3::jsonb)"
        "   AS t(topic_no int, name text, summary text, keywords text, source text, n int, evidence text,"
        "        request text)"
        " RETURNING topic_no, topic_id",
        run_id,
        result.firm_id,
        [
            {
                "topic_no": t.topic_no,
                "name": t.label.name,
                "summary": t.label.summary,
                "keywords": "{" + ",".join(_pg_array_item(k) for k in t.keywords) + "}",
                "source": t.label.source,
                "n": t.n_sentences,
                "evidence": "{" + ",".join(str(int(i)) for i in t.evidence_sentence_ids) + "}",
                "request": t.label.request_key,
            }
            for t in result.topics
        ],
    )
    return {r["topic_no"]: r["topic_id"] for r in rows}


def _pg_array_item(text: str) -> str:
    """One element of a PostgreSQL array literal, quoted and escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def copy_sentence_topics(
    conn: asyncpg.Connection, run_id: int, result: FirmResult, topic_ids: dict[int, int]
) -> None:
    """Store each sentence of ``result`` with its embedding and its topic (``topic_ids``:
    {topic number: topic_id}; label -1 is no topic), by COPY. ``write_firm`` calls it for a
    whole firm, ``app.update`` for a known firm's new sentences."""
    labels = result.labels if result.labels is not None else np.full(result.n_sentences, -1)
    nearest = result.nearest if result.nearest is not None else np.zeros(result.n_sentences, dtype=bool)
    records = (
        (run_id, int(sid), result.firm_id, topic_ids.get(int(label)), vector,
         None if label < 0 else ("nearest" if near else "cluster"))
        for sid, label, near, vector in zip(result.sentence_ids, labels, nearest, result.embeddings)
    )
    await conn.copy_records_to_table(
        "sentence_topics",
        records=records,
        columns=["run_id", "sentence_id", "firm_id", "topic_id", "embedding", "topic_assignment"],
    )


async def write_firm_with_retry(
    pool: asyncpg.Pool, run_id: int, result: FirmResult, *, window_s: float | None = None, base_delay: float = 0.5
) -> bool:
    """``write_firm`` on a pooled connection, retried on connection failures. Returns True
    when this call stored the firm, False when the run had it recorded before this call
    (then nothing is written).

    A dropped connection rolls the firm's transaction back, so retrying writes it whole
    exactly once. When the retry window (``DB_RETRY_WINDOW_S``) runs out the last error
    is raised (the run then ends, resumable). ``AlreadyWritten`` on a retry means the commit did reach the
    database before the connection broke: the firm is stored, so that counts as this
    call's write. On the first try it means another worker wrote the firm: with several
    workers (``app.claims``) that happens only when this worker's claims connection was
    lost (a failover) and another worker took the firm meanwhile. Its copy stands.
    """
    tries = 0

    async def write(conn: asyncpg.Connection) -> bool:
        nonlocal tries
        tries += 1
        try:
            await write_firm(conn, run_id, result)
        except AlreadyWritten:
            return tries > 1
        return True

    return await with_connection_retry(pool, write, what=f"write firm {result.firm_id}", window_s=window_s,
                                       base_delay=base_delay)
