"""The embedding model exported to ONNX and run by ONNX Runtime on a CPU.

On a CPU the transformer's forward pass is nearly all of the embedding time, and the
embedding is most of a firm's time. The same weights run faster outside torch: exported
to ONNX (``onnx``), and faster still with their matrix products quantized to int8
(``onnx-int8``); docs/benchmarks.md, "Embedding backends on a CPU", has the figures (and those of OpenVINO,
not kept: a little faster than ONNX Runtime in fp32, far from int8, 180 MB more to install).

The export is made once, from the weights the model already has on this machine (nothing
is downloaded), and kept in a folder named after those weights' digest, so other weights
never reuse it. Its provenance (source digest, file digest, versions, quantization) is
written beside it and recorded in the run. Tokenizing, pooling and normalising stay the
sentence-transformers model's own modules, so only the forward pass differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from app.logs import get_logger

log = get_logger("exported_model")

# The backends that run an exported model, and the file each runs.
EXPORTED_BACKENDS = {"onnx": "model.onnx", "onnx-int8": "model_int8.onnx"}
# Dynamic quantization (no calibration data): int8 weights, one scale per output channel
# (one scale per matrix lost too much: mean cosine 0.96 to torch's vectors, against 0.99),
# matrix products only (quantizing the embedding tables' lookups gains little).
QUANTIZATION = {"weight_type": "QInt8", "per_channel": True, "op_types_to_quantize": ["MatMul"]}
ONNX_OPSET = 17


def file_digest(path: Path) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_digest(model_dir: Path) -> str:
    """A digest of the model's weight files (safetensors or PyTorch) in ``model_dir``."""
    weights = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not weights:
        raise FileNotFoundError(f"no weight files in {model_dir}")
    return hashlib.sha256("".join(file_digest(p) for p in weights).encode()).hexdigest()


def _input_names(model) -> list[str]:
    names = model.tokenizer.model_input_names
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in names]


def _export_onnx(model, target: Path) -> None:
    """Export the transformer of the sentence-transformers ``model`` (its token vectors:
    pooling stays in Python) to ``target``, batch and sequence length left free."""
    import torch

    class TokenVectors(torch.nn.Module):
        def __init__(self, transformer):
            super().__init__()
            self.transformer = transformer

        def forward(self, *inputs):
            return self.transformer(**dict(zip(names, inputs))).last_hidden_state

    names = _input_names(model)
    example = model.tokenizer(["a first sentence", "and a second, longer one"], padding=True, return_tensors="pt")
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "token_vectors"]}
    with torch.no_grad():
        torch.onnx.export(TokenVectors(model[0].auto_model.eval()), tuple(example[n] for n in names), str(target),
                          input_names=names, output_names=["token_vectors"], dynamic_axes=axes,
                          opset_version=ONNX_OPSET, dynamo=False)


def _quantize(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    options = {**QUANTIZATION, "weight_type": getattr(QuantType, QUANTIZATION["weight_type"])}
    quantize_dynamic(str(source), str(target), **options)


def _versions() -> dict[str, str]:
    found = {}
    for name in ("torch", "transformers", "onnx", "onnxruntime"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def exported_file(model, model_dir: Path, backend: str, cache_dir: Path) -> tuple[Path, dict]:
    """The exported model file for ``backend``, built now if absent; returns it and its
    provenance (a JSON-ready dict, also kept beside it as ``<file>.json``).

    Takes the loaded sentence-transformers ``model``, the folder of its weights and the
    folder exports are kept in. Files are written under a temporary name and renamed, so
    two workers building at once each leave a whole file."""
    source = source_digest(model_dir)
    folder = cache_dir / f"{model_dir.name}-{source[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / EXPORTED_BACKENDS[backend]
    about = target.with_name(target.name + ".json")
    if target.exists() and about.exists():
        return target, json.loads(about.read_text())
    fp32 = folder / EXPORTED_BACKENDS["onnx"]
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        if not fp32.exists():
            log.info("embedding_model_exporting", to=str(fp32))
            _export_onnx(model, Path(scratch) / fp32.name)
            os.replace(Path(scratch) / fp32.name, fp32)
        if target != fp32:
            log.info("embedding_model_quantizing", to=str(target))
            _quantize(fp32, Path(scratch) / target.name)
            os.replace(Path(scratch) / target.name, target)
    provenance = {"file": str(target), "sha256": file_digest(target), "source": str(model_dir),
                  "source_sha256": source, "opset": ONNX_OPSET, "built_with": _versions(),
                  "quantization": QUANTIZATION if target != fp32 else None}
    about.write_text(json.dumps(provenance, indent=1))
    return target, provenance


@dataclass
class ExportedModel:
    """A sentence-transformers model whose transformer runs as an exported file; its
    ``encode`` takes what ``SentenceTransformer.encode`` takes, as ``Embedder`` calls it."""

    model: object  # the SentenceTransformer: tokenizer, pooling, normalisation
    run: object  # feeds (dict of int64 arrays) -> token vectors (batch, sequence, dimension)
    inputs: list[str] = field(default_factory=list)

    def encode(self, texts: list[str], *, batch_size: int = 64, normalize_embeddings: bool = True,
               **_ignored) -> np.ndarray:
        """Embed ``texts`` in batches of ``batch_size``, in the order given (the caller
        sorts by length); returns float32 vectors, L2-normalised when asked."""
        import torch

        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        out = np.empty((len(texts), int(get_dim())), dtype=np.float32)
        after = list(self.model)[1:]  # pooling, normalisation, any dense layer: the model's own
        for start in range(0, len(texts), batch_size):
            batch = self.model.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                         max_length=self.model.max_seq_length, return_tensors="np")
            feeds = {n: batch[n].astype(np.int64) for n in self.inputs}
            features = {"token_embeddings": torch.from_numpy(np.asarray(self.run(feeds), dtype=np.float32)),
                        "attention_mask": torch.from_numpy(feeds["attention_mask"])}
            with torch.no_grad():
                for module in after:
                    features = module(features)
            vectors = features["sentence_embedding"].numpy()
            if normalize_embeddings:
                vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            out[start:start + len(vectors)] = vectors
        return out


def load_exported(model, model_dir: Path, backend: str, cache_dir: Path) -> tuple[ExportedModel, dict]:
    """``model`` (a SentenceTransformer loaded on the CPU) run by ``backend`` (a key of
    ``EXPORTED_BACKENDS``) from its export under ``cache_dir``; returns the model and the
    export's provenance."""
    import onnxruntime

    path, provenance = exported_file(model, model_dir, backend, cache_dir)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(feeds):
        return session.run(None, feeds)[0]

    return ExportedModel(model=model, run=run, inputs=_input_names(model)), {"backend": backend, **provenance}
