"""``clustering.exact_neighbours`` hands umap-learn the neighbours it would find itself
below 4,096 points, only faster. UMAP is chaotic (one distance a float32 step off gives
another layout), so "the same" means bit for bit: the same indices, the same distances,
and the same UMAP layout."""

from __future__ import annotations

import numpy as np
import pytest

from app.clustering import exact_neighbours


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def umap_learns_own(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """What umap-learn does below 4,096 points: every pairwise distance with its own cosine
    function, then the k smallest of each row (its small-data path in UMAP.fit, and
    nearest_neighbors with a precomputed matrix)."""
    from sklearn.metrics import pairwise_distances
    from umap.distances import named_distances
    from umap.utils import fast_knn_indices

    matrix = pairwise_distances(x, metric=named_distances["cosine"])
    indices = fast_knn_indices(matrix, k)
    return indices, matrix[np.arange(len(x))[:, None], indices]


@pytest.mark.parametrize("n, k", [(300, 15), (1000, 15), (200, 30)])
def test_the_neighbours_and_distances_are_umap_learns_own_to_the_bit(n, k):
    x = unit_rows(n, 32, seed=n)
    theirs_idx, theirs_dist = umap_learns_own(x, k)
    ours_idx, ours_dist, _ = exact_neighbours(x, k)
    assert np.array_equal(ours_idx, theirs_idx)
    assert ours_dist.dtype == theirs_dist.dtype == np.float32
    assert np.array_equal(ours_dist, theirs_dist)  # exact equality, not approximate


def test_ties_from_repeated_sentences_go_to_the_lower_index_as_in_umap_learn():
    """Many copies of one sentence make the k-th neighbour a tie far beyond 2k candidates."""
    x = unit_rows(150, 16, seed=3)
    x[40:90] = x[40]  # fifty identical rows
    theirs_idx, theirs_dist = umap_learns_own(x, 15)
    ours_idx, ours_dist, _ = exact_neighbours(x, 15)
    assert np.array_equal(ours_idx, theirs_idx) and np.array_equal(ours_dist, theirs_dist)


def test_umap_gives_the_same_layout_with_our_neighbours():
    from umap import UMAP

    x = unit_rows(400, 24, seed=7)
    plain = UMAP(n_neighbors=15, n_components=5, metric="cosine", random_state=42, n_epochs=50).fit_transform(x)
    given = UMAP(n_neighbors=15, n_components=5, metric="cosine", random_state=42, n_epochs=50,
                 precomputed_knn=exact_neighbours(x, 15)).fit_transform(x)
    assert np.array_equal(plain, given)
