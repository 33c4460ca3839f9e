"""Clustering with BERTopic on precomputed embeddings: firm topics and cross-firm themes.

Firm topics: BERTopic is given the embeddings we computed (the model is loaded once per process), a
UMAP and an HDBSCAN from the chosen backend (cuML on a GPU, CPU packages otherwise),
and an English-stop-word vectorizer for its c-TF-IDF keywords. What comes back is plain
data: a label per document (-1 for an outlier) and, per cluster, its keywords and the
indices of its most representative documents (closest to the cluster's centre in
embedding space; these are shown to the namer and stored as evidence).

Outliers: a sentence HDBSCAN left out joins the topic whose centre is nearest when it is
close enough (``attach_outliers``); the rest stay outliers.

Giant firms: a firm of more than ``max_firm_sentences`` sentences is clustered on a
seeded sample of that many (``firm_sample``), since UMAP's and HDBSCAN's memory grows
with what they cluster; its other sentences are placed as outliers are.

Themes: the firm topics of a run are grouped by Ward's agglomerative clustering of their
vectors into a number of themes fixed by the number of topics (``theme_count``), and
BERTopic's c-TF-IDF gives each theme its keywords (``theme_keywords``). Ward, not UMAP +
HDBSCAN, because the number of themes must follow the corpus smoothly: HDBSCAN over a few
dozen topics either finds no cluster or one big one, and which of the two can turn on a
rounding difference between machines. Ward on the vectors themselves has no random step,
assigns every topic, and its tree cut at a fixed count cannot come out empty.

All of this is blocking CPU/GPU work: the pipeline runs it in a worker thread.
"""

from __future__ import annotations

import math
import time
import warnings
import zlib
from dataclasses import dataclass

import numpy as np

from app.backend import ClusteringBackend
from app.keywords import KeywordModel, firm_words
from app.logs import get_logger
from app.settings import RunSettings

log = get_logger("clustering")

REPRESENTATIVES = 8  # sentences per topic shown to the namer and stored as evidence
UMAP_MIN_DOCS = 60  # below this many documents, a firm is small (see cluster_documents, SmallClusters)
# umap-learn finds exact neighbours below this many points, approximate ones (NN-descent)
# above; below it we hand it the same exact neighbours, computed faster (see exact_neighbours).
UMAP_EXACT_BELOW = 4096
ATTACH_BLOCK = 65_536  # outliers compared with the topic centres at once (attach_outliers)


class TooFewToCluster(ValueError):
    """Fewer documents than clustering can handle; the firm is skipped with this reason."""


@dataclass(frozen=True)
class Cluster:
    """One cluster found by BERTopic."""

    number: int  # BERTopic's topic number (0, 1, ...)
    keywords: list[str]
    members: np.ndarray  # indices into the input documents
    representatives: list[int]  # indices, most central first


@dataclass(frozen=True)
class Clustering:
    """The result of clustering one set of documents."""

    labels: np.ndarray  # one per document; -1 = outlier
    clusters: list[Cluster]

    @property
    def n_outliers(self) -> int:
        return int((self.labels == -1).sum())


def cluster_documents(docs: list[str], embeddings: np.ndarray, *, backend: ClusteringBackend, n_neighbors: int,
                      n_components: int, min_dist: float, min_cluster_size: int, seed: int, top_n_keywords: int = 10,
                      min_samples: int | None = None, cluster_selection: str = "leaf",
                      n_epochs: int | None = None, keywords: KeywordModel | None = None,
                      small_merge_similarity: float | None = None) -> Clustering:
    """Cluster ``docs`` (with their L2-normalised ``embeddings``) with BERTopic.

    UMAP's neighbourhood is capped below the number of documents, so small inputs work;
    fewer than ``min_cluster_size * 2`` documents raise ``TooFewToCluster``. Below
    ``UMAP_MIN_DOCS`` documents, ``small_merge_similarity`` says how (``SmallClusters``);
    None clusters them as before it existed, by HDBSCAN on the embeddings themselves. ``keywords``
    says how keywords are made (``app.keywords``; English stop words, single words when None).
    Returns a ``Clustering``; when HDBSCAN finds no cluster every label is -1 and
    ``clusters`` is empty (a legitimate result, not an error).
    """
    from bertopic import BERTopic

    keywords = keywords or KeywordModel()
    n = len(docs)
    if n < max(min_cluster_size * 2, 4):
        raise TooFewToCluster(f"{n} documents, fewer than {max(min_cluster_size * 2, 4)} needed to cluster")
    hdbscan_model = backend.make_hdbscan(min_cluster_size=min_cluster_size, min_samples=min_samples,
                                         cluster_selection=cluster_selection)
    if n < UMAP_MIN_DOCS and small_merge_similarity is None:
        # HDBSCAN on the unit-length embeddings themselves, where Euclidean distance
        # orders pairs exactly as cosine distance does (the earlier way: in 384
        # dimensions it finds no cluster in most real firms of a few dozen sentences).
        from bertopic.dimensionality import BaseDimensionalityReduction

        umap_model = BaseDimensionalityReduction()
    else:
        umap_model = backend.make_umap(n_neighbors=min(n_neighbors, n - 1), n_components=min(n_components, n - 2),
                                       min_dist=min_dist, random_state=seed, n_epochs=n_epochs)
        if backend.name == "cpu" and n < UMAP_EXACT_BELOW:
            # umap-learn would compute all pairwise distances itself, calling its metric
            # from Python for every pair: most of the clustering time of a firm of a few
            # thousand sentences. The same neighbours come from one matrix product.
            umap_model.set_params(precomputed_knn=exact_neighbours(embeddings, umap_model.n_neighbors))
        if n < UMAP_MIN_DOCS:
            hdbscan_model = SmallClusters(hdbscan_model, embeddings, small_merge_similarity)
    model = BERTopic(umap_model=umap_model, hdbscan_model=hdbscan_model,
                     vectorizer_model=keywords.vectorizer(), ctfidf_model=keywords.ctfidf(),
                     top_n_words=top_n_keywords, calculate_probabilities=False, verbose=False)
    with warnings.catch_warnings():
        # Given neighbours, umap-learn warns that it cannot transform new data: not needed.
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")
        labels, _ = model.fit_transform(docs, embeddings=embeddings)
    labels = np.asarray(labels, dtype=np.int64)
    clusters = []
    for number in sorted(set(labels.tolist()) - {-1}):
        members = np.flatnonzero(labels == number)
        words = model.get_topic(number) or []
        clusters.append(
            Cluster(number=number, keywords=[w for w, _ in words if w][:top_n_keywords], members=members,
                    representatives=most_central(embeddings, members, REPRESENTATIVES))
        )
    return Clustering(labels=labels, clusters=clusters)


class SmallClusters:
    """HDBSCAN for a firm of a few dozen sentences: its clusters of one subject merged.

    HDBSCAN on the raw 384-dimensional embeddings of a few dozen sentences finds no
    cluster in most real firms (distances there are all alike); on UMAP's few dimensions
    it finds the firm's subjects, but also carves a firm whose sentences are alike into
    pieces. So after HDBSCAN, the two clusters whose centres (in the embedding space)
    are most similar are merged while that similarity is at least ``merge_similarity``;
    when one cluster is left the firm has no distinct subjects and gets no topic, as
    HDBSCAN itself never makes a single cluster. BERTopic calls ``fit`` on UMAP's output
    and reads ``labels_``, as it does for HDBSCAN (docs/quality.md, "Small firms")."""

    def __init__(self, hdbscan_model, embeddings: np.ndarray, merge_similarity: float):
        self.hdbscan_model, self.embeddings, self.merge_similarity = hdbscan_model, embeddings, merge_similarity

    def fit(self, reduced: np.ndarray, y=None) -> "SmallClusters":
        self.hdbscan_model.fit(reduced)
        self.labels_ = merge_alike(self.embeddings, np.asarray(self.hdbscan_model.labels_, dtype=np.int64),
                                   self.merge_similarity)
        return self


def merge_alike(embeddings: np.ndarray, labels: np.ndarray, similarity: float) -> np.ndarray:
    """``labels`` (-1 for an outlier) with the most similar clusters merged while their
    centres' cosine similarity is at least ``similarity``, renumbered 0 .. k-1; all -1
    when one cluster is left (see ``SmallClusters``)."""
    labels = labels.copy()
    while (count := int(labels.max()) + 1) >= 2:
        centre = centres(embeddings, labels, count)
        alike = centre @ centre.T
        np.fill_diagonal(alike, -np.inf)
        a, b = np.unravel_index(int(np.argmax(alike)), alike.shape)
        if alike[a, b] < similarity:
            return labels
        a, b = min(a, b), max(a, b)
        labels[labels == b] = a
        labels[labels > b] -= 1
    return np.full_like(labels, -1)


def exact_neighbours(embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, None]:
    """Each document's ``k`` nearest documents (itself included) by cosine distance,
    nearest first, as umap-learn's ``precomputed_knn``: ``(indices, distances, None)``.

    The same neighbours and the same distances, to the last bit, as umap-learn's own
    search below 4,096 points, so UMAP's result does not change (it is chaotic: one
    distance a float32 step off gives another layout). Only faster: umap-learn calls its
    cosine function from Python for every pair of documents; here one matrix product
    picks twice as many candidates as needed, and only those pairs get umap-learn's
    arithmetic. Ties go to the lower index, as in umap-learn's stable sort. Memory grows
    with the square of the number of documents: meant for UMAP_EXACT_BELOW at most.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = len(x)
    width = min(n, 2 * k)
    candidates = np.argpartition(-(x @ x.T), width - 1, axis=1)[:, :width]
    squares = _ordered_sums(x * x)  # umap-learn's norm_x, summed as it sums them
    distances = np.empty((n, width), dtype=np.float32)
    for start in range(0, n, 256):
        rows = np.arange(start, min(start + 256, n))
        distances[rows] = _umap_cosine(x, squares, rows, candidates[rows])
    order = np.lexsort((candidates, distances), axis=1)  # by distance, then index
    candidates = np.take_along_axis(candidates, order, axis=1)
    distances = np.take_along_axis(distances, order, axis=1)
    if width < n:
        # Where the k-th nearest is as far as the farthest candidate (many copies of one
        # sentence), an equally near document may have been left out: redo against all.
        for row in np.flatnonzero(distances[:, k - 1] >= distances[:, -1] - 1e-5):
            every = _umap_cosine(x, squares, np.array([row]), np.arange(n)[None, :])[0]
            nearest = np.argsort(every, kind="stable")[:width]
            candidates[row], distances[row] = nearest, every[nearest]
    return candidates[:, :k].astype(np.int64), distances[:, :k], None


def _ordered_sums(values: np.ndarray) -> np.ndarray:
    """Sums along the last axis, in float64, one element after another (as a plain loop
    does, and unlike ``np.sum``'s pairwise order): the last bit matches umap-learn's."""
    return np.cumsum(values.astype(np.float64), axis=-1)[..., -1]


def _umap_cosine(x: np.ndarray, squares: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """umap-learn's cosine distance between ``x[rows[i]]`` and each ``x[columns[i, j]]``,
    computed as it computes it (float32 products, ordered float64 sums), as float32."""
    dots = _ordered_sums(x[rows, None, :] * x[columns])
    return (1.0 - dots / np.sqrt(squares[rows, None] * squares[columns])).astype(np.float32)


def most_central(embeddings: np.ndarray, members: np.ndarray, k: int) -> list[int]:
    """The ``k`` members closest (cosine) to the members' mean direction, closest first."""
    vectors = embeddings[members]
    centre = vectors.mean(axis=0)
    norm = np.linalg.norm(centre)
    if norm > 0:
        centre = centre / norm
    order = np.argsort(-(vectors @ centre), kind="stable")[:k]
    return [int(members[i]) for i in order]


def firm_min_cluster_size(n_sentences: int, settings: RunSettings) -> int:
    """The smallest topic, in sentences, for a firm of ``n_sentences``: a share of the firm
    (``min_topic_share``), never below ``hdbscan_min_cluster_size``.

    A fixed minimum lets a large firm shatter into hundreds of leaf clusters and gives a
    small one too few; a share keeps a firm at about a dozen to thirty topics whatever its
    size (docs/quality.md)."""
    return max(settings.hdbscan_min_cluster_size, round(n_sentences * settings.min_topic_share))


def firm_sample(n_sentences: int, settings: RunSettings, firm_id: str) -> np.ndarray | None:
    """Which of a firm's ``n_sentences`` sentences (by position, in sentence-id order) it
    is clustered on when it has more than ``settings.max_firm_sentences``: exactly that
    many positions, ascending, drawn without replacement; None for a firm within the cap.

    The draw is seeded by the run's seed and the firm's id (a CRC-32 of it: Python's own
    ``hash`` of a string changes from process to process), so a resumed run, another
    worker or a second run with the same settings clusters the same sentences."""
    if n_sentences <= settings.max_firm_sentences:
        return None
    rng = np.random.default_rng([settings.seed, zlib.crc32(firm_id.encode("utf-8"))])
    return np.sort(rng.choice(n_sentences, size=settings.max_firm_sentences, replace=False))


def cluster_firm(docs: list[str], embeddings: np.ndarray, settings: RunSettings, backend: ClusteringBackend,
                 *, sample: np.ndarray | None = None, names: tuple[str | None, ...] = ()) -> Clustering:
    """Cluster one firm's sentences into topics with the run's settings.

    ``names``: the firm's id and name, whose words its topics' keywords leave out
    (``app.keywords``).

    With ``sample`` (positions, from ``firm_sample``) only those sentences are clustered,
    and the smallest topic follows the sample's size; the result still covers every
    sentence: the others are outliers (-1), for ``attach_outliers`` to place, and members
    and representatives are positions in ``docs``."""
    if sample is not None:
        part = cluster_firm([docs[i] for i in sample], embeddings[sample], settings, backend, names=names)
        labels = np.full(len(docs), -1, dtype=np.int64)
        labels[sample] = part.labels
        return Clustering(labels=labels, clusters=[
            Cluster(number=c.number, keywords=c.keywords, members=sample[c.members],
                    representatives=[int(sample[i]) for i in c.representatives]) for c in part.clusters])
    return cluster_documents(docs, embeddings, backend=backend, n_neighbors=settings.umap_n_neighbors,
                             n_components=settings.umap_n_components, min_dist=settings.umap_min_dist,
                             n_epochs=settings.umap_n_epochs, seed=settings.seed,
                             top_n_keywords=settings.top_n_keywords,
                             keywords=KeywordModel.of(settings, firm_words(names)),
                             small_merge_similarity=settings.small_firm_merge_similarity,
                             min_cluster_size=firm_min_cluster_size(len(docs), settings),
                             min_samples=settings.hdbscan_min_samples, cluster_selection=settings.cluster_selection)


def centres(embeddings: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """The unit-length mean direction of each cluster ``0 .. n_clusters - 1`` (rows)."""
    dim = embeddings.shape[1]
    sums = np.zeros((n_clusters, dim), dtype=np.float64)
    clustered = labels >= 0
    np.add.at(sums, labels[clustered], embeddings[clustered])
    return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)


def members_by_label(labels: np.ndarray, n_clusters: int) -> list[np.ndarray]:
    """The indices of each cluster's members, ``0 .. n_clusters - 1``, each in ascending
    order: one sort for all clusters, not one pass over all labels per cluster (which at
    a thousand themes of a million topics is a billion comparisons)."""
    order = np.argsort(labels, kind="stable")
    return np.split(order, np.searchsorted(labels[order], np.arange(1, n_clusters)))


def attach_outliers(embeddings: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Each outlier (label -1) given the cluster whose centre is most similar (cosine),
    when that similarity is at least ``threshold``; other labels unchanged.

    Takes L2-normalised embeddings and HDBSCAN's labels (clusters numbered 0 .. k-1);
    returns new labels. Leaf clusters are tight, so HDBSCAN leaves a fifth to a quarter
    of a firm's sentences out, most of them plainly about one of its topics; attaching
    those keeps a researcher's sentence counts whole, and the caller marks them
    'nearest' so they can be counted with or without. Centres come from the clustered
    sentences only, so attaching does not move them. A firm clustered on a sample
    (``cluster_firm``) has its other sentences among the outliers: they are placed the same way.
    """
    final = labels.copy()
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    outliers = np.flatnonzero(labels == -1)
    if n_clusters == 0 or len(outliers) == 0:
        return final
    topic_centres = centres(embeddings, labels, n_clusters)
    # In blocks: a firm clustered on a sample may have millions of sentences to place,
    # and their vectors in float64 at once would take twice the memory of the firm's own.
    for start in range(0, len(outliers), ATTACH_BLOCK):
        block = outliers[start:start + ATTACH_BLOCK]
        similarity = embeddings[block].astype(np.float64) @ topic_centres.T
        best = np.argmax(similarity, axis=1)
        close = similarity[np.arange(len(block)), best] >= threshold
        final[block[close]] = best[close]
    return final


MIN_TOPICS = 4  # fewer topics than this make no themes: a theme of one topic groups nothing


def theme_count(n_topics: int, settings: RunSettings) -> int:
    """How many themes ``n_topics`` topics are grouped into: ``settings.theme_count`` when
    set, else the square root of the number of topics (so a theme holds about as many
    topics as there are themes: 7 themes for 50 topics, 90 for 8,000), at least 2 and at
    most half the topics (a theme of one topic groups nothing)."""
    wanted = settings.theme_count or round(math.sqrt(n_topics))
    return int(min(max(wanted, 2), max(n_topics // 2, 1)))


# Above this many topics the themes come from micro-clusters (``theme_labels``): exact Ward
# keeps every pairwise distance, so its memory and time grow with the square of the topics
# (16,000 topics: 64 s and 2.1 GB on 2 CPUs; 60,000 would need about 30 GB). Below it,
# exact Ward takes under a minute and every result stays as it was (docs/benchmarks.md).
WARD_EXACT_MAX = 20_000
# Micro-clusters of the two-stage grouping: at least this many, and at least
# MICRO_PER_THEME a theme, so each theme is built from several of them. k-means takes
# time in proportion to topics x micro-clusters, so micro-clusters that grew with the
# themes (the square root of the topics) made the stage grow as topics^1.5. Four a theme
# keeps them at 4,000 up to 1,000,000 topics, so the time grows linearly there; on the
# 7,967 real topics of the ECTSum run, 2, 4, 10 or 22 a theme agree alike with exact Ward
# (ARI 0.35 to 0.39, against 0.44 for exact Ward with a tenth of the topics left out;
# docs/benchmarks.md, section 10).
MICRO_CLUSTERS = 4_000
MICRO_PER_THEME = 4


def theme_labels(vectors: np.ndarray, n_themes: int, *, exact_max: int = WARD_EXACT_MAX,
                 seed: int = 0) -> np.ndarray:
    """Ward's agglomerative clustering of ``vectors`` (unit length, one a topic) cut at
    ``n_themes`` clusters; returns a theme number per topic, 0 .. n_themes - 1, numbered
    by the position of each theme's first topic (so the numbering follows the input order).

    Ward merges, step by step, the two groups whose union adds least variance, which
    gives themes of comparable spread rather than one catch-all; it has no random step,
    so the same vectors give the same themes. Its memory grows with the square of the
    number of topics, so above ``exact_max`` topics it runs in two stages: k-means groups
    the topics into micro-clusters (``micro_clusters``, seeded by ``seed``), Ward groups
    the micro-clusters, each weighted by its topics (``weighted_ward``), and each topic
    takes its micro-cluster's theme. Time and memory then grow about linearly."""
    if len(vectors) < 2:
        return np.zeros(len(vectors), dtype=np.int64)
    if len(vectors) <= exact_max:
        from scipy.cluster.hierarchy import fcluster, linkage

        tree = linkage(np.asarray(vectors, dtype=np.float64), method="ward")
        raw = fcluster(tree, t=n_themes, criterion="maxclust")
    else:
        micro, micro_centres = micro_clusters(vectors, n_themes, seed=seed)
        raw = weighted_ward(micro_centres, np.bincount(micro), n_themes)[micro]
    _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse].astype(np.int64)


def micro_clusters(vectors: np.ndarray, n_themes: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Group ``vectors`` into many small k-means clusters, the first of two stages.

    Takes the topic vectors and the number of themes wanted; returns each vector's
    micro-cluster (0 .. m-1) and the micro-clusters' centres (means, one a row). m is
    ``max(MICRO_CLUSTERS, MICRO_PER_THEME * n_themes)``, at most a quarter of the vectors.
    scikit-learn's MiniBatchKMeans, seeded, one initialisation from random vectors
    (k-means++ would take minutes to place thousands of centres); its time and memory
    grow linearly with the vectors. A centre left with no vector is dropped."""
    from sklearn.cluster import MiniBatchKMeans

    wanted = micro_cluster_count(len(vectors), n_themes)
    kmeans = MiniBatchKMeans(n_clusters=wanted, init="random", n_init=1, random_state=seed, batch_size=4096)
    labels = kmeans.fit_predict(vectors)
    used, micro = np.unique(labels, return_inverse=True)
    return micro.astype(np.int64), kmeans.cluster_centers_[used].astype(np.float64)


def micro_cluster_count(n_topics: int, n_themes: int) -> int:
    """How many micro-clusters ``n_topics`` topics are grouped into on the way to
    ``n_themes`` themes: ``max(MICRO_CLUSTERS, MICRO_PER_THEME * n_themes)``, at most a
    quarter of the topics (and never fewer than the themes). Constant up to 1,000,000
    topics, so that k-means' time grows with the topics alone."""
    return min(max(MICRO_CLUSTERS, MICRO_PER_THEME * n_themes), max(n_topics // 4, n_themes))


def weighted_ward(points: np.ndarray, weights: np.ndarray, n_clusters: int) -> np.ndarray:
    """Ward's clustering of ``points``, each standing for ``weights`` topics at that point,
    cut at ``n_clusters``; returns a cluster number (1 ..) a point, as scipy's fcluster.

    Unweighted Ward on micro-cluster centres gives a micro-cluster of one topic the pull
    of one of a hundred, and on data with overlapping themes agrees far less with exact
    Ward (docs/benchmarks.md). scipy's Ward takes no weights, so this is the
    nearest-neighbour chain (as scipy runs it): follow each cluster to its nearest, by
    Ward's cost (the variance a merge adds: w_a w_b / (w_a + w_b) |c_a - c_b|^2), until
    two are each other's nearest, and merge them. Time grows with the square of the
    points, memory linearly: meant for a few thousand micro-clusters."""
    from scipy.cluster.hierarchy import fcluster

    centre, weight = points.astype(np.float64), weights.astype(np.float64)
    squares, alive = (centre * centre).sum(axis=1), np.ones(len(centre), dtype=bool)
    height = np.zeros(len(centre))  # a cluster's cost, never below its parts' (rounding)
    count = np.ones(len(centre), dtype=np.int64)  # points in a cluster (scipy's tree wants it)
    merges, chain = [], []  # merges: (cost, a, b, points), b into a; chain: indices
    while len(merges) < len(centre) - 1:
        if not chain:
            chain.append(int(np.flatnonzero(alive)[0]))
        a = chain[-1]
        distance = np.maximum(squares + squares[a] - 2 * (centre @ centre[a]), 0.0)
        cost = np.where(alive, weight * weight[a] / (weight + weight[a]) * distance, np.inf)
        cost[a] = np.inf
        b = int(np.argmin(cost))
        if len(chain) > 1 and cost[chain[-2]] <= cost[b]:
            b = chain[-2]  # a tie with the one before: merge, or the chain could cycle
        if len(chain) < 2 or b != chain[-2]:
            chain.append(b)
            continue
        chain = chain[:-2]
        centre[a] = (weight[a] * centre[a] + weight[b] * centre[b]) / (weight[a] + weight[b])
        weight[a], squares[a], alive[b] = weight[a] + weight[b], centre[a] @ centre[a], False
        height[a], count[a] = max(cost[b], height[a], height[b]), count[a] + count[b]
        merges.append((float(height[a]), a, b, count[a]))
    # scipy's linkage matrix: merges by rising cost, clusters renamed as they form.
    tree, current = [], np.arange(len(centre))
    for cost, a, b, points in sorted(merges, key=lambda m: m[0]):
        tree.append([current[a], current[b], np.sqrt(2 * cost), points])
        current[a] = len(centre) + len(tree) - 1
    return fcluster(np.array(tree, dtype=np.float64), t=n_clusters, criterion="maxclust")


def broader_levels(vectors: np.ndarray, fine: np.ndarray, top_size: int) -> list[np.ndarray]:
    """The levels above the fine themes, until a level has at most ``top_size`` themes.

    Takes the topic vectors, each topic's fine theme (0 .. k-1) and the largest top level
    wanted; returns one array per level above the fine one, bottom up, mapping each theme
    of the level below to its parent (0 .. m-1). Empty when the fine level is small
    enough already: a run with few themes has a single level.

    Each level groups the centres of the themes below with Ward. While the square root
    of their number is above ``top_size``, into that square root (a level between); else
    into the top level, of about three themes below each, at most ``top_size``. So the
    tree is as deep as the corpus needs (11 fine themes: one level; 90: a top level of 20;
    thousands: three levels). Grouping the centres of a level's themes keeps every level
    a grouping of the same content the fine themes were made from.
    """
    levels = []
    labels = fine
    while (wanted := level_above(count := int(labels.max()) + 1, top_size)) is not None:
        parents = theme_labels(centres(vectors, labels, count), wanted)
        levels.append(parents)
        labels = parents[labels]
    return levels


def level_above(count: int, top_size: int) -> int | None:
    """How many themes the level above a level of ``count`` themes has (the rule
    ``broader_levels`` describes), or None when ``count`` is small enough for the top."""
    if count <= top_size:
        return None
    root = round(math.sqrt(count))
    return root if root > top_size else min(top_size, max(2, round(count / 3)))


def theme_keywords(docs: list[str], vectors: np.ndarray, labels: np.ndarray, top_n: int,
                   keywords: KeywordModel | None = None, drop: frozenset[str] = frozenset()) -> list[list[str]]:
    """Each theme's keywords, by BERTopic's c-TF-IDF over its topics' texts (one document
    a topic): the words frequent in a theme's topics and rare in the other themes'.
    ``keywords`` says how words are counted and weighed (``app.keywords``), ``drop`` are
    terms (words or phrases) no theme takes as a keyword.
    Returns one keyword list per theme number 0 .. max(labels)."""
    from bertopic import BERTopic
    from bertopic.cluster import BaseCluster
    from bertopic.dimensionality import BaseDimensionalityReduction

    keywords = keywords or KeywordModel()
    # BERTopic's "manual" mode: the clusters are given (y), it only builds representations.
    # It ranks more words than kept, so that some are left after those dropped.
    model = BERTopic(umap_model=BaseDimensionalityReduction(), hdbscan_model=BaseCluster(),
                     vectorizer_model=keywords.vectorizer(), ctfidf_model=keywords.ctfidf(),
                     top_n_words=min(3 * top_n, 100), calculate_probabilities=False, verbose=False)
    model.fit(docs, embeddings=vectors, y=np.asarray(labels))
    found = []
    _, first_topic = np.unique(labels, return_index=True)  # each theme's first topic, one pass
    for theme in range(int(labels.max()) + 1):
        # BERTopic may renumber topics; find ours through the document labels it kept.
        number = int(np.asarray(model.topics_)[first_topic[theme]])
        found.append([w for w, _ in (model.get_topic(number) or []) if w and w not in drop][:top_n])
    return found


_warmed: set[str] = set()


def warm_up(backend: ClusteringBackend, settings: RunSettings, *, largest_firm: int = 0) -> float:
    """Pay UMAP's one-off numba compilation now, once per process, and log it.

    The first UMAP fit in a process compiles its numba kernels (seconds; more again for
    the first fit above 4,096 points, where UMAP switches to approximate neighbours).
    Doing it here keeps that cost out of the first firm's timings; with the CPU backend
    the kernels are kept on disk (``app.compiled``), so a later process loads them.
    Returns seconds spent.
    """
    sizes = [600] + ([4200] if largest_firm > 4096 else [])
    todo = [s for s in sizes if f"{backend.name}:{s}" not in _warmed]
    if not todo:
        return 0.0
    started = time.perf_counter()
    if backend.name == "cpu":
        from app.compiled import keep_compiled_kernels

        keep_compiled_kernels()
    log.info("warm_up_started", backend=backend.name, sizes=todo)
    rng = np.random.default_rng(settings.seed)
    for size in todo:
        # A few well-separated blobs, so HDBSCAN finds clusters and BERTopic runs its whole path.
        centres = rng.normal(size=(6, 32))
        points = centres[rng.integers(0, 6, size)] + 0.05 * rng.normal(size=(size, 32))
        points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
        docs = [f"word{i % 6} token{i % 6} sample" for i in range(size)]
        cluster_firm(docs, points, settings, backend)
        _warmed.add(f"{backend.name}:{size}")
    seconds = time.perf_counter() - started
    log.info("warm_up_finished", backend=backend.name, seconds=round(seconds, 1))
    return seconds
