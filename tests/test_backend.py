"""The clustering backend: cuML's UMAP/HDBSCAN on a GPU, umap-learn/hdbscan otherwise.

The choice itself is tested with the two probes replaced (no GPU and no cuML here). The
CPU factories build the real objects. cuML cannot be installed on a machine without a
GPU, so its factories are tested against a stand-in ``cuml`` package whose classes have
the keyword-only signatures that cuML documents; a parameter name cuML does not accept
fails the same way it would on the GPU machine (TypeError), before a GPU is ever rented.
"""

from __future__ import annotations

import importlib.machinery
import inspect
import sys
import types

import pytest

from app import backend
from app.backend import CPU, CUML, ClusteringBackend, choose_backend, cuml_importable

# The parameters the project passes, as RunSettings would (values differ from the
# libraries' defaults, so a dropped argument shows).
UMAP_ARGS = dict(n_neighbors=12, n_components=7, min_dist=0.05, random_state=1234, n_epochs=300)
HDBSCAN_ARGS = dict(min_cluster_size=9)

# cuML's documented constructor parameters (all keyword-only), from the cuML API
# reference: docs.rapids.ai/api/cuml/stable/api/generated/cuml.manifold.umap/ and
# .../cuml.cluster.hdbscan.hdbscan/ (the same lists are in the 26.x sources).
CUML_UMAP_PARAMS = frozenset({
    "n_neighbors", "n_components", "metric", "metric_kwds", "n_epochs", "learning_rate",
    "min_dist", "spread", "set_op_mix_ratio", "local_connectivity", "repulsion_strength",
    "negative_sample_rate", "transform_queue_size", "init", "a", "b", "target_n_neighbors",
    "target_weight", "target_metric", "hash_input", "random_state", "force_serial_epochs",
    "precomputed_knn", "callback", "build_algo", "build_kwds", "device_ids", "verbose",
    "output_type",
})
CUML_HDBSCAN_PARAMS = frozenset({
    "min_cluster_size", "min_samples", "cluster_selection_epsilon", "max_cluster_size",
    "metric", "alpha", "p", "cluster_selection_method", "allow_single_cluster",
    "gen_min_span_tree", "verbose", "output_type", "prediction_data", "build_algo",
    "build_kwds", "device_ids",
})
# Documented values: cuML UMAP's dense-input metrics, and HDBSCAN's only metric.
CUML_UMAP_METRICS = frozenset({
    "l2", "euclidean", "sqeuclidean", "cityblock", "l1", "manhattan", "taxicab",
    "minkowski", "chebyshev", "linf", "cosine", "correlation", "hellinger", "hamming",
    "canberra",
})
CUML_HDBSCAN_METRICS = frozenset({"euclidean", "l2"})
CUML_CLUSTER_SELECTION_METHODS = frozenset({"eom", "leaf"})


def keyword_only_class(name: str, params: frozenset[str]) -> type:
    """A class whose constructor takes exactly ``params``, keyword-only, like cuML's.

    Any other name, or a positional argument, raises TypeError as the real one would.
    The arguments given are kept in ``received``.
    """

    def __init__(self, *args, **kwargs):
        signature.bind(*args, **kwargs)  # TypeError for what cuML would reject
        self.received = kwargs

    signature = inspect.Signature(
        [inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY, default=None) for p in sorted(params)]
    )
    return type(name, (), {"__init__": __init__})


@pytest.fixture
def fake_cuml(monkeypatch):
    """A stand-in ``cuml`` package with ``cuml.manifold.UMAP`` and ``cuml.cluster.HDBSCAN``.

    These are the import paths cuML documents (cuml.manifold exports UMAP, cuml.cluster
    exports HDBSCAN). monkeypatch removes the modules again after the test.
    """
    package = types.ModuleType("cuml")
    package.__spec__ = importlib.machinery.ModuleSpec("cuml", loader=None, is_package=True)
    package.__path__ = []
    manifold = types.ModuleType("cuml.manifold")
    manifold.UMAP = keyword_only_class("UMAP", CUML_UMAP_PARAMS)
    cluster = types.ModuleType("cuml.cluster")
    cluster.HDBSCAN = keyword_only_class("HDBSCAN", CUML_HDBSCAN_PARAMS)
    package.manifold, package.cluster = manifold, cluster
    monkeypatch.setitem(sys.modules, "cuml", package)
    monkeypatch.setitem(sys.modules, "cuml.manifold", manifold)
    monkeypatch.setitem(sys.modules, "cuml.cluster", cluster)
    return package


# --- the choice ------------------------------------------------------------------------


def test_gpu_and_cuml_choose_cuml():
    chosen = choose_backend(cuml_present=lambda: True, gpu_present=lambda: True)
    assert chosen is CUML
    assert chosen.name == "cuml"
    assert chosen.describe() == {"clustering": "cuml"}


def test_no_gpu_chooses_cpu_even_with_cuml():
    chosen = choose_backend(cuml_present=lambda: True, gpu_present=lambda: False)
    assert chosen is CPU
    assert chosen.describe() == {"clustering": "cpu"}


def test_gpu_without_cuml_chooses_cpu():
    assert choose_backend(cuml_present=lambda: False, gpu_present=lambda: True) is CPU


def test_neither_chooses_cpu():
    assert choose_backend(cuml_present=lambda: False, gpu_present=lambda: False) is CPU


def test_this_machine_chooses_cpu():
    """No GPU here, so the real probes must choose the CPU backend."""
    if backend.cuda_available():
        pytest.skip("a CUDA device is visible: this test is about a machine without one")
    assert choose_backend() is CPU


def test_cuml_probe_sees_an_importable_cuml(fake_cuml):
    assert cuml_importable() is True


def test_cuml_probe_without_cuml(monkeypatch):
    # None in sys.modules means "known not importable" to the import system, whatever
    # is installed on this machine.
    monkeypatch.setitem(sys.modules, "cuml", None)
    assert cuml_importable() is False


def test_gpu_probe_follows_torch(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert backend.cuda_available() is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backend.cuda_available() is False


def test_backends_are_plain_values():
    assert isinstance(CPU, ClusteringBackend) and isinstance(CUML, ClusteringBackend)
    assert {CPU.name, CUML.name} == {"cpu", "cuml"}


# --- the CPU factories build the real objects ------------------------------------------


def test_cpu_umap_is_umap_learn_with_our_parameters():
    import umap

    reducer = CPU.make_umap(**UMAP_ARGS)
    assert isinstance(reducer, umap.UMAP)
    assert reducer.n_neighbors == 12
    assert reducer.n_components == 7
    assert reducer.min_dist == 0.05
    assert reducer.metric == "cosine"
    assert reducer.random_state == 1234
    assert reducer.n_epochs == 300


def test_cpu_hdbscan_is_hdbscan_with_our_parameters():
    import hdbscan

    clusterer = CPU.make_hdbscan(**HDBSCAN_ARGS)
    assert isinstance(clusterer, hdbscan.HDBSCAN)
    assert clusterer.min_cluster_size == 9
    # BERTopic needs prediction data to assign probabilities and reduce outliers.
    assert clusterer.prediction_data is True
    assert clusterer.metric == "euclidean"
    assert clusterer.cluster_selection_method == "leaf"


def test_cpu_hdbscan_clusters_a_small_sample():
    """The object is usable, not just constructible: two clear blobs, two clusters."""
    import numpy as np

    rng = np.random.default_rng(0)
    points = np.vstack([rng.normal(0, 0.1, (30, 2)), rng.normal(5, 0.1, (30, 2))])
    labels = CPU.make_hdbscan(min_cluster_size=20).fit(points).labels_  # a blob of 30 cannot split
    assert set(labels) - {-1} == {0, 1}


# --- the cuML factories call cuML with names it accepts --------------------------------


def test_cuml_umap_arguments_are_documented_cuml_parameters(fake_cuml):
    reducer = CUML.make_umap(**UMAP_ARGS)
    assert isinstance(reducer, fake_cuml.manifold.UMAP)
    assert set(reducer.received) <= CUML_UMAP_PARAMS
    assert reducer.received["metric"] in CUML_UMAP_METRICS
    assert reducer.received == {
        "n_neighbors": 12,
        "n_components": 7,
        "min_dist": 0.05,
        "metric": "cosine",
        "random_state": 1234,
        "n_epochs": 300,
    }


def test_cuml_hdbscan_arguments_are_documented_cuml_parameters(fake_cuml):
    clusterer = CUML.make_hdbscan(**HDBSCAN_ARGS)
    assert isinstance(clusterer, fake_cuml.cluster.HDBSCAN)
    assert set(clusterer.received) <= CUML_HDBSCAN_PARAMS
    assert clusterer.received["metric"] in CUML_HDBSCAN_METRICS
    assert clusterer.received["cluster_selection_method"] in CUML_CLUSTER_SELECTION_METHODS
    assert clusterer.received["min_cluster_size"] == 9
    assert clusterer.received["prediction_data"] is True


def test_both_backends_are_configured_alike(fake_cuml):
    """Switching to the GPU changes the implementation, not the method: the same
    parameters reach both UMAPs and both HDBSCANs."""
    cpu_umap, gpu_umap = CPU.make_umap(**UMAP_ARGS), CUML.make_umap(**UMAP_ARGS)
    for name, value in gpu_umap.received.items():
        assert getattr(cpu_umap, name) == value, name
    cpu_hdbscan, gpu_hdbscan = CPU.make_hdbscan(**HDBSCAN_ARGS), CUML.make_hdbscan(**HDBSCAN_ARGS)
    for name, value in gpu_hdbscan.received.items():
        assert getattr(cpu_hdbscan, name) == value, name


def test_the_stand_in_rejects_what_cuml_rejects(fake_cuml):
    """The check above has teeth: a name cuML does not document is refused."""
    with pytest.raises(TypeError):
        fake_cuml.cluster.HDBSCAN(min_cluster_size=5, core_dist_n_jobs=4)  # hdbscan-only
    with pytest.raises(TypeError):
        fake_cuml.manifold.UMAP(15)  # cuML's constructors are keyword-only


# --- the run's settings reach the factories --------------------------------------------


class Built(Exception):
    """Raised by a factory stand-in once it has recorded its arguments (nothing is fitted)."""


@pytest.mark.results
def test_the_run_settings_reach_umap_and_hdbscan():
    import dataclasses

    import numpy as np

    from app.clustering import cluster_firm
    from app.settings import RunSettings

    received = {}

    def make_umap(**kwargs):
        received["umap"] = kwargs
        raise Built  # both are made by now (HDBSCAN first): nothing to fit

    def make_hdbscan(**kwargs):
        received["hdbscan"] = kwargs
        return CPU.make_hdbscan(**kwargs)

    backend = dataclasses.replace(CPU, make_umap=make_umap, make_hdbscan=make_hdbscan)
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(600, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    docs = [f"sentence {i} about topic {i % 5}" for i in range(600)]
    settings = RunSettings(umap_n_neighbors=11, umap_n_components=4, umap_min_dist=0.1, umap_n_epochs=200, seed=3,
                           hdbscan_min_cluster_size=7, min_topic_share=0.05, hdbscan_min_samples=2,
                           cluster_selection="eom")
    with pytest.raises(Built):
        cluster_firm(docs, embeddings, settings, backend)
    assert received["umap"] == {"n_neighbors": 11, "n_components": 4, "min_dist": 0.1, "random_state": 3,
                                "n_epochs": 200}
    # The minimum topic size is the larger of the floor (7) and the share of the firm (5% of 600).
    assert received["hdbscan"] == {"min_cluster_size": 30, "min_samples": 2, "cluster_selection": "eom"}
