"""The embedding model exported to ONNX and run by ONNX Runtime on a CPU.

On a CPU the transformer's forward pass is nearly all of the embedding time, and the
embedding is most of a firm's time. The same weights run faster outside torch: exported
to ONNX (``onnx``), and faster still with their matrix products quantized to int8
(``onnx-int8``), or run by OpenVINO (``openvino``, in bfloat16 on a CPU that has it);
docs/benchmarks.md, "Embedding backends on a CPU", has the figures.

The export is made once, from the weights the model already has on this machine (nothing
is downloaded), and kept in a folder named after those weights' digest, so other weights
never reuse it. Its provenance (source digest, file digest, versions, quantization) is
written beside it and recorded in the run. Tokenizing, pooling and normalising are done
as sentence-transformers does them, without torch (``app.sentence_pipeline``), so only the
forward pass differs; and a process that only embeds (a search's query) can run an export
without importing torch at all (``open_exported``). A model whose steps around the
transformer that module does not cover keeps the sentence-transformers model's own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from app.logs import get_logger
from app.sentence_pipeline import SentenceSteps, Unsupported, load_steps, normalized

log = get_logger("exported_model")

# The backends that run an exported model, and the file each runs: ONNX Runtime runs
# ``onnx`` and ``onnx-int8``, OpenVINO runs the same fp32 file as ``onnx`` (``openvino``),
# in bfloat16 on a CPU with bfloat16 instructions.
EXPORTED_BACKENDS = {"onnx": "model.onnx", "onnx-int8": "model_int8.onnx", "openvino": "model.onnx"}
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


def _stamp(path: Path) -> list:
    """What changes whenever a file's content does: its inode, size and change times."""
    stat = path.stat()
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def remembered_digest(path: Path, memo: Path | None) -> str:
    """``file_digest(path)``, kept in the JSON file ``memo`` with the file's ``_stamp``
    and taken from there while the stamp is the same: the weights and an export are tens
    of megabytes, a tenth of a second to read, which a search would spend each time.
    Without ``memo`` the file is read."""
    if memo is None:
        return file_digest(path)
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    key, stamp = str(path.resolve()), _stamp(path)
    if known.get(key, {}).get("stamp") == stamp:
        return known[key]["sha256"]
    digest = file_digest(path)
    known[key] = {"stamp": stamp, "sha256": digest}
    with contextlib.suppress(OSError):  # a memo that cannot be written is only slower
        memo.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=memo.parent, delete=False, suffix=".tmp") as f:
            json.dump(known, f)
        os.replace(f.name, memo)
    return digest


def source_digest(model_dir: Path, memo: Path | None = None) -> str:
    """A digest of the model's weight files (safetensors or PyTorch) in ``model_dir``
    (each file's digest remembered in ``memo``, if given: ``remembered_digest``)."""
    weights = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not weights:
        raise FileNotFoundError(f"no weight files in {model_dir}")
    return hashlib.sha256("".join(remembered_digest(p, memo) for p in weights).encode()).hexdigest()


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


def export_location(model_dir: Path, backend: str, cache_dir: Path, *, source: str | None = None) -> Path:
    """Where the export for ``backend`` of the weights in ``model_dir`` is kept under
    ``cache_dir`` (whether or not it is there yet): a folder named after the weights'
    digest (``source``, computed when not given), so other weights never find it."""
    source = source or source_digest(model_dir)
    return cache_dir / f"{model_dir.name}-{source[:16]}" / EXPORTED_BACKENDS[backend]


def exported_file(model, model_dir: Path, backend: str, cache_dir: Path) -> tuple[Path, dict]:
    """The exported model file for ``backend``, built now if absent; returns it and its
    provenance (a JSON-ready dict, also kept beside it as ``<file>.json``).

    Takes the loaded sentence-transformers ``model``, the folder of its weights and the
    folder exports are kept in. Files are written under a temporary name and renamed, so
    two workers building at once each leave a whole file."""
    source = source_digest(model_dir)
    target = export_location(model_dir, backend, cache_dir, source=source)
    target.parent.mkdir(parents=True, exist_ok=True)
    about = target.with_name(target.name + ".json")
    if target.exists() and about.exists():
        return target, json.loads(about.read_text())
    folder = target.parent
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
    """A sentence embedding model whose transformer runs as an exported file; its
    ``encode`` takes what ``SentenceTransformer.encode`` takes, as ``Embedder`` calls it."""

    tokenize: Callable[[list[str]], dict[str, np.ndarray]]  # texts -> int64 arrays by input name
    run: Callable[[dict], np.ndarray]  # feeds (dict of int64 arrays) -> token vectors (batch, sequence, dimension)
    pool: Callable[[np.ndarray, np.ndarray], np.ndarray]  # token vectors, attention mask -> sentence vectors
    inputs: list[str]  # the inputs the exported file takes
    dimension: int

    def encode(self, texts: list[str], *, batch_size: int = 64, normalize_embeddings: bool = True,
               **_ignored) -> np.ndarray:
        """Embed ``texts`` in batches of ``batch_size``, in the order given (the caller
        sorts by length); returns float32 vectors, L2-normalised when asked."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            batch = self.tokenize(texts[start:start + batch_size])
            token_vectors = np.asarray(self.run({n: batch[n] for n in self.inputs}), dtype=np.float32)
            vectors = self.pool(token_vectors, batch["attention_mask"])
            out[start:start + len(vectors)] = normalized(vectors) if normalize_embeddings else vectors
        return out


def _session(path: Path, runtime: str = "onnxruntime", precision: str = "fp32"):
    """The exported file ``path`` opened on the CPU by ``runtime`` (``onnxruntime`` or
    ``openvino``; OpenVINO computes in ``precision``, ``fp32`` or ``bf16``); returns the
    names of its inputs and a function running it (feeds -> its first output)."""
    if runtime == "openvino":
        import openvino

        hint = {"fp32": "f32", "bf16": "bf16"}[precision]
        compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint})
        return [i.get_any_name() for i in compiled.inputs], lambda feeds: compiled(feeds)[0]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [i.name for i in session.get_inputs()], lambda feeds: session.run(None, feeds)[0]


def open_exported(path: Path, steps: SentenceSteps, runtime: str = "onnxruntime",
                  precision: str = "fp32") -> ExportedModel:
    """The exported file ``path`` run by ``runtime`` (``_session``) between the model's
    tokenizing and pooling ``steps`` (``app.sentence_pipeline.load_steps``); imports no torch."""
    inputs, run = _session(path, runtime, precision)
    return ExportedModel(tokenize=steps.tokenize, run=run, pool=steps.pool, inputs=inputs,
                         dimension=steps.pool.dimension)


def _with_torch_steps(model, path: Path, runtime: str, precision: str) -> ExportedModel:
    """The exported file ``path`` with the sentence-transformers ``model``'s own tokenizer
    and modules after the transformer (pooling, dense layers, normalisation): for a model
    ``open_exported`` does not cover."""
    import torch

    inputs, run = _session(path, runtime, precision)
    after = list(model)[1:]

    def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
        batch = model.tokenizer(texts, padding=True, truncation=True, max_length=model.max_seq_length,
                                return_tensors="np")
        return {n: np.asarray(batch[n], dtype=np.int64) for n in batch}

    def pool(token_vectors: np.ndarray, mask: np.ndarray) -> np.ndarray:
        features = {"token_embeddings": torch.from_numpy(token_vectors), "attention_mask": torch.from_numpy(mask)}
        with torch.no_grad():
            for module in after:
                features = module(features)
        return features["sentence_embedding"].numpy()

    get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return ExportedModel(tokenize=tokenize, run=run, pool=pool, inputs=inputs, dimension=int(get_dim()))


def load_exported(model, model_dir: Path, backend: str, cache_dir: Path,
                  precision: str = "fp32") -> tuple[ExportedModel, dict]:
    """``model`` (a SentenceTransformer loaded on the CPU) run by ``backend`` (a key of
    ``EXPORTED_BACKENDS``) from its export under ``cache_dir``, OpenVINO's in
    ``precision``; returns the model and the export's provenance."""
    path, provenance = exported_file(model, model_dir, backend, cache_dir)
    runtime = "openvino" if backend == "openvino" else "onnxruntime"
    try:
        exported = open_exported(path, load_steps(model_dir), runtime, precision)
    except Unsupported as reason:
        log.info("embedding_model_own_steps", reason=str(reason))
        exported = _with_torch_steps(model, path, runtime, precision)
    return exported, {"backend": backend, **provenance, "runtime": {runtime: metadata.version(runtime)}}
