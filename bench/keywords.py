"""Offline names a reader can tell apart: keyword options measured side by side, through
the program's own functions, on real firms and on the labelled BBC set.

    python bench/keywords.py --corpus ectsum --firms 40   # the first 40 ECTSum firms
    python bench/keywords.py --corpus edgar10k --cap 300  # the 30 firms of 10-K sections, 300 sentences each
    python bench/keywords.py --corpus edgar10k --embed-only   # all 42,623: embed once first (half an hour here)
    python bench/keywords.py --corpus bbc --groups 20     # BBC News dealt into 20 "firms"
    python bench/keywords.py --ways "firm words out + phrases (now),+ KeyBERTInspired"  # named ways only

Each corpus is embedded once and cached in /tmp (``bench/clustering.py``'s cache). Each
firm of at least ``min_firm_sentences`` sentences is clustered by
``app.clustering.cluster_firm`` once per way (UMAP is seeded, so every way finds the same
clusters unless the way changes the clustering; only keywords differ), its outliers
attached by ``attach_outliers``; then the theme stage's own steps run on the topics:
topic vectors (centres of their clustered sentences), Ward's themes and broader levels
(``theme_labels``, ``broader_levels``), theme keywords (``theme_keyword_model``,
``theme_keywords``) and offline names (``keyword_name``; ``distinct_names`` for the ways
that have it). The database is not involved: the figures are the same the job makes.

Ways (each a ``RunSettings``):

  before            single words, plain c-TF-IDF, firm words kept, names may repeat,
                    firms under 60 sentences clustered by HDBSCAN on raw embeddings
  firm words out    the words of firm names and ids left out (topics and themes), and
                    at theme level the words only one firm uses; names made distinct;
                    small firms clustered on UMAP, alike clusters merged (SmallClusters)
  + reduce frequent and BERTopic's ClassTfidfTransformer(reduce_frequent_words=True)
  firm words out + phrases (now)
                    and terms of up to two words (ngram_range=(1, 2)): the defaults
  + both            reduce_frequent_words and phrases

BERTopic's representation models, each on top of the way now (firm words out + phrases),
for topics and themes alike, with the program's embedding model (``load_embedder``); run
only when named in ``--ways`` (they take minutes each here):

  + KeyBERTInspired         the 100 best c-TF-IDF terms of a cluster ranked by how close
                            their embedding is to the mean embedding of its 5 most typical
                            documents (BERTopic's defaults)
  + MMR (diversity 0.3)     MaximalMarginalRelevance: 10 of the 30 best c-TF-IDF terms,
                            chosen for closeness to the cluster's terms and unlike each other
  + KeyBERTInspired + MMR   KeyBERTInspired's 30 best, then MMR's 10 of them

They are given to the ``BERTopic`` the program's own functions build
(``representation_model=``; ``represented``), so clusters and c-TF-IDF stay the program's
and only the keyword step changes. At theme level the terms only one firm uses are left
out before MMR chooses (``theme_keywords`` leaves them out after BERTopic; MMR must not
spend its 10 on them), and KeyBERTInspired ranks 30 terms, of which ``theme_keywords``
keeps the first 10 not left out.

Figures per way: at each theme level, the themes, the share of theme names holding a
firm-name token (any token of any firm's name or id, and its plural), the themes with a
firm-name token among their top 3 keywords, themes whose name another theme of the level
shares, keyword NPMI (top 10, co-occurrence over all the corpus's sentences, mean over
themes) and diversity (unique words among all themes' top 10). For topics: the share of
topic names holding a token of their own firm's name, and the firms' mean NPMI and
diversity (``firm_quality``). And the mean per-firm share of sentences in no topic over
the first 12 firms (a firm too small to cluster counts as all unassigned), and the way's
seconds (clustering included: the same for every way that keeps the clusters).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from bertopic.representation import BaseRepresentation, KeyBERTInspired, MaximalMarginalRelevance

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.backend import CPU  # noqa: E402
from app.clustering import (  # noqa: E402
    TooFewToCluster,
    attach_outliers,
    broader_levels,
    centres,
    cluster_firm,
    theme_count,
    theme_keywords,
    theme_labels,
    warm_up,
)
from app.keywords import firm_words  # noqa: E402
from app.naming import Label, distinct_names, keyword_name  # noqa: E402
from app.quality import firm_quality, npmi_coherence, topic_diversity  # noqa: E402
from app.settings import RunSettings  # noqa: E402
from app.themes import theme_keyword_model  # noqa: E402
from clustering import cached_embeddings  # noqa: E402
from common import ECTSUM, SHARED_DATA, machine, table  # noqa: E402

EDGAR = SHARED_DATA / "firm_sentences_edgar10k.jsonl.gz"
BBC = SHARED_DATA / "topic_labels_bbc.jsonl.gz"
FIRST_FIRMS = 12  # the firms whose mean unassigned share is reported

BEFORE = RunSettings(leave_out_firm_words=False, keyword_ngrams=1, reduce_frequent_words=False,
                     small_firm_merge_similarity=None)
NOW = dataclasses.replace(BEFORE, leave_out_firm_words=True, small_firm_merge_similarity=0.75)
WAYS = {
    "before": BEFORE,
    "firm words out": NOW,
    "+ reduce frequent": dataclasses.replace(NOW, reduce_frequent_words=True),
    "firm words out + phrases (now)": dataclasses.replace(NOW, keyword_ngrams=2),
    "+ both": dataclasses.replace(NOW, reduce_frequent_words=True, keyword_ngrams=2),
}
# BERTopic's representation models on top of the way now: the steps of each (see below).
REPRESENTATIONS = {
    "+ KeyBERTInspired": ("keybert",),
    "+ MMR (diversity 0.3)": ("mmr",),
    "+ KeyBERTInspired + MMR": ("keybert", "mmr"),
}
WAYS |= {name: WAYS["firm words out + phrases (now)"] for name in REPRESENTATIONS}
RANKED = 30  # terms KeyBERTInspired keeps, and MMR's candidates: BERTopic's own c-TF-IDF floor
MMR_DIVERSITY = 0.3


@dataclasses.dataclass
class Firm:
    firm_id: str
    firm_name: str | None
    texts: list[str]


def load_firms(corpus: str, n_firms: int | None, groups: int, cap: int | None = None) -> list[Firm]:
    """The corpus's firms in file order, each cut at its first ``cap`` sentences when
    given (BBC: the articles shuffled with seed 0 and dealt into ``groups`` firms, as
    ``bench/quality.py`` deals them)."""
    if corpus == "bbc":
        rows = [json.loads(line) for line in gzip.open(BBC, "rt", encoding="utf-8")]
        random.Random(0).shuffle(rows)
        firms = [Firm(f"group{g:02d}", None, []) for g in range(groups)]
        for i, row in enumerate(rows):
            firms[i % groups].texts.append(row["text"])
        return firms
    firms: list[Firm] = []
    with gzip.open(ECTSUM if corpus == "ectsum" else EDGAR, "rt", encoding="utf-8") as src:
        for line in src:
            row = json.loads(line)
            if not firms or firms[-1].firm_id != row["firm_id"]:
                if n_firms is not None and len(firms) == n_firms:
                    break
                firms.append(Firm(row["firm_id"], row.get("firm_name"), []))
            if cap is None or len(firms[-1].texts) < cap:
                firms[-1].texts.append(row["sentence"])
    return firms


class LeaveOut(BaseRepresentation):
    """A representation step that removes the terms ``drop`` (and BERTopic's empty
    padding) from each cluster's candidate keywords, so that a later step chooses among
    the others."""

    def __init__(self, drop: frozenset[str]):
        self.drop = drop | {""}

    def extract_topics(self, topic_model, documents, c_tf_idf, topics):
        return {topic: [(w, v) for w, v in words if w not in self.drop] for topic, words in topics.items()}


class FewerMMR(BaseRepresentation):
    """BERTopic's MaximalMarginalRelevance(diversity, keep) on each cluster, choosing all
    its candidates where there are fewer than ``keep`` (BERTopic's own then fails: a theme
    whose terms are mostly left out)."""

    def __init__(self, diversity: float, keep: int):
        self.diversity, self.keep = diversity, keep

    def extract_topics(self, topic_model, documents, c_tf_idf, topics):
        return {topic: MaximalMarginalRelevance(self.diversity, min(self.keep, len(words))).extract_topics(
                    topic_model, documents, c_tf_idf, {topic: words})[topic] if words else []
                for topic, words in topics.items()}


def representation(steps: tuple[str, ...], drop: frozenset[str], keep: int) -> list:
    """BERTopic's representation models for ``steps`` (``REPRESENTATIONS``), as the list
    BERTopic chains. ``drop``: terms no cluster may take (the theme stage's); ``keep``: the
    keywords wanted, MMR's number. A list, also for KeyBERTInspired alone: BERTopic 0.17.4
    gives a lone KeyBERTInspired the documents' embeddings but picks rows by position in
    its list of representative documents, not by document, so the typical documents' own
    embeddings are only right in a list, where it embeds them itself."""
    chain: list = []
    if "keybert" in steps:
        chain.append(KeyBERTInspired(top_n_words=RANKED))
    if "mmr" in steps:
        chain += [LeaveOut(drop), FewerMMR(MMR_DIVERSITY, keep)]
    return chain


@contextlib.contextmanager
def represented(steps: tuple[str, ...], embedding_model, drop: frozenset[str] = frozenset(), keep: int = 10):
    """While open, every ``BERTopic`` the program's functions build (``cluster_documents``,
    ``theme_keywords``: they import the class when called) gets ``steps``' representation
    models and ``embedding_model`` (a SentenceTransformer). Without steps, nothing changes."""
    if not steps:
        yield
        return
    import bertopic

    plain = bertopic.BERTopic
    bertopic.BERTopic = lambda **kwargs: plain(embedding_model=embedding_model,
                                               representation_model=representation(steps, drop, keep), **kwargs)
    try:
        yield
    finally:
        bertopic.BERTopic = plain


def name_words(name: str) -> set[str]:
    return {w for part in name.split(" / ") for w in part.split()}


def firm_topics(firms, vectors_of, settings: RunSettings, represent=contextlib.nullcontext):
    """Cluster every firm as the firm stage does (inside ``represent()``: ``represented``);
    returns the topics (rows for the theme stage), their texts and vectors, the firms'
    quality dicts and unassigned shares."""
    with represent():
        return _firm_topics(firms, vectors_of, settings)


def _firm_topics(firms, vectors_of, settings: RunSettings):
    rows, texts, vectors, qualities, unassigned = [], [], [], [], []
    for firm, embeddings in zip(firms, vectors_of):
        if len(firm.texts) < settings.min_firm_sentences:
            unassigned.append(1.0)
            continue
        try:
            clustering = cluster_firm(firm.texts, embeddings, settings, CPU, names=(firm.firm_id, firm.firm_name))
        except TooFewToCluster:
            unassigned.append(1.0)
            continue
        final = attach_outliers(embeddings, clustering.labels, settings.outlier_threshold)
        unassigned.append(float((final == -1).mean()))
        qualities.append(firm_quality(clustering.labels, final, [c.keywords for c in clustering.clusters],
                                      firm.texts))
        for cluster in clustering.clusters:
            evidence = " ".join(firm.texts[i] for i in sorted(cluster.representatives))
            rows.append({"firm_id": firm.firm_id, "firm_name": firm.firm_name, "keywords": cluster.keywords,
                         "name": keyword_name(cluster.keywords)})
            texts.append(" ".join(cluster.keywords) + ". " + evidence)
        if clustering.clusters:
            vectors.append(centres(embeddings, clustering.labels, len(clustering.clusters)))
    return rows, texts, np.vstack(vectors).astype(np.float32), qualities, unassigned


def theme_levels(rows, texts, vectors, settings: RunSettings, distinct: bool,
                 represent=lambda drop: contextlib.nullcontext()) -> list[tuple[list, list]]:
    """The theme stage's levels: per level, each theme's keywords and name (made inside
    ``represent(drop)``, given the terms no theme takes)."""
    labels = theme_labels(vectors, theme_count(len(rows), settings), seed=settings.seed)
    words_of = theme_keyword_model(rows, texts, settings)
    levels, topic_theme = [], labels
    for parents in [None, *broader_levels(vectors, labels, settings.theme_top_level_size)]:
        if parents is not None:
            topic_theme = parents[topic_theme]
        with represent(words_of[1]):
            keywords = theme_keywords(texts, vectors, topic_theme, settings.top_n_keywords, *words_of)
        names = [Label(keyword_name(k), "", "keywords") for k in keywords]
        if distinct:
            names = distinct_names(names, keywords)
        levels.append((keywords, [n.name for n in names]))
    return levels


def measure(firms, vectors_of, sentences, settings: RunSettings, distinct: bool, steps: tuple[str, ...] = (),
            embedding_model=None) -> dict:
    """Every figure of one way (see the module docstring); ``steps``: its representation
    models (``REPRESENTATIONS``), run with ``embedding_model``."""
    started = time.perf_counter()
    rows, texts, vectors, qualities, unassigned = firm_topics(
        firms, vectors_of, settings, lambda: represented(steps, embedding_model, keep=settings.top_n_keywords))
    tokens = firm_words(n for f in firms for n in (f.firm_id, f.firm_name))
    own = [firm_words((r["firm_id"], r["firm_name"])) for r in rows]
    figures = {
        "topics": len(rows),
        "topic names with their firm's name": sum(1 for r, o in zip(rows, own) if name_words(r["name"]) & o) / len(rows),
        "topic NPMI (mean over firms)": np.nanmean([q["coherence"] for q in qualities if q["coherence"] is not None]),
        "topic diversity (mean over firms)": np.nanmean([q["diversity"] for q in qualities
                                                          if q["diversity"] is not None]),
        f"first {FIRST_FIRMS} firms: mean share in no topic": float(np.mean(unassigned[:FIRST_FIRMS])),
        "firms with no topic (of those clustered)": sum(1 for q in qualities if not q["topics"]),
    }
    levels = theme_levels(rows, texts, vectors, settings, distinct,
                          lambda drop: represented(steps, embedding_model, drop, settings.top_n_keywords))
    for level, (keywords, names) in enumerate(levels, start=1):
        counts = Counter(names)
        figures[f"L{level} themes"] = len(names)
        figures[f"L{level} names with a firm-name token"] = sum(1 for n in names if name_words(n) & tokens) / len(names)
        figures[f"L{level} themes with a firm-name token in top 3"] = sum(
            1 for k in keywords if {w for term in k[:3] for w in term.split()} & tokens)
        figures[f"L{level} themes sharing a name"] = sum(1 for n in names if counts[n] > 1)
        figures[f"L{level} keyword NPMI"] = float(np.nanmean(npmi_coherence(keywords, sentences)))
        figures[f"L{level} keyword diversity"] = topic_diversity(keywords)
        figures[f"L{level} examples"] = "; ".join(names[:4])
    figures["seconds"] = time.perf_counter() - started
    return figures


def main(args) -> None:
    firms = load_firms(args.corpus, args.firms if args.corpus == "ectsum" else None, args.groups, args.cap)
    sentences = [t for f in firms for t in f.texts]
    source = {"ectsum": f"ectsum-first{args.firms}", "edgar10k": f"edgar10k-cap{args.cap}", "bbc": "bbc-texts"}[args.corpus]
    embeddings = cached_embeddings(sentences, RunSettings().embedding_model, source=source)
    bounds = np.cumsum([0] + [len(f.texts) for f in firms])
    vectors_of = [embeddings[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    print(f"corpus: {args.corpus}{f' (at most {args.cap} sentences a firm)' if args.cap else ''}, {len(firms)} firms, {len(sentences)} sentences; {machine()}", flush=True)
    if args.embed_only:
        return
    # The representation models take minutes each on these CPUs: only when named.
    ways = ({name: WAYS[name] for name in args.ways.split(",")} if args.ways
            else {name: way for name, way in WAYS.items() if name not in REPRESENTATIONS})
    embedding_model = None
    if set(ways) & set(REPRESENTATIONS):
        from app.embedding import load_embedder

        embedding_model = load_embedder(RunSettings().embedding_model).model
    # UMAP's one-off compilation, paid before any way is timed (as the job pays it first).
    warm_up(CPU, RunSettings(), largest_firm=max(len(f.texts) for f in firms))
    results = {}
    for name, settings in ways.items():
        results[name] = measure(firms, vectors_of, sentences, settings, distinct=name != "before",
                                steps=REPRESENTATIONS.get(name, ()), embedding_model=embedding_model)
        print(f"  {name}: {results[name]['seconds']:.0f} s", flush=True)
    keys = list(dict.fromkeys(k for r in results.values() for k in r))

    def cell(value):
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value)

    print()
    print(table(["figure", *results], [[key, *[cell(r.get(key, "")) for r in results.values()]] for key in keys]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=("ectsum", "edgar10k", "bbc"), default="ectsum")
    parser.add_argument("--firms", type=int, default=40, help="ECTSum: the first N firms")
    parser.add_argument("--cap", type=int, default=None,
                        help="at most this many sentences a firm (its first ones), to embed less")
    parser.add_argument("--groups", type=int, default=20, help="BBC: how many groups (firms) to deal into")
    parser.add_argument("--ways", default="", help="comma-separated ways (default: all but the representation "
                        "models, which are named: " + ", ".join(REPRESENTATIONS) + ")")
    parser.add_argument("--embed-only", action="store_true", help="only embed (and cache) the corpus")
    main(parser.parse_args())
