"""Quality figures for a clustering result, so every run carries its own measure of itself.

A topic model always returns *something*; whether it is any good has to be measured. This
module turns what a run already has (labels per sentence, keywords per topic, the
sentences) into a few plain numbers:

* per firm: how many sentences HDBSCAN left out, how many were attached afterwards by
  nearness, whether one topic swallows the firm (a "catch-all"), and how coherent
  (NPMI) and how distinct (diversity) the topics' keywords are;
* per run: the same, aggregated over firms, plus how the cross-firm themes are sized;
* against known labels (a labelled news set, say): NMI, ARI and purity, so a change of
  settings can be judged on data where the right answer is known.

Everything here is a pure function of numpy arrays and lists (numpy and scikit-learn only,
no database, no network), and the dicts returned hold plain Python numbers and ``None``
(never NaN), so they can be stored as JSON as they are.
"""

from __future__ import annotations

import math
from typing import Callable, Hashable, Iterable

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

CATCH_ALL_SHARE = 0.5  # a firm whose largest topic holds more than this is flagged
WORST_FIRMS = 10  # how many firms "to look at" a run reports
DECIMALS = 4


def tokenizer() -> Callable[[str], list[str]]:
    """The tokenisation the topic keywords come from (BERTopic's c-TF-IDF vectorizer).

    Takes nothing; returns a callable ``str -> list[str]`` (lower-cased, English stop
    words removed; single words and two-word phrases, as keywords may be either).
    Coherence must count words the same way the keywords were made, or a keyword could
    look absent from sentences that contain it.
    """
    return CountVectorizer(stop_words="english", ngram_range=(1, 2)).build_analyzer()


def npmi_coherence(topic_keywords: list[list[str]], docs: list[str], top_n: int = 10) -> list[float]:
    """Per topic, the mean NPMI over all pairs of its first ``top_n`` keywords.

    Takes the keywords of each topic (best first) and the documents to count
    co-occurrence in; returns one float per topic, in [-1, 1], NaN for a topic with fewer
    than two keywords (or when there are no documents). NPMI is the usual automatic
    stand-in for "do these words belong together": 1 when two words always appear
    together, 0 when independent, -1 when they never meet.

    Probabilities are document frequencies with binary presence. Each keyword is taken as
    one term, compared against the terms ``tokenizer()`` yields for a document; a
    keyword it never yields (a phrase of three words, say) is absent from every document,
    so its pairs count -1.
    """
    tops = [list(words[:top_n]) for words in topic_keywords]
    n_docs = len(docs)
    vocab: dict[str, int] = {}
    for words in tops:
        for word in words:
            vocab.setdefault(word, len(vocab))
    if n_docs == 0 or not vocab:
        return [math.nan for _ in tops]

    # A sparse binary document-term matrix over the keywords only: X.T @ X then gives the
    # co-occurrence counts of every keyword pair in one product, fast for 10,000 sentences.
    vectorizer = CountVectorizer(analyzer=tokenizer(), vocabulary=vocab, binary=True)
    X = vectorizer.fit_transform(docs).astype(np.int64)
    together = (X.T @ X).toarray()
    alone = np.diag(together)

    p_ij = together / n_docs
    p_i = alone / n_docs
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(p_ij / np.outer(p_i, p_i))
        npmi = pmi / -np.log(p_ij)
    # The two limits the formula cannot reach by itself: never together (log 0) is -1,
    # together in every document (0 / 0, since log 1 = 0) is 1.
    npmi[together == 0] = -1.0
    npmi[together == n_docs] = 1.0

    scores = []
    for words in tops:
        if len(words) < 2:
            scores.append(math.nan)
            continue
        index = np.array([vocab[word] for word in words])
        upper = np.triu_indices(len(index), k=1)  # each unordered pair once
        scores.append(float(npmi[index[upper[0]], index[upper[1]]].mean()))
    return scores


def topic_diversity(topic_keywords: list[list[str]], top_n: int = 10) -> float:
    """The share of unique words among all topics' first ``top_n`` keywords.

    Takes the keywords of each topic; returns a float in (0, 1], 1.0 when no word is
    shared between topics, NaN when there are no words. Low diversity means topics that
    repeat each other, which coherence alone does not catch.
    """
    words = [word for keywords in topic_keywords for word in keywords[:top_n]]
    if not words:
        return math.nan
    return len(set(words)) / len(words)


def firm_quality(cluster_labels, final_labels, topic_keywords: list[list[str]], docs: list[str]) -> dict:
    """Quality figures for one firm's clustering.

    Takes the label per sentence from clustering (``cluster_labels``, -1 = outlier), the
    label after outliers were attached to their nearest topic (``final_labels``, still -1
    where not attached), the keywords of topics 0..k-1 and the sentences. Returns a
    JSON-ready dict: ``sentences``, ``topics``, ``outlier_share``, ``nearest_share``,
    ``unassigned_share``, ``largest_topic_share``, ``coherence`` and ``diversity``
    (``None`` when there is no topic). Shares of an empty firm are 0.0.
    """
    clustered = np.asarray(cluster_labels, dtype=np.int64).ravel()
    final = np.asarray(final_labels, dtype=np.int64).ravel()
    if clustered.shape != final.shape:
        raise ValueError(f"{clustered.size} cluster labels but {final.size} final labels")
    n = int(clustered.size)

    def share(mask: np.ndarray) -> float:
        return _round(mask.sum() / n) if n else 0.0

    in_topic = clustered[clustered >= 0]
    # The share of the *clustered* sentences: a topic holding most of what HDBSCAN could
    # place is a catch-all, however many outliers there were besides.
    largest = _round(np.bincount(in_topic).max() / in_topic.size) if in_topic.size else 0.0

    has_topics = bool(topic_keywords)
    coherence = _nanmean(npmi_coherence(topic_keywords, docs)) if has_topics else None
    diversity = topic_diversity(topic_keywords) if has_topics else None
    return {
        "sentences": n,
        "topics": int(np.unique(final[final >= 0]).size),
        "outlier_share": share(clustered == -1),
        "nearest_share": share((clustered == -1) & (final >= 0)),
        "unassigned_share": share(final == -1),
        "largest_topic_share": largest,
        "coherence": _round(coherence),
        "diversity": _round(diversity),
    }


def run_quality(firms: list[dict], theme_sizes: list[int], linked_by_cluster: int, n_topics: int,
                sentences_by_theme: dict[str, int] | None = None) -> dict:
    """Quality figures for a whole run, from its firms' ``firm_quality`` dicts.

    Takes the firms' dicts (each may carry ``"firm_id"``), the number of firm topics in
    each cross-firm theme, how many topics the theme clustering linked to a theme, and
    the number of firm topics. Returns a JSON-ready dict with ``"firms"``
    (means over firms; sentence shares weighted by each firm's sentences, so a small firm
    does not count as much as a large one; ``firms_sampled``, the firms whose dict carries
    the ``"sample"`` they were clustered on), ``"themes"`` and ``"worst_firms"`` (the firms
    whose largest topic is largest, so a researcher knows where to look first).

    ``sentences_by_theme`` counts the run's sentences by how they reach a theme:
    ``{"sentences": all, "topic": through their topic, "nearest": attached to the nearest
    theme}``; the themes' figures then carry the shares attached and in no theme.
    """
    n_firms = len(firms)
    sentences = sum(firm.get("sentences", 0) for firm in firms)

    def weighted(key: str) -> float | None:
        if not sentences:
            return None
        return _round(sum(firm.get(key, 0.0) * firm.get("sentences", 0) for firm in firms) / sentences)

    def mean_of(key: str) -> float | None:
        values = [firm[key] for firm in firms if firm.get(key) is not None]
        return _round(float(np.mean(values))) if values else None

    largest = [firm.get("largest_topic_share") or 0.0 for firm in firms]
    firm_figures = {
        "firms": n_firms,
        "mean_topics": mean_of("topics"),
        "mean_largest_topic_share": mean_of("largest_topic_share"),
        "firms_with_catch_all": sum(1 for value in largest if value > CATCH_ALL_SHARE),
        "catch_all_share_threshold": CATCH_ALL_SHARE,
        # Firms above FIRMTOPICS_MAX_FIRM_SENTENCES, clustered on a sample (their "sample").
        "firms_sampled": sum(1 for firm in firms if firm.get("sample")),
        "outlier_share": weighted("outlier_share"),
        "nearest_share": weighted("nearest_share"),
        "unassigned_share": weighted("unassigned_share"),
        "mean_coherence": mean_of("coherence"),
        "mean_diversity": mean_of("diversity"),
    }

    sizes = [int(size) for size in theme_sizes]
    theme_figures = {
        "themes": len(sizes),
        "topics": int(n_topics),
        "largest_theme_share": _round(max(sizes) / n_topics) if sizes and n_topics > 0 else None,
        "theme_sizes": (
            {"min": min(sizes), "median": _round(float(np.median(sizes))), "max": max(sizes)} if sizes else None
        ),
        "linked_by_cluster": int(linked_by_cluster),
        "unlinked": int(n_topics - linked_by_cluster),
    }
    if sentences_by_theme and sentences_by_theme.get("sentences"):
        total = sentences_by_theme["sentences"]
        attached = sentences_by_theme.get("nearest", 0)
        theme_figures["sentences_attached_share"] = _round(attached / total)
        theme_figures["sentences_in_no_theme_share"] = _round(
            (total - sentences_by_theme.get("topic", 0) - attached) / total)

    # sorted() is stable: firms with equal shares keep the order they were given in.
    named = [firm for firm in firms if firm.get("firm_id") is not None]
    named = sorted(named, key=lambda firm: firm.get("largest_topic_share") or 0.0, reverse=True)
    worst = [
        {
            "firm_id": firm["firm_id"],
            "largest_topic_share": firm.get("largest_topic_share"),
            "unassigned_share": firm.get("unassigned_share"),
            "topics": firm.get("topics"),
        }
        for firm in named[:WORST_FIRMS]
    ]
    return {"firms": firm_figures, "themes": theme_figures, "worst_firms": worst}


def label_scores(predicted: Iterable[Hashable], truth: Iterable[Hashable]) -> dict:
    """Agreement of a clustering with known labels.

    Takes a label per item from clustering and the true label per item (any hashables:
    strings, ints). An unassigned item (-1 or ``None``) is *not* dropped: all such items
    form one cluster of their own, so leaving items out is penalised like any wrong
    grouping. Returns ``nmi``, ``ari``, ``purity``, ``inverse_purity`` and
    ``harmonic_purity`` (as TopicGPT, Pham et al. 2024, reports them), plus
    ``n_clusters``, ``n_classes`` and ``n``; the scores are ``None`` for no items.

    Purity rewards clusters that each hold one class (many small clusters score well);
    inverse purity rewards classes that each stay in one cluster (one big cluster scores
    well); their harmonic mean needs both.
    """
    predicted, truth = list(predicted), list(truth)
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predicted labels but {len(truth)} true labels")
    # Plain integer codes: sklearn cannot sort a mix such as None and strings.
    clusters, classes = _codes(predicted), _codes(truth)
    n = len(predicted)
    scores = {
        "nmi": None,
        "ari": None,
        "purity": None,
        "inverse_purity": None,
        "harmonic_purity": None,
        "n_clusters": len(set(clusters.tolist())),
        "n_classes": len(set(classes.tolist())),
        "n": n,
    }
    if n == 0:
        return scores

    table = contingency_matrix(classes, clusters)  # rows: classes, columns: clusters
    purity = table.max(axis=0).sum() / n
    inverse = table.max(axis=1).sum() / n
    scores.update(nmi=_round(normalized_mutual_info_score(classes, clusters)),
                  ari=_round(adjusted_rand_score(classes, clusters)), purity=_round(purity),
                  inverse_purity=_round(inverse), harmonic_purity=_round(2 * purity * inverse / (purity + inverse)))
    return scores


def _round(value) -> float | None:
    """A plain Python float rounded to ``DECIMALS``; ``None`` for None or NaN (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else round(value, DECIMALS)


def _nanmean(values: list[float]) -> float | None:
    """The mean of the values that are not NaN; ``None`` when there are none."""
    kept = [value for value in values if not math.isnan(value)]
    return float(np.mean(kept)) if kept else None


def _codes(labels: list[Hashable]) -> np.ndarray:
    """Integer codes for arbitrary hashable labels, in order of first appearance."""
    seen: dict[Hashable, int] = {}
    return np.array([seen.setdefault(label, len(seen)) for label in labels], dtype=np.int64)
