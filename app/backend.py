"""Which UMAP and HDBSCAN to use: cuML's on a GPU, the CPU packages otherwise.

One small interface, ``ClusteringBackend``, with two factories. The choice is made once at
start (``choose_backend``), logged, and recorded in the ``runs`` table, so a result says
which implementation produced it. cuML is used only when it is importable *and* a CUDA
device is present; anything else falls back to ``umap-learn`` and ``hdbscan``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class ClusteringBackend:
    """Factories for the dimension reducer and the clusterer, plus what to record."""

    name: str  # "cuml" or "cpu"
    make_umap: Callable[..., Any]
    make_hdbscan: Callable[..., Any]

    def describe(self) -> dict:
        """What goes into ``runs.backend`` and the start-up log line."""
        return {"clustering": self.name}


def _umap(umap_class, *, n_neighbors: int, n_components: int, min_dist: float, random_state: int,
          n_epochs: int | None = None):
    """A UMAP of either library (cuML's takes umap-learn's arguments) with the run's
    parameters. A fixed random_state makes UMAP deterministic (and single-threaded): the
    same input and settings give the same topics on the same machine. ``n_epochs`` None
    is the library's choice (500 below 10,000 points, else 200)."""
    return umap_class(n_neighbors=n_neighbors, n_components=n_components, min_dist=min_dist, metric="cosine",
                      random_state=random_state, n_epochs=n_epochs)


def _hdbscan(hdbscan_class, *, min_cluster_size: int, min_samples: int | None = None,
             cluster_selection: str = "leaf"):
    """An HDBSCAN of either library with the run's parameters; ``cluster_selection`` is
    "leaf" or "eom" (``RunSettings.cluster_selection``)."""
    return hdbscan_class(min_cluster_size=min_cluster_size, min_samples=min_samples, metric="euclidean",
                         cluster_selection_method=cluster_selection, prediction_data=True)


def _cpu_umap(**parameters):
    from umap import UMAP

    return _umap(UMAP, **parameters)


def _cpu_hdbscan(**parameters):
    from hdbscan import HDBSCAN

    return _hdbscan(HDBSCAN, **parameters)


def _cuml_umap(**parameters):
    from cuml.manifold import UMAP

    return _umap(UMAP, **parameters)


def _cuml_hdbscan(**parameters):
    from cuml.cluster import HDBSCAN

    return _hdbscan(HDBSCAN, **parameters)


CPU = ClusteringBackend("cpu", _cpu_umap, _cpu_hdbscan)
CUML = ClusteringBackend("cuml", _cuml_umap, _cuml_hdbscan)


def cuml_importable() -> bool:
    """True when ``cuml`` imports cleanly. A real import, not just a look-up: a cuML broken
    by a mismatched numba should fall back to the CPU at start, not fail at the first firm."""
    if importlib.util.find_spec("cuml") is None:
        return False
    try:
        import cuml  # noqa: F401
    except Exception:
        return False
    return True


def cuda_available() -> bool:
    """True when torch sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def choose_backend(
    *, cuml_present: Callable[[], bool] = cuml_importable, gpu_present: Callable[[], bool] = cuda_available
) -> ClusteringBackend:
    """cuML's UMAP/HDBSCAN when cuML is importable and a GPU is present, else the CPU ones.

    The two probes are parameters so the choice can be tested on a machine without either.
    """
    if gpu_present() and cuml_present():
        return CUML
    return CPU
