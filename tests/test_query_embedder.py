"""A search's query is embedded without torch: from the run's ONNX export (or the fp32
export of a torch run's weights, built once), with the same vectors as torch, the same
hits, and the torch path when no export can serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from app.embedding import ModelUnavailable, load_embedder, resolve_model_path
from app.exported_model import ExportedModel
from app.read.query_embedder import load_query_embedder
from app.read.search import search

TEXTS = ["supply chain costs", "We bought back $2 billion of shares and raised the dividend.",
         "LABOUR SHORTAGES pushed wages up in Asia; café chains felt it too.",
         "Our freight costs rose. " * 120, "Thank you, operator."]
# What the search path must not import: each takes a second or more to load.
HEAVY = ("torch", "sentence_transformers", "transformers", "pandas", "bertopic", "umap", "hdbscan", "sklearn")
REPO = Path(__file__).resolve().parents[1]


def torch_run(model: str = "all-MiniLM-L6-v2") -> dict:
    """The fields of a ``runs`` row the query embedder reads, for a run embedded by torch."""
    return {"name": "r", "model": model, "settings": {"embed_backend": "torch"}, "backend": {}}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.results
def test_the_tokens_are_those_of_the_model_s_own_tokenizer(embedder):
    from app.sentence_pipeline import load_tokenizer, tokenize_with

    model_dir = Path(resolve_model_path("all-MiniLM-L6-v2"))
    texts = [*TEXTS, "", "  spaces\tand tabs  ", "東京 naïve ÉLAN"]
    ours = tokenize_with(load_tokenizer(model_dir))(texts)
    theirs = embedder.model.tokenizer(texts, padding=True, truncation=True,
                                      max_length=embedder.model.max_seq_length, return_tensors="np")
    assert ours["input_ids"].shape[1] == embedder.model.max_seq_length == 256  # the long text is cut there
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert np.array_equal(ours[name], theirs[name]), name


@pytest.mark.results
def test_a_torch_run_s_query_vector_equals_torch_s_from_an_export_built_once(embedder, tmp_path):
    models = tmp_path / "models"
    with capture_logs() as logs:
        first = load_query_embedder(torch_run(), models)  # builds the fp32 export (imports torch)
    assert [e["event"] for e in logs if e["event"] == "query_export_building"]
    built = next(models.rglob("model.onnx"))
    stamp = built.stat().st_mtime_ns
    with capture_logs() as logs:
        again = load_query_embedder(torch_run(), models)
    assert built.stat().st_mtime_ns == stamp and not [e for e in logs if e["event"] == "query_export_building"]
    assert isinstance(again.model, ExportedModel) and again.provenance == {"backend": "onnx", "file": str(built)}
    expected = embedder.encode(TEXTS)
    for fast in (first, again):
        vectors = fast.encode(TEXTS)
        assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
        assert cosines(vectors, expected).min() >= 0.9999
    # A query comes alone: no padding, no batch-mates.
    alone = np.stack([again.encode([t])[0] for t in TEXTS])
    assert cosines(alone, expected).min() >= 0.9999


@pytest.mark.results
async def test_search_on_a_torch_run_gives_the_hits_torch_gives(conn, embedder, exports_dir):
    for text, level in (("supply chain costs", "topic"), ("we bought back shares", "sentence"),
                        ("wage inflation", "theme")):
        before = await search(conn, text, level=level, limit=10, embedder=embedder)
        now = await search(conn, text, level=level, limit=10, models_dir=exports_dir)
        assert len(now) == len(before) >= 8  # the sample run has 8 themes
        key = {"topic": "topic_id", "sentence": "sentence_id", "theme": "theme_id"}[level]
        assert [h[key] for h in now] == [h[key] for h in before], (text, level)
        assert [h["distance"] for h in now] == pytest.approx([h["distance"] for h in before], abs=1e-4)


@pytest.mark.results
def test_a_search_process_imports_no_torch(sample_run, exports_dir, tmp_path):
    load_query_embedder(torch_run(), exports_dir)  # the export is there, as after a first search
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(exports_dir)
    script = ("import json, sys\nfrom app.cli import main\n"
              "code = main(['search', 'supply chain costs', '--limit', '3', '--json'])\n"
              f"print(json.dumps({{'code': code, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "DATABASE_URL": sample_run, "FIRMTOPICS_DATA_DIR": str(data),
           "LOG_FORMAT": "json", "HF_HUB_OFFLINE": "1"}
    env.pop("XAI_API_KEY", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    *hits, outcome = done.stdout.strip().splitlines()
    assert json.loads(outcome) == {"code": 0, "heavy": []}
    assert len(hits) == 3 and json.loads(hits[0])["rank"] == 1
    assert '"event": "query_embedder_loaded"' in done.stderr


@pytest.mark.results
def test_an_exported_run_s_query_runs_its_recorded_file(exports_dir, tmp_path):
    int8 = load_embedder("all-MiniLM-L6-v2", backend="onnx-int8", cache_dir=exports_dir)
    run = {"name": "r", "model": "all-MiniLM-L6-v2", "settings": {"embed_backend": "onnx-int8"},
           "backend": {"embedding": int8.provenance}}
    query = load_query_embedder(run, tmp_path / "models")  # nothing there: the recorded path serves
    assert query.provenance == {"backend": "onnx-int8", "file": int8.provenance["file"]}
    assert np.allclose(query.encode(["supply chain costs"]), int8.encode(["supply chain costs"]), atol=1e-6)
    # A recorded digest no file has: the export of that backend kept in the models folder serves, logged.
    run["backend"]["embedding"] = {**int8.provenance, "sha256": "0" * 64}
    with capture_logs() as logs:
        kept = load_query_embedder(run, exports_dir)
    assert "query_recorded_export_missing" in [e["event"] for e in logs]
    assert kept.provenance["file"] == int8.provenance["file"]


@pytest.mark.results
def test_an_openvino_run_s_query_runs_its_file_by_onnx_runtime(exports_dir, tmp_path):
    openvino = load_embedder("all-MiniLM-L6-v2", backend="openvino", cache_dir=exports_dir)
    run = {"name": "r", "model": "all-MiniLM-L6-v2", "settings": {"embed_backend": "openvino"},
           "backend": {"embedding": openvino.provenance}}
    query = load_query_embedder(run, tmp_path / "models")
    assert query.provenance == {"backend": "onnx", "file": openvino.provenance["file"]}
    texts = ["supply chain costs", "the quarterly dividend"]
    assert np.sum(query.encode(texts) * openvino.encode(texts), axis=1).min() > 0.999


@pytest.mark.results
def test_without_onnxruntime_the_query_is_embedded_by_torch(embedder, exports_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with capture_logs() as logs:
        query = load_query_embedder(torch_run(), exports_dir)
    used = [e for e in logs if e["event"] == "query_embedder_uses_torch"]
    assert used and "onnxruntime" in used[0]["reason"]
    assert not isinstance(query.model, ExportedModel) and query.provenance == {"backend": "torch"}
    assert cosines(query.encode(TEXTS), embedder.encode(TEXTS)).min() >= 0.99999


@pytest.mark.results
def test_a_models_folder_that_cannot_be_written_leaves_the_query_to_torch(embedder, tmp_path):
    (tmp_path / "data").write_text("a file where the data folder should be")
    with capture_logs() as logs:
        query = load_query_embedder(torch_run(), tmp_path / "data" / "models")
    used = [e for e in logs if e["event"] == "query_embedder_uses_torch"]
    assert used and "cannot build the export" in used[0]["reason"] and query.provenance == {"backend": "torch"}
    assert cosines(query.encode(TEXTS), embedder.encode(TEXTS)).min() >= 0.99999


def test_a_model_without_local_weights_is_loaded_by_torch(exports_dir):
    with capture_logs() as logs, pytest.raises(ModelUnavailable, match="cannot load embedding model"):
        # Offline, with no copy in the cache: the torch path fails as it always has.
        load_query_embedder(torch_run("sentence-transformers/no-such-model-here"), exports_dir)
    used = [e for e in logs if e["event"] == "query_embedder_uses_torch"]
    assert used and "no weights on this machine" in used[0]["reason"]


@pytest.mark.results
def test_a_model_whose_steps_are_not_done_here_keeps_its_own(embedder, exports_dir, tmp_path):
    """A model folder without tokenizer.json (its tokenizer built from vocab.txt): the
    query is embedded by torch, and the exported backend tokenizes and pools with the
    sentence-transformers model's own modules."""
    source = Path(resolve_model_path("all-MiniLM-L6-v2"))
    copy = tmp_path / source.name  # same name and weights: the same export folder
    copy.mkdir()
    for item in source.iterdir():
        if item.name != "tokenizer.json":
            (copy / item.name).symlink_to(item)
    with capture_logs() as logs:
        query = load_query_embedder(torch_run(str(copy)), exports_dir)
    assert any(e["event"] == "query_embedder_uses_torch" and "tokenizer.json" in e["reason"] for e in logs)
    assert query.provenance == {"backend": "torch"}
    exported = load_embedder(str(copy), backend="onnx", cache_dir=exports_dir)
    assert cosines(exported.encode(TEXTS), embedder.encode(TEXTS)).min() >= 0.9999
