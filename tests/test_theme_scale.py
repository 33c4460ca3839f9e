"""Themes of many topics: exact Ward up to ``WARD_EXACT_MAX`` topics, unchanged; above
it, Ward of weighted k-means micro-clusters, which must still find what exact Ward finds
where the answer is plain. Speed and memory are measured in bench/scale.py, not here."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.metrics import adjusted_rand_score

from app.clustering import (
    WARD_EXACT_MAX,
    members_by_label,
    micro_cluster_count,
    theme_count,
    theme_labels,
    weighted_ward,
)
from app.settings import RunSettings


def families(groups: int, per_group: int, *, spread: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in 64 dimensions around ``groups`` random directions, shuffled, with
    each one's group. The groups are far apart (a vector is nearer every vector of its
    group than any of another), so no rounding can move one to another group."""
    rng = np.random.default_rng(seed)
    truth = rng.permutation(np.repeat(np.arange(groups), per_group))
    vectors = rng.normal(size=(groups, 64))[truth] + spread * rng.normal(size=(len(truth), 64))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), truth


def by_first_appearance(raw: np.ndarray) -> list[int]:
    """Cluster numbers renamed 0, 1, ... in the order their first member appears."""
    names: dict[int, int] = {}
    return [names.setdefault(int(r), len(names)) for r in raw]


@pytest.mark.results
def test_below_the_threshold_the_themes_are_exact_ward():
    vectors, _ = families(groups=12, per_group=25, spread=0.6)  # 300 topics that overlap
    assert len(vectors) <= WARD_EXACT_MAX
    exact = fcluster(linkage(vectors, method="ward"), t=12, criterion="maxclust")
    assert theme_labels(vectors, 12).tolist() == by_first_appearance(exact)


@pytest.mark.results
def test_above_the_threshold_micro_clusters_recover_the_families():
    vectors, truth = families(groups=8, per_group=150)
    labels = theme_labels(vectors, 8, exact_max=100)  # 1,200 topics: the two-stage way
    assert adjusted_rand_score(truth, labels) >= 0.95
    firsts = [int(np.flatnonzero(labels == k)[0]) for k in range(int(labels.max()) + 1)]
    assert firsts == sorted(firsts)  # numbered by first appearance, as exact Ward's themes
    assert theme_labels(vectors, 8, exact_max=100).tolist() == labels.tolist()  # seeded: same again


@pytest.mark.results
def test_weighted_ward_is_ward_of_the_points_repeated_by_their_weights():
    points, truth = families(groups=5, per_group=8, spread=0.3)
    weights = np.random.default_rng(1).integers(1, 6, len(points))
    repeated = np.repeat(np.arange(len(points)), weights)
    exact = fcluster(linkage(points[repeated], method="ward"), t=5, criterion="maxclust")
    ours = weighted_ward(points, weights, 5)
    assert adjusted_rand_score(exact[np.searchsorted(repeated, np.arange(len(points)))], ours) == 1.0
    assert adjusted_rand_score(truth, ours) == 1.0


def test_micro_clusters_stay_constant_from_200k_to_a_million_topics():
    # k-means' time is topics x micro-clusters: a count that grew with the themes made
    # the stage grow as topics^1.5 (docs/benchmarks.md, section 10).
    counts = [micro_cluster_count(n, theme_count(n, RunSettings())) for n in (200_000, 500_000, 1_000_000)]
    assert counts == [4_000, 4_000, 4_000]
    assert micro_cluster_count(4_000_000, theme_count(4_000_000, RunSettings())) == 8_000  # 4 a theme beyond
    assert micro_cluster_count(1_000, 30) == 250  # at most a quarter of the topics


def test_members_by_label_lists_each_clusters_members_in_order():
    labels = np.array([2, 0, 2, 1, 0, 2])
    assert [m.tolist() for m in members_by_label(labels, 3)] == [[1, 4], [3], [0, 2, 5]]
