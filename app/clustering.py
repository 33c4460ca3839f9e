"""Clustering with BERTopic on precomputed embeddings: firm topics and cross-firm themes.

BERTopic is given the embeddings we computed (the model is loaded once per process), a
UMAP and an HDBSCAN from the chosen backend (cuML on a GPU, CPU packages otherwise),
and an English-stop-word vectorizer for its c-TF-IDF keywords. What comes back is plain
data: a label per document (-1 for an outlier) and, per cluster, its keywords and the
indices of its most representative documents (closest to the cluster's centre in
embedding space; these are shown to the namer and stored as evidence).

All of this is blocking CPU/GPU work: the pipeline runs it in a worker thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from app.backend import ClusteringBackend
from app.logs import get_logger
from app.settings import RunSettings

log = get_logger("clustering")

REPRESENTATIVES = 8  # sentences per topic shown to the namer and stored as evidence
UMAP_MIN_DOCS = 60  # below this many documents, cluster without UMAP (see cluster_documents)


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


def cluster_documents(
    docs: list[str],
    embeddings: np.ndarray,
    *,
    backend: ClusteringBackend,
    n_neighbors: int,
    n_components: int,
    min_dist: float,
    min_cluster_size: int,
    seed: int,
    top_n_keywords: int = 10,
    min_samples: int | None = None,
) -> Clustering:
    """Cluster ``docs`` (with their L2-normalised ``embeddings``) with BERTopic.

    UMAP's neighbourhood is capped below the number of documents, so small inputs work;
    fewer than ``min_cluster_size * 2`` documents raise ``TooFewToCluster``.
    Returns a ``Clustering``; when HDBSCAN finds no cluster every label is -1 and
    ``clusters`` is empty (a legitimate result, not an error).
    """
    from bertopic import BERTopic
    from sklearn.feature_extraction.text import CountVectorizer

    n = len(docs)
    if n < max(min_cluster_size * 2, 4):
        raise TooFewToCluster(f"{n} documents, fewer than {max(min_cluster_size * 2, 4)} needed to cluster")
    if n < UMAP_MIN_DOCS:
        # UMAP's neighbourhood graph is unreliable on a few dozen points (it scatters
        # small groups); HDBSCAN then runs on the unit-length embeddings themselves,
        # where Euclidean distance orders pairs exactly as cosine distance does.
        from bertopic.dimensionality import BaseDimensionalityReduction

        umap_model = BaseDimensionalityReduction()
    else:
        umap_model = backend.make_umap(
            n_neighbors=min(n_neighbors, n - 1),
            n_components=min(n_components, n - 2),
            min_dist=min_dist,
            random_state=seed,
        )
    hdbscan_model = backend.make_hdbscan(min_cluster_size=min_cluster_size, min_samples=min_samples)
    model = BERTopic(
        umap_model=umap_model,
        hdbscan_model=hdbscan_model,
        vectorizer_model=CountVectorizer(stop_words="english"),
        top_n_words=top_n_keywords,
        calculate_probabilities=False,
        verbose=False,
    )
    labels, _ = model.fit_transform(docs, embeddings=embeddings)
    labels = np.asarray(labels, dtype=np.int64)
    clusters = []
    for number in sorted(set(labels.tolist()) - {-1}):
        members = np.flatnonzero(labels == number)
        words = model.get_topic(number) or []
        clusters.append(
            Cluster(
                number=number,
                keywords=[w for w, _ in words if w][:top_n_keywords],
                members=members,
                representatives=most_central(embeddings, members, REPRESENTATIVES),
            )
        )
    return Clustering(labels=labels, clusters=clusters)


def most_central(embeddings: np.ndarray, members: np.ndarray, k: int) -> list[int]:
    """The ``k`` members closest (cosine) to the members' mean direction, closest first."""
    vectors = embeddings[members]
    centre = vectors.mean(axis=0)
    norm = np.linalg.norm(centre)
    if norm > 0:
        centre = centre / norm
    order = np.argsort(-(vectors @ centre), kind="stable")[:k]
    return [int(members[i]) for i in order]


def cluster_firm(docs: list[str], embeddings: np.ndarray, settings: RunSettings, backend: ClusteringBackend) -> Clustering:
    """Cluster one firm's sentences into topics with the run's settings."""
    return cluster_documents(
        docs,
        embeddings,
        backend=backend,
        n_neighbors=settings.umap_n_neighbors,
        n_components=settings.umap_n_components,
        min_dist=settings.umap_min_dist,
        min_cluster_size=settings.hdbscan_min_cluster_size,
        seed=settings.seed,
        top_n_keywords=settings.top_n_keywords,
    )


def cluster_topics(docs: list[str], embeddings: np.ndarray, settings: RunSettings, backend: ClusteringBackend) -> Clustering:
    """Cluster all firm topics of a run into cross-firm themes."""
    return cluster_documents(
        docs,
        embeddings,
        backend=backend,
        n_neighbors=settings.umap_n_neighbors,
        n_components=settings.umap_n_components,
        min_dist=settings.umap_min_dist,
        min_cluster_size=settings.theme_min_cluster_size,
        seed=settings.seed,
        top_n_keywords=settings.top_n_keywords,
        # Topics are few and each already summarises many sentences: a conservative
        # min_samples (HDBSCAN's default equals min_cluster_size) leaves most of them as
        # noise. 1 lets any tight group of min_cluster_size topics form a theme.
        min_samples=settings.theme_min_samples,
    )


def nearest_clusters(embeddings: np.ndarray, clustering: Clustering) -> np.ndarray:
    """For every document, the index (into ``clustering.clusters``) of the cluster whose
    centre is nearest in cosine terms. Used to give each outlier topic its nearest theme."""
    centres = np.stack([embeddings[c.members].mean(axis=0) for c in clustering.clusters])
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    return np.argmax(embeddings @ centres.T, axis=1)


_warmed: set[str] = set()


def warm_up(backend: ClusteringBackend, settings: RunSettings, *, largest_firm: int = 0) -> float:
    """Pay UMAP's one-off numba compilation now, once per process, and log it.

    The first UMAP fit in a process compiles its numba kernels (seconds; more again for
    the first fit above 4,096 points, where UMAP switches to approximate neighbours).
    Doing it here keeps that cost out of the first firm's timings. Returns seconds spent.
    """
    sizes = [600] + ([4200] if largest_firm > 4096 else [])
    todo = [s for s in sizes if f"{backend.name}:{s}" not in _warmed]
    if not todo:
        return 0.0
    started = time.perf_counter()
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
