"""A run's firm stage written straight into the database, with no model: what
``bench/scale.py --sentences N`` measures the later stages and the reading commands on,
and what the tests of the query plans read.

Firms of a few hundred to a few thousand sentences (log-uniform, 200 to 4,000), one
topic per 39 sentences (the 716 ECTSum firms: 7,917 topics for 307,933 sentences),
documents of 127 sentences (ECTSum: 2,425 documents), each a quarter later than the
firm's last, and generated sentences of about ECTSum's length (147 bytes on average;
ECTSum's: 138). Of a firm's sentences 75% were clustered into a topic, 20% attached to
one by nearness and 5% are in no topic (the shares of the ECTSum run in docs/quality.md).

The vectors are 384-dimensional unit vectors with the structure of a corpus: each topic
a direction (``synthetic_topics``, also the topics of ``bench/scale.py --theme-topics``:
subjects in families), each sentence its topic's direction plus noise; a sentence in no topic is
near a random subject. Each subject has words of its own, which its topics' sentences
use and whose first ten are the topics' keywords. Topics are named offline, from their
keywords (the program's own label). Seeded: a size always gives the same run.

Rows go in with binary COPY, firm by firm, one transaction each, with explicit ids
(each identity sequence is moved past them at the end), into the program's own schema
and run record; the run is left ``firms_done``, where the theme stage starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import asyncpg
import numpy as np

from app.naming import TopicToName, topic_label_from_keywords
from app.runs import open_run, set_status
from app.schema import fix_embedding_dimension
from app.settings import RunSettings

DIMENSION = 384  # all-MiniLM-L6-v2's, the default model
SPREAD = 0.4  # a subject's spread around its family, per dimension (a family's direction: 1.0)
NOISE = 1.2  # a topic's spread around its subject, per dimension
CHUNK = 100_000  # topics made at a time, so making them needs no more memory than holding them
SMALLEST_FIRM, LARGEST_FIRM = 200, 4000
SENTENCES_PER_TOPIC = 39
SENTENCES_PER_DOCUMENT = 127
FIRST_YEAR = 2015
SHARES = {"cluster": 0.75, "nearest": 0.20, None: 0.05}  # how a sentence came to its topic
SENTENCE_NOISE = 0.06  # per dimension around its topic's direction (cosine about 0.55)
SUBJECT_WORDS = 24  # words of a subject's own; a sentence uses 6 of them, keywords are the first 10
FILLER_WORDS = 2000  # words any sentence may use
WORDS_A_SENTENCE = 18  # about 147 bytes with the sentence's number
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zi", "da", "fe", "go", "hu", "ji", "po", "ba"]


@dataclass(frozen=True)
class SyntheticRun:
    """What ``write_synthetic_run`` wrote: the run's id and its counts."""

    run_id: int
    firms: int
    sentences: int
    topics: int
    documents: int
    largest_firm: str


def firm_sizes(n_sentences: int, seed: int = 0) -> list[int]:
    """Sentences per firm, adding up to ``n_sentences``: log-uniform between
    ``SMALLEST_FIRM`` and ``LARGEST_FIRM``, the last firm what is left (a corpus smaller
    than one firm is one firm)."""
    rng = np.random.default_rng(seed)
    sizes, left = [], n_sentences
    while left > 0:
        size = int(math.exp(rng.uniform(math.log(SMALLEST_FIRM), math.log(LARGEST_FIRM))))
        sizes.append(min(size, left))
        left -= sizes[-1]
    return sizes


def synthetic_topics(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit topic vectors (float32, one a row) and each one's subject: about sqrt(n)
    subjects in about n^(1/4) families, each topic its subject's direction plus noise.
    Seeded, so a size always gives the same vectors."""
    rng = np.random.default_rng(seed)
    n_subjects = max(2, round(math.sqrt(n)))
    n_families = max(2, round(math.sqrt(n_subjects)))
    families = rng.standard_normal((n_families, DIMENSION), dtype=np.float32)
    subjects = families[rng.integers(0, n_families, n_subjects)]
    subjects += SPREAD * rng.standard_normal((n_subjects, DIMENSION), dtype=np.float32)
    subject_of = rng.integers(0, n_subjects, n)
    vectors = np.empty((n, DIMENSION), dtype=np.float32)
    for start in range(0, n, CHUNK):
        rows = slice(start, min(start + CHUNK, n))
        chunk = subjects[subject_of[rows]] + NOISE * rng.standard_normal((len(vectors[rows]), DIMENSION),
                                                                          dtype=np.float32)
        vectors[rows] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return vectors, subject_of


def word(number: int) -> str:
    """A pronounceable made-up word for each number (three syllables and more)."""
    syllables = []
    while True:
        number, digit = divmod(number, len(SYLLABLES))
        syllables.append(SYLLABLES[digit])
        if not number and len(syllables) >= 3:
            return "".join(syllables)


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1."""
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


class _Corpus:
    """The synthetic corpus, firm by firm: sizes, topic directions, words."""

    def __init__(self, n_sentences: int, seed: int):
        self.sizes = firm_sizes(n_sentences, seed)
        self.topics_of = [max(1, round(size / SENTENCES_PER_TOPIC)) for size in self.sizes]
        self.directions, self.subject_of = synthetic_topics(sum(self.topics_of), seed)
        n_subjects = int(self.subject_of.max()) + 1
        self.filler = np.array([word(FILLER_WORDS + i) for i in range(FILLER_WORDS)])
        self.subject_words = np.array([[word(FILLER_WORDS * 2 + s * SUBJECT_WORDS + i) for i in range(SUBJECT_WORDS)]
                                       for s in range(n_subjects)])
        self.rng = np.random.default_rng(seed + 1)

    def sentences(self, subjects: np.ndarray, numbers: np.ndarray) -> list[str]:
        """A sentence about each of ``subjects``: six of its words among filler, and its
        number (which keeps each text unique within its document)."""
        n = len(subjects)
        own = np.argsort(self.rng.random((n, SUBJECT_WORDS)), axis=1)[:, :6]  # six distinct words each
        words = np.concatenate([self.subject_words[subjects[:, None], own],
                                self.filler[self.rng.integers(0, FILLER_WORDS, (n, WORDS_A_SENTENCE - 6))]], axis=1)
        return [" ".join(row) + f" ({number})." for row, number in zip(words.tolist(), numbers.tolist())]


@dataclass
class _Firm:
    """One firm's rows, ready for COPY."""

    firm_id: str
    documents: list[tuple]
    sentences: list[tuple]
    topics: list[tuple]
    run_firm: tuple
    results: list[tuple]


def _firm(corpus: _Corpus, run_id: int, index: int, first_sentence: int, first_topic: int,
          first_topic_no: int) -> _Firm:
    """Firm ``index``'s rows: sentence ids from ``first_sentence``, topic ids from
    ``first_topic``, its topics the corpus's numbers ``first_topic_no`` onwards."""
    rng, size, n_topics = corpus.rng, corpus.sizes[index], corpus.topics_of[index]
    firm_id = f"F{index:05d}"
    ids = np.arange(first_sentence, first_sentence + size)
    how = rng.choice(list(SHARES), size, p=list(SHARES.values()))
    topic = rng.integers(0, n_topics, size)
    topic[: n_topics] = np.arange(min(n_topics, size))  # every topic gets a clustered sentence
    how[: n_topics] = "cluster"
    subject = corpus.subject_of[first_topic_no + topic]
    centre = corpus.directions[first_topic_no + topic]
    loose = how == None  # noqa: E711 (an element-wise comparison)
    subject[loose] = rng.integers(0, len(corpus.subject_words), int(loose.sum()))
    centre[loose] = corpus.directions[rng.integers(0, len(corpus.directions), int(loose.sum()))]
    vectors = unit(centre + SENTENCE_NOISE * rng.standard_normal(centre.shape, dtype=np.float32))
    texts = corpus.sentences(subject, ids)
    doc_of = np.arange(size) // SENTENCES_PER_DOCUMENT
    documents = [(firm_id, f"{firm_id}-{d}", f"{FIRST_YEAR + d // 4}Q{d % 4 + 1}") for d in range(int(doc_of[-1]) + 1)]
    topics = []
    for t in range(n_topics):
        members = np.flatnonzero((topic == t) & (how == "cluster"))
        keywords = corpus.subject_words[int(corpus.subject_of[first_topic_no + t])][:10]
        label = topic_label_from_keywords(TopicToName(firm_id, None, t, keywords, [texts[members[0]]],
                                                      [int(ids[members[0]])], int((topic == t).sum())))
        topics.append((first_topic + t, run_id, firm_id, t, label.name, label.summary, keywords, "keywords",
                       int(((topic == t) & ~loose).sum()), [int(i) for i in ids[members[:5]]]))
    outliers, clustered = int(loose.sum()), topic[how == "cluster"]
    quality = {"sentences": size, "topics": n_topics, "outlier_share": round(float((how != "cluster").mean()), 4),
               "nearest_share": round(float((how == "nearest").mean()), 4),
               "unassigned_share": round(outliers / size, 4),
               "largest_topic_share": round(float(np.bincount(clustered).max() / len(clustered)), 4),
               "coherence": None, "diversity": None}
    return _Firm(
        firm_id, documents,
        [(int(i), firm_id, f"{firm_id}-{d}", text) for i, d, text in zip(ids, doc_of, texts)],
        topics,
        (run_id, firm_id, "done", size, n_topics, outliers, quality),
        [(run_id, int(i), firm_id, None if h is None else first_topic + int(t), v, h)
         for i, t, h, v in zip(ids, topic, how, vectors)],
    )


async def _copy_firm(conn: asyncpg.Connection, firm: _Firm) -> None:
    """One firm's rows, in one transaction, in the order the foreign keys need."""
    async with conn.transaction():
        await conn.execute("INSERT INTO firms (firm_id, firm_name) VALUES ($1, $2)", firm.firm_id,
                           f"Firm {firm.firm_id[1:]}")
        await conn.copy_records_to_table("documents", records=firm.documents, columns=["firm_id", "doc_id", "period"])
        await conn.copy_records_to_table("sentences", records=firm.sentences,
                                         columns=["sentence_id", "firm_id", "doc_id", "text"])
        await conn.copy_records_to_table("topics", records=firm.topics, columns=[
            "topic_id", "run_id", "firm_id", "topic_no", "name", "summary", "keywords", "name_source", "n_sentences",
            "evidence_sentence_ids"])
        await conn.execute(
            "INSERT INTO run_firms (run_id, firm_id, status, n_sentences, n_topics, n_outliers, quality)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)", *firm.run_firm)
        await conn.copy_records_to_table("sentence_topics", records=firm.results, columns=[
            "run_id", "sentence_id", "firm_id", "topic_id", "embedding", "topic_assignment"])


async def write_synthetic_run(pool: asyncpg.Pool, n_sentences: int, *, run_name: str = "default",
                              seed: int = 0) -> SyntheticRun:
    """Write the firm stage of run ``run_name`` over ``n_sentences`` synthetic sentences
    into the (empty) database of ``pool``, whose schema is applied; returns what was
    written. The run is left ``firms_done``: the theme stage, the attaching of sentences
    in no topic and the indexes are the program's to do."""
    corpus = _Corpus(n_sentences, seed)
    async with pool.acquire() as conn:
        await fix_embedding_dimension(conn, DIMENSION)
        run = await open_run(conn, run_name, RunSettings(), embedding_dim=DIMENSION, backend={"clustering": "synthetic"})
        sentence_id = await conn.fetchval("SELECT coalesce(max(sentence_id), 0) + 1 FROM sentences")
        topic_id = await conn.fetchval("SELECT coalesce(max(topic_id), 0) + 1 FROM topics")
        topic_no = documents = 0
        for index, size in enumerate(corpus.sizes):
            firm = _firm(corpus, run.run_id, index, sentence_id, topic_id, topic_no)
            await _copy_firm(conn, firm)
            sentence_id, topic_id = sentence_id + size, topic_id + len(firm.topics)
            topic_no, documents = topic_no + len(firm.topics), documents + len(firm.documents)
        for table, column in (("sentences", "sentence_id"), ("topics", "topic_id")):
            await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                               f" (SELECT max({column}) FROM {table}))")
        await set_status(conn, run.run_id, "firms_done")
        await conn.execute("ANALYZE")
    largest = max(range(len(corpus.sizes)), key=corpus.sizes.__getitem__)
    return SyntheticRun(run.run_id, len(corpus.sizes), sum(corpus.sizes), topic_no, documents, f"F{largest:05d}")
