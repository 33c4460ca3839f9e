"""The model that embeds a search's query: the run's own, loaded without torch where it can be.

Loading the run's model the usual way (torch, transformers, sentence-transformers and the
weights) takes seconds, about all of a ``firmtopics search`` process. The same weights
exported to ONNX (``app.exported_model``) run by ONNX Runtime, with tokenizing and
pooling done by ``tokenizers`` and numpy (``app.sentence_pipeline``), take a fraction of a
second to load, and give the same vectors. Which export:

* a run embedded by an exported backend (``embed_backend`` ``onnx``, ``onnx-int8`` or
  ``openvino``, whose file is ``onnx``'s, run here by ONNX Runtime): the very file it
  recorded, found by its digest (at the recorded path, or where this data folder keeps
  that export); when neither matches, that backend's export of the local weights, built
  now if absent (logged: its vectors may differ a little);
* a run embedded by ``torch``: the fp32 ``onnx`` export of the same local weights (the
  same vectors to cosine 1.0000), built on the first search (which then imports torch to
  export) and reused by every later one.

Where none of this can work (the model is a hub name without weights on disk,
``onnxruntime`` or ``tokenizers`` is not installed, the model has steps
``app.sentence_pipeline`` does not do, no folder to keep an export in) the query is
embedded the usual way, by torch, and the reason is logged.
"""

from __future__ import annotations

from pathlib import Path

from app.embedding import Embedder, load_embedder, resolve_model_path
from app.exported_model import EXPORTED_BACKENDS, export_location, open_exported, remembered_digest, source_digest
from app.logs import get_logger
from app.sentence_pipeline import Unsupported, load_steps
from app.settings import recorded_embed_backend

log = get_logger("query_embedder")

# The digests of the weights and exports, remembered (``remembered_digest``) in the models folder.
DIGESTS = "digests.json"


class NoExportPath(RuntimeError):
    """The query cannot be embedded from an export; the message says why."""


def load_query_embedder(run, models_dir: Path | None) -> Embedder:
    """An ``Embedder`` for queries on ``run`` (its ``runs`` row: ``model``, ``settings``,
    ``backend``), from an export kept in ``models_dir`` (the data folder's ``models``)
    where it can be, else the run's model loaded by torch. Raises ``ModelUnavailable``
    when the model cannot be loaded at all."""
    try:
        return _from_export(run, models_dir)
    except NoExportPath as reason:
        log.info("query_embedder_uses_torch", model=run["model"], reason=str(reason))
        # fp32, as the export computes: a query gets the same vector whichever way it is
        # embedded (a run's bfloat16 vectors are within cosine 0.9999 of these).
        return load_embedder(run["model"], precision="fp32")


def _from_export(run, models_dir: Path | None) -> Embedder:
    """The query embedder from the export that fits ``run`` (module docstring), built
    first when it is absent. Raises ``NoExportPath`` where there is none to be had."""
    name, backend = run["model"], recorded_embed_backend(run["settings"])
    model_dir = Path(resolve_model_path(name))
    if not model_dir.is_dir():
        raise NoExportPath(f"the model {name!r} has no weights on this machine")
    try:
        steps = load_steps(model_dir)
        import onnxruntime  # noqa: F401  (here, to fall back before anything is built)
    except ImportError as missing:
        raise NoExportPath(f"{missing.name or missing} is not installed") from None
    except Unsupported as reason:
        raise NoExportPath(str(reason)) from None
    # ONNX Runtime runs the fp32 file for every run but an int8 one: one runtime to load,
    # and the vector the file gives in fp32 (OpenVINO's bfloat16 is within cosine 0.9999).
    wanted = "onnx-int8" if backend == "onnx-int8" else "onnx"
    path = _recorded_export(run, model_dir, models_dir) if backend in EXPORTED_BACKENDS else None
    if path is None and models_dir is not None:
        try:
            source = source_digest(model_dir, memo=models_dir / DIGESTS)
        except FileNotFoundError as missing:  # a folder without weight files
            raise NoExportPath(str(missing)) from None
        located = export_location(model_dir, wanted, models_dir, source=source)
        path = located if located.exists() and located.with_name(located.name + ".json").exists() else None
    if path is None:
        return _built(name, wanted, models_dir)
    exported = open_exported(path, steps)
    log.info("query_embedder_loaded", model=name, backend=wanted, file=str(path))
    return Embedder(model=exported, name=name, device="cpu", dimension=exported.dimension,
                    provenance={"backend": wanted, "file": str(path)})


def _built(name: str, backend: str, models_dir: Path | None) -> Embedder:
    """The model run by ``backend`` from an export built now into ``models_dir`` (this
    loads torch to export). Raises ``NoExportPath`` without a folder it can write."""
    if models_dir is None:
        raise NoExportPath("no folder to keep an export in")
    log.info("query_export_building", model=name, backend=backend, to=str(models_dir))
    try:
        return load_embedder(name, backend=backend, cache_dir=models_dir)
    except OSError as exc:  # a data folder this user cannot write, a full disk
        raise NoExportPath(f"cannot build the export in {models_dir}: {exc}") from None


def _recorded_export(run, model_dir: Path, models_dir: Path | None) -> Path | None:
    """The export file the run recorded, if it is still at its path or where
    ``models_dir`` keeps it, with the recorded digest; else None (logged)."""
    recorded = (run["backend"] or {}).get("embedding") or {}
    places = [Path(recorded["file"])] if recorded.get("file") else []
    if models_dir is not None and recorded.get("source_sha256"):
        places.append(export_location(model_dir, recorded_embed_backend(run["settings"]), models_dir, source=recorded["source_sha256"]))
    memo = models_dir / DIGESTS if models_dir is not None else None
    for place in places:
        if place.is_file() and remembered_digest(place, memo) == recorded.get("sha256"):
            return place
    log.info("query_recorded_export_missing", run=run["name"], looked_in=[str(p) for p in places])
    return None
