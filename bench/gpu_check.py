"""A short check (under 5 minutes) of what a GPU machine gives, next to its CPU.

  embedding   sentences/s of the default model and of a larger one (``--large-model``,
              a sentence-transformers name or local path), in fp32 and fp16 on the GPU,
              fp32 on the CPU; and how closely fp16 vectors agree with fp32 ones
  clustering  seconds per firm of 500 / 2,000 / 10,000 ECTSum sentences with the
              backend the program would choose (cuML's UMAP and HDBSCAN when cuML is
              importable on a GPU machine, else the CPU packages), next to the CPU
              backend on the same embeddings
  firms       the firm stage of the first ``--firms`` ECTSum firms on this machine's path
              (GPU embedding in fp16, the chosen backend) against the CPU path (fp32 on
              the CPU, the CPU backend): per-firm agreement of their topics (adjusted Rand
              index) next to the CPU path's agreement with itself under another seed, the
              noise floor

Without a GPU it says so and prints the CPU figures alone. The ratios (GPU / CPU) are
measured side by side in one process (the repeats alternate, medians are taken).

    python bench/gpu_check.py [--large-model sentence-transformers/all-mpnet-base-v2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import clustering as app_clustering  # noqa: E402
from app.backend import CPU, choose_backend  # noqa: E402
from app.embedding import load_embedder, resolve_model_path  # noqa: E402
from app.settings import DEFAULT_EMBEDDING_MODEL, RunSettings  # noqa: E402
from clustering import cached_embeddings, cluster, first_firms, joined_firms  # noqa: E402
from common import ECTSUM, machine, table  # noqa: E402


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def throughput(model, texts: list[str], batch_size: int, repeats: int) -> list[float]:
    """Seconds of ``model.encode(texts)``, one per repeat (after one untimed batch)."""
    import torch

    model.encode(texts[:batch_size], batch_size=batch_size, show_progress_bar=False)
    seconds = []
    for _ in range(repeats):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        model.encode(texts, batch_size=batch_size, show_progress_bar=False)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


def embedding_rows(name: str, texts_gpu: list[str], texts_cpu: list[str], args, on_gpu: bool) -> list[list]:
    from sentence_transformers import SentenceTransformer

    try:
        cpu = SentenceTransformer(resolve_model_path(name), device="cpu")
    except Exception as exc:  # a name that is not cached here and no network, a wrong path
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:70]}" if str(exc) else type(exc).__name__
        return [[name, "-", f"not loaded ({reason}); offline, give a local path", "-", "-", "-"]]
    rows = []
    cpu_s = statistics.median(throughput(cpu, texts_cpu, args.batch_size, args.repeats))
    cpu_rate = len(texts_cpu) / cpu_s
    rows.append([name, "CPU, fp32", f"{cpu_rate:,.0f}", "1.0", "-", len(texts_cpu)])
    if on_gpu:
        import copy

        fp32 = SentenceTransformer(resolve_model_path(name), device="cuda")
        fp16 = copy.deepcopy(fp32).half()
        times = {"fp32": [], "fp16": []}
        for rep in range(args.repeats):  # alternate, so both see the same conditions
            for label, model in ([("fp32", fp32), ("fp16", fp16)] if rep % 2 == 0 else [("fp16", fp16), ("fp32", fp32)]):
                times[label] += throughput(model, texts_gpu, args.batch_size, 1)
        sample = texts_gpu[:2000]
        a = fp32.encode(sample, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False)
        b = fp16.encode(sample, batch_size=args.batch_size, normalize_embeddings=True,
                        show_progress_bar=False).astype(np.float32)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        agreement = float(np.min(np.sum(a * b, axis=1)))
        for label in ("fp32", "fp16"):
            rate = len(texts_gpu) / statistics.median(times[label])
            rows.append([name, f"GPU, {label}", f"{rate:,.0f}", f"{rate / cpu_rate:.1f}",
                         f"{agreement:.5f}" if label == "fp16" else "-", len(texts_gpu)])
        del fp32, fp16
    return rows


def clustering_rows(sizes: list[int], program_backend, repeats: int) -> list[list]:
    texts = joined_firms(max(sizes))
    vectors = cached_embeddings(texts, DEFAULT_EMBEDDING_MODEL)
    backends = {"CPU": CPU} | ({program_backend.name: program_backend} if program_backend is not CPU else {})
    for backend in backends.values():  # compilation and device start-up, outside the timings
        app_clustering.warm_up(backend, RunSettings(), largest_firm=max(sizes))
    rows = []
    for size in sizes:
        seconds = {name: [] for name in backends}
        found = {}
        for rep in range(repeats):
            names = list(backends) if rep % 2 == 0 else list(reversed(backends))
            for name in names:
                started = time.perf_counter()
                result = cluster(texts[:size], vectors[:size], backends[name], RunSettings().seed)
                seconds[name].append(time.perf_counter() - started)
                found[name] = (len(result.clusters), result.n_outliers / size)
        cpu_s = statistics.median(seconds["CPU"])
        for name in backends:
            s = statistics.median(seconds[name])
            rows.append([f"{size:,}", name, f"{s:.2f}", f"{cpu_s / s:.1f}", found[name][0], f"{found[name][1]:.0%}"])
    return rows


def firm_rows(n_firms: int, seeds: tuple[int, int], program_backend) -> list[list]:
    """The firm stage both ways on the first ``n_firms`` ECTSum firms: one row per firm
    with its sentences, topics each way, ARI of the machine's path against the CPU path
    (same seed) and of the CPU path against itself under the second seed; a last row with
    the means and each path's embedding seconds."""
    from sklearn.metrics import adjusted_rand_score

    from app.clustering import cluster_firm

    firms = [(firm, texts) for firm, texts in first_firms(n_firms) if len(texts) >= 60]
    embedders = {"cpu": load_embedder(DEFAULT_EMBEDDING_MODEL, device="cpu"),
                 "this": load_embedder(DEFAULT_EMBEDDING_MODEL)}
    backends = {"cpu": CPU, "this": program_backend}
    embed_s = {"cpu": 0.0, "this": 0.0}
    rows, paths, floors = [], [], []
    for firm, texts in firms:
        vectors = {}
        for way, embedder in embedders.items():
            started = time.perf_counter()
            vectors[way] = embedder.encode(texts)
            embed_s[way] += time.perf_counter() - started
        labels = {(way, seed): cluster_firm(texts, vectors[way], RunSettings(seed=seed), backends[way]).labels
                  for way in ("cpu", "this") for seed in seeds[:1]}
        labels["cpu", seeds[1]] = cluster_firm(texts, vectors["cpu"], RunSettings(seed=seeds[1]), CPU).labels
        path = adjusted_rand_score(labels["cpu", seeds[0]], labels["this", seeds[0]])
        floor = adjusted_rand_score(labels["cpu", seeds[0]], labels["cpu", seeds[1]])
        cosine = float(np.min(np.sum(vectors["cpu"] * vectors["this"], axis=1)))
        paths.append(path)
        floors.append(floor)
        rows.append([firm, len(texts), labels["cpu", seeds[0]].max() + 1, labels["this", seeds[0]].max() + 1,
                     f"{path:.3f}", f"{floor:.3f}", f"{cosine:.4f}"])
        print(f"firm {firm}: ARI this/CPU {path:.3f}, CPU seed/seed {floor:.3f}", flush=True)
    rows.append([f"mean of {len(firms)}", sum(len(t) for _, t in firms), "-", "-", f"{np.mean(paths):.3f}",
                 f"{np.mean(floors):.3f}", f"embedding s: CPU {embed_s['cpu']:.1f}, this {embed_s['this']:.1f}"])
    return rows


def main(args) -> None:
    started = time.perf_counter()
    gpu = gpu_name()
    print(f"{machine()}; GPU: {gpu or 'no GPU found (torch.cuda.is_available() is False): CPU figures only'}",
          flush=True)
    texts = joined_firms(args.gpu_sentences if gpu else args.cpu_sentences)
    rows = []
    for name in (DEFAULT_EMBEDDING_MODEL, args.large_model):
        rows += embedding_rows(name, texts, texts[: args.cpu_sentences], args, on_gpu=bool(gpu))
        print(f"embedding, {name}: done ({time.perf_counter() - started:.0f} s so far)", flush=True)
    print()
    print(table(["model", "device, precision", "sentences/s", "ratio to CPU fp32", "fp16 vs fp32, min cosine",
                 "sentences"], rows))
    print(f"\nbatch size {args.batch_size}; medians of {args.repeats} repeats", flush=True)

    program_backend = choose_backend()
    print(f"\nclustering backend the program would choose here: {program_backend.name}", flush=True)
    if args.sizes:
        rows = clustering_rows([int(s) for s in args.sizes.split(",")], program_backend, args.repeats)
        print()
        print(table(["sentences", "backend", "seconds a firm (median)", "ratio CPU / this", "topics", "outliers"],
                    rows))
    if args.firms:
        seeds = (RunSettings().seed, RunSettings().seed + 1)
        rows = firm_rows(args.firms, seeds, program_backend)
        print()
        print(table(["firm", "sentences", "topics, CPU path", f"topics, this path ({program_backend.name})",
                     f"ARI this / CPU (seed {seeds[0]})", f"ARI CPU seed {seeds[0]} / {seeds[1]} (noise floor)",
                     "min cosine of vectors"], rows))
    print(f"\nwhole check: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    if not ECTSUM.exists():
        raise SystemExit("this check reads the shared ECTSum file")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large-model", default="sentence-transformers/all-mpnet-base-v2",
                        help="a larger sentence-transformers model: hub name (cached or with network) or local path")
    parser.add_argument("--gpu-sentences", type=int, default=20000, help="sentences per GPU throughput measurement")
    parser.add_argument("--cpu-sentences", type=int, default=1000, help="sentences per CPU throughput measurement")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="500,2000,10000", help="firm sizes to cluster; empty for none")
    parser.add_argument("--firms", type=int, default=12, help="first N ECTSum firms for the firm stage both ways; 0 for none")
    main(parser.parse_args())
