"""Offline names a reader can tell apart: keyword options measured side by side, through
the program's own functions, on real firms and on the labelled BBC set.

    python bench/keywords.py --corpus ectsum --firms 40   # the first 40 ECTSum firms
    python bench/keywords.py --corpus edgar10k --cap 300  # the 30 firms of 10-K sections, 300 sentences each
    python bench/keywords.py --corpus bbc --groups 20     # BBC News dealt into 20 "firms"

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

Figures per way: at each theme level, the themes, the share of theme names holding a
firm-name token (any token of any firm's name or id, and its plural), the themes with a
firm-name token among their top 3 keywords, themes whose name another theme of the level
shares, keyword NPMI (top 10, co-occurrence over all the corpus's sentences, mean over
themes) and diversity (unique words among all themes' top 10). For topics: the share of
topic names holding a token of their own firm's name, and the firms' mean NPMI and
diversity (``firm_quality``). And the mean per-firm share of sentences in no topic over
the first 12 firms (a firm too small to cluster counts as all unassigned).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

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


def name_words(name: str) -> set[str]:
    return {w for part in name.split(" / ") for w in part.split()}


def firm_topics(firms, vectors_of, settings: RunSettings):
    """Cluster every firm as the firm stage does; returns the topics (rows for the theme
    stage), their texts and vectors, the firms' quality dicts and unassigned shares."""
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


def theme_levels(rows, texts, vectors, settings: RunSettings, distinct: bool) -> list[tuple[list, list]]:
    """The theme stage's levels: per level, each theme's keywords and name."""
    labels = theme_labels(vectors, theme_count(len(rows), settings), seed=settings.seed)
    words_of = theme_keyword_model(rows, texts, settings)
    levels, topic_theme = [], labels
    for parents in [None, *broader_levels(vectors, labels, settings.theme_top_level_size)]:
        if parents is not None:
            topic_theme = parents[topic_theme]
        keywords = theme_keywords(texts, vectors, topic_theme, settings.top_n_keywords, *words_of)
        names = [Label(keyword_name(k), "", "keywords") for k in keywords]
        if distinct:
            names = distinct_names(names, keywords)
        levels.append((keywords, [n.name for n in names]))
    return levels


def measure(firms, vectors_of, sentences, settings: RunSettings, distinct: bool) -> dict:
    """Every figure of one way (see the module docstring)."""
    started = time.perf_counter()
    rows, texts, vectors, qualities, unassigned = firm_topics(firms, vectors_of, settings)
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
    for level, (keywords, names) in enumerate(theme_levels(rows, texts, vectors, settings, distinct), start=1):
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
    ways = {name: WAYS[name] for name in args.ways.split(",")} if args.ways else WAYS
    results = {}
    for name, settings in ways.items():
        results[name] = measure(firms, vectors_of, sentences, settings, distinct=name != "before")
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
    parser.add_argument("--ways", default="", help="comma-separated ways (default: all)")
    parser.add_argument("--embed-only", action="store_true", help="only embed (and cache) the corpus")
    main(parser.parse_args())
