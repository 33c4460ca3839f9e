"""Does the embedding stage cost more than a bare ``SentenceTransformer.encode``? And does
sorting sentences by length before batching (less padding) pay?

The same sentences, the same model object and batch size, in one process, four ways:

  bare encode            ``model.encode(texts, batch_size=B)``: the reference
  Embedder (sorted)      ``Embedder.encode(texts)``, as the program calls it: it sorts the
                         texts by length itself, encodes, normalises, restores the order
  Embedder (unsorted)    ``Embedder.encode(texts, sort_by_length=False)``
  no length sorting      one ``model.encode`` call per batch of B sentences in file order,
                         so no batch is formed by length: what sorting is worth
                         (``model.encode`` itself sorts its whole input by length first)

The work is done firm by firm (the program embeds one firm per call): for each firm the
four ways run one after another, ``--repeats`` times, in an order that rotates, so each
sees the same load on a shared machine; a firm's seconds for a way are the least of its
repeats (the same work repeated: the least disturbed run is the fairest figure on a
machine whose load comes and goes). Ratio = bare seconds / seconds of the way, over all firms (1.0 = as fast as
bare encode; above 1 = faster).

    python bench/embedding.py [--sentences 700] [--repeats 5] [--batch-size N]

With ``--backends``, the embedding backends (the ``FIRMTOPICS_EMBED_BACKEND`` setting) are
compared instead, on the CPU: torch fp32, ``torch-bf16`` (torch in bfloat16, the CPU
default where the CPU has bfloat16 instructions), the exported ones (``app.exported_model``:
``openvino`` in bfloat16 where the CPU has it), ``openvino-fp32`` (OpenVINO in fp32) and
``torch-before`` (torch fp32 as the program ran it before sorting by tokens: batches of 64
sorted by characters),
each loaded as the program loads it (its export built first, into a temporary folder:
the seconds that takes are printed too) and called as the program calls it
(``Embedder.encode``), firm by firm on the first ``--sentences`` ECTSum sentences (5,000
by default here), the order rotating from firm to firm. Printed: sentences/s, the ratio
to torch fp32 (above 1 = faster) and the cosine of each vector to torch's. Then how much
the topics move: each of the first ``--ari-firms`` firms (12) is clustered by
``app.clustering.cluster_firm`` with the program's settings, outliers attached, from each
backend's vectors, under ``--seeds`` seeds; the adjusted Rand index between a backend's
topics and torch's (same seed) stands next to the index between torch's topics under two
seeds, the noise floor: a backend moves the topics no more than a new seed does when its
index is not below the floor. The quality figures of each way (``app.quality``) come
with it.

    python bench/embedding.py --backends torch,onnx,onnx-int8,torch-bf16 [--sentences 5000]
                              [--ari-firms 12] [--seeds 2]

The last table pairs the firms: each firm's ARI to torch fp32 minus its own noise floor,
with a 95% interval over the firms, so a backend is below the floor only when the whole
interval is.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import clustering  # noqa: E402
from app.backend import CPU  # noqa: E402
from app.embedding import load_embedder  # noqa: E402
from app.quality import firm_quality, run_quality  # noqa: E402
from app.settings import DEFAULT_EMBEDDING_MODEL, RunSettings  # noqa: E402
from common import ECTSUM, machine, table  # noqa: E402


def ectsum_firms(n_sentences: int) -> tuple[list[list[str]], str]:
    """Whole ECTSum firms in file order until ``n_sentences`` (the last one cut short);
    the generated sample corpus when the shared data is absent."""
    firms: list[list[str]] = []
    total = 0
    if ECTSUM.exists():
        current = None
        with gzip.open(ECTSUM, "rt", encoding="utf-8") as src:
            for line in src:
                row = json.loads(line)
                if total == n_sentences:
                    break
                if row["firm_id"] != current:
                    current = row["firm_id"]
                    firms.append([])
                firms[-1].append(row["sentence"])
                total += 1
        return firms, f"ECTSum, first {len(firms)} firms"
    from app.sample import sample_rows

    by_firm: dict[str, list[str]] = {}
    for row in sample_rows():
        if total < n_sentences:
            by_firm.setdefault(row["firm_id"], []).append(row["sentence"])
            total += 1
    return list(by_firm.values()), "generated sample corpus (no shared data here)"


def padding_share(tokenizer, firms: list[list[str]], batch_size: int, *, by_length: bool, max_length: int) -> float:
    """Share of the token slots in all batches (firm by firm) that are padding, with or
    without sorting each firm's sentences by length."""
    slots = used = 0
    for texts in firms:
        lengths = np.array([min(len(ids), max_length) for ids in tokenizer(texts)["input_ids"]])
        if by_length:
            lengths = np.sort(lengths)
        for start in range(0, len(lengths), batch_size):
            batch = lengths[start:start + batch_size]
            slots += batch.max() * len(batch)
            used += batch.sum()
    return 1 - used / slots


def main(args) -> None:
    firms, description = ectsum_firms(args.sentences)
    n = sum(len(f) for f in firms)
    embedder = load_embedder(args.model, batch_size=args.batch_size, precision="fp32")
    model, batch = embedder.model, embedder.batch_size
    print(f"corpus: {description} ({n} sentences); model {args.model} on {embedder.device}, batch size {batch}; "
          f"{machine()}", flush=True)

    def bare(texts):
        return model.encode(texts, batch_size=batch, show_progress_bar=False)

    def no_sorting(texts):
        return np.concatenate([model.encode(texts[i:i + batch], batch_size=batch, show_progress_bar=False)
                               for i in range(0, len(texts), batch)])

    ways = {
        "bare encode": bare,
        "Embedder (sorted)": embedder.encode,
        "Embedder (unsorted)": lambda texts: embedder.encode(texts, sort_by_length=False),
        "no length sorting": no_sorting,
    }
    bare(firms[0][: batch * 2])  # first-call overhead (thread pools, allocator) outside the timings
    seconds = {name: 0.0 for name in ways}
    per_firm_ratio: dict[str, list[float]] = {name: [] for name in ways}
    vectors = {}
    for i, texts in enumerate(firms):
        names = list(ways)
        repeats = {name: [] for name in names}
        for rep in range(args.repeats):
            shift = (i + rep) % len(names)
            for name in names[shift:] + names[:shift]:
                started = time.perf_counter()
                vectors[name] = ways[name](texts)
                repeats[name].append(time.perf_counter() - started)
        timed = {name: min(repeats[name]) for name in names}
        for name, s in timed.items():
            seconds[name] += s
            per_firm_ratio[name].append(timed["bare encode"] / s)
        reference = vectors["bare encode"] / np.linalg.norm(vectors["bare encode"], axis=1, keepdims=True)
        for name in ways:
            # Every way must give the same vectors (up to float noise from batch composition).
            assert np.min(np.sum(reference * vectors[name], axis=1)
                          / np.linalg.norm(vectors[name], axis=1)) > 0.9999, name
        print(f"firm {i + 1}/{len(firms)} ({len(texts)} sentences): "
              + ", ".join(f"{k} {v:.1f} s" for k, v in timed.items()), flush=True)

    tokenizer, max_length = model.tokenizer, model.max_seq_length
    pad_sorted = padding_share(tokenizer, firms, batch, by_length=True, max_length=max_length)
    pad_file = padding_share(tokenizer, firms, batch, by_length=False, max_length=max_length)
    print()
    print(table(
        ["way", "seconds (all firms, least of repeats)", "sentences/s", "ratio to bare encode", "median per-firm ratio"],
        [[name, f"{s:.1f}", f"{n / s:.0f}", f"**{seconds['bare encode'] / s:.2f}**" if name == "Embedder (sorted)"
          else f"{seconds['bare encode'] / s:.2f}", f"{statistics.median(per_firm_ratio[name]):.2f}"]
         for name, s in seconds.items()],
    ))
    print(f"\npadding share of the token slots, firm by firm in batches of {batch}: "
          f"{pad_file:.0%} in file order, {pad_sorted:.0%} sorted by length. "
          "Goal: Embedder >= 0.9 x bare encode.")


def bf16_embedder(args):
    """Torch on the CPU in bfloat16 (``EMBEDDING_PRECISION=auto`` on a CPU with bfloat16
    instructions: the program's CPU default there)."""
    embedder = load_embedder(args.model, batch_size=args.batch_size, device="cpu")
    if embedder.precision != "bf16":
        raise SystemExit("torch-bf16: this CPU (or ATEN_CPU_CAPABILITY) gives torch no bfloat16 instructions")
    return embedder


def time_backends(firms: list[list[str]], names: list[str], args) -> tuple[dict, dict]:
    """Each backend loaded (its export built in a temporary folder) and timed on every
    firm, the order rotating; returns {backend: seconds} and {backend: vectors}."""
    cache = Path(tempfile.mkdtemp(prefix="firmtopics-exports-", dir="/tmp"))
    embedders = {}
    for name in names:
        started = time.perf_counter()
        if name in MEASURED_WAYS:
            embedders[name] = MEASURED_WAYS[name](args, cache)
        else:
            embedders[name] = load_embedder(args.model, batch_size=args.batch_size, device="cpu", backend=name,
                                            cache_dir=cache, precision="fp32" if name == "torch" else "auto")
        print(f"{name}: loaded (export built) in {time.perf_counter() - started:.1f} s", flush=True)
        embedders[name].encode(firms[0][:128])  # first-call overhead outside the timings
    seconds = {name: 0.0 for name in names}
    parts = {name: [] for name in names}
    for i, texts in enumerate(firms):
        for name in names[i % len(names):] + names[: i % len(names)]:
            started = time.perf_counter()
            parts[name].append(embedders[name].encode(texts))
            seconds[name] += time.perf_counter() - started
        print(f"firm {i + 1}/{len(firms)} ({len(texts)} sentences): "
              + ", ".join(f"{k} {seconds[k]:.0f} s" for k in names), flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    return seconds, {name: np.concatenate(v) for name, v in parts.items()}


MEASURED_WAYS = {
    # As the program embedded before: batches of 64 sorted by characters, torch fp32.
    "torch-before": lambda args, cache: dataclasses.replace(
        load_embedder(args.model, batch_size=64, device="cpu", precision="fp32"), count_tokens=None),
    "torch-bf16": lambda args, cache: bf16_embedder(args),
    "openvino-fp32": lambda args, cache: load_embedder(args.model, batch_size=args.batch_size, backend="openvino",
                                                       cache_dir=cache, precision="fp32"),
}


def topics_moved(firms: list[list[str]], vectors: dict, seeds: list[int]) -> tuple[dict, dict]:
    """Every firm large enough clustered from each backend's vectors under each seed;
    returns {(backend, seed): [final labels of each firm]} and {(backend, seed): the
    run's firm quality figures}."""
    defaults = RunSettings()
    spans, start = [], 0
    for texts in firms:
        if len(texts) >= defaults.min_firm_sentences:
            spans.append((texts, start))
        start += len(texts)
    clustering.warm_up(CPU, defaults, largest_firm=max(len(t) for t, _ in spans))
    labels, quality = {}, {}
    for name, matrix in vectors.items():
        for seed in seeds:
            settings = dataclasses.replace(defaults, seed=seed)
            labels[name, seed], figures = [], []
            for texts, begin in spans:
                embeddings = matrix[begin:begin + len(texts)]
                result = clustering.cluster_firm(texts, embeddings, settings, CPU)
                final = clustering.attach_outliers(embeddings, result.labels, settings.outlier_threshold)
                labels[name, seed].append(final)
                figures.append(firm_quality(result.labels, final, [c.keywords for c in result.clusters], texts))
            quality[name, seed] = run_quality(figures, [], 0, 0)["firms"]
            print(f"{name}, seed {seed}: clustered", flush=True)
    return labels, quality


def backends_main(args) -> None:
    from sklearn.metrics import adjusted_rand_score

    names = args.backends.split(",")
    if names[0] != "torch":
        names = ["torch"] + [n for n in names if n != "torch"]
    firms, description = ectsum_firms(args.sentences or 5000)
    n = sum(len(f) for f in firms)
    print(f"corpus: {description} ({n} sentences); model {args.model} on the CPU, batch size {args.batch_size or 'the default'}; "
          f"{machine()}", flush=True)
    seconds, vectors = time_backends(firms, names, args)
    cosines = {name: np.sum(vectors["torch"] * v, axis=1) for name, v in vectors.items()}
    print()
    print(table(["backend", "seconds", "sentences/s", "ratio to torch fp32", "cosine to torch: mean", "min"],
                [[name, f"{s:.1f}", f"{n / s:.0f}", f"**{seconds['torch'] / s:.2f}**", f"{cosines[name].mean():.4f}",
                  f"{cosines[name].min():.4f}"] for name, s in seconds.items()]))
    seeds = [42 + i for i in range(args.seeds)]
    labels, quality = topics_moved(firms[: args.ari_firms], vectors, seeds)

    def ari(a, b) -> float:
        return statistics.mean(adjusted_rand_score(x, y) for x, y in zip(labels[a], labels[b]))

    floor = statistics.mean(ari(("torch", a), ("torch", b)) for a in seeds for b in seeds if a < b)
    rows = []
    for (name, seed), q in quality.items():
        moved = f"{floor:.3f} (noise floor: torch, two seeds)" if name == "torch" else \
            f"{ari((name, seed), ('torch', seed)):.3f}"
        rows.append([name, seed, moved, f"{q['mean_topics']:.1f}", q["firms_with_catch_all"],
                     f"{q['mean_largest_topic_share']:.0%}", f"{q['unassigned_share']:.1%}"])
    print()
    print(table(["backend", "seed", "ARI to torch fp32 (mean over firms)", "topics a firm", "catch-all firms",
                 "largest topic", "unassigned"], rows))
    print()
    print(table(["backend", "ARI to torch fp32 minus the noise floor, firm by firm: mean", "95% interval"],
                [[name, f"{gap:+.3f}", f"{gap - margin:+.3f} to {gap + margin:+.3f}"]
                 for name, (gap, margin) in floor_gaps(labels, names[1:], seeds).items()]))
    print("\nTargets: bare encode >= 2.5x torch fp32; ARI to torch fp32 >= the noise floor.")


def floor_gaps(labels: dict, names: list[str], seeds: list[int]) -> dict[str, tuple[float, float]]:
    """For each backend, firm by firm: its topics' ARI to torch's (same seed, mean over
    seeds) minus the firm's noise floor (torch under two seeds, mean over the pairs);
    returns {backend: (mean gap over firms, half-width of its 95% interval)}. The firms
    are paired, so the firms' own spread (some cluster stably, some not) drops out."""
    from sklearn.metrics import adjusted_rand_score

    pairs = [(a, b) for a in seeds for b in seeds if a < b]
    n_firms = len(labels["torch", seeds[0]])
    floors = [statistics.mean(adjusted_rand_score(labels["torch", a][f], labels["torch", b][f]) for a, b in pairs)
              for f in range(n_firms)]
    gaps = {}
    for name in names:
        per_firm = [statistics.mean(adjusted_rand_score(labels[name, s][f], labels["torch", s][f]) for s in seeds)
                    - floors[f] for f in range(n_firms)]
        gaps[name] = (statistics.mean(per_firm), 1.96 * statistics.stdev(per_firm) / len(per_firm) ** 0.5)
    return gaps


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=None, help="700; 5000 with --backends")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each way per firm (the least is taken)")
    parser.add_argument("--batch-size", type=int, default=None, help="the program's default (EMBEDDING_BATCH_SIZE)")
    parser.add_argument("--model", default=DEFAULT_EMBEDDING_MODEL)
    parser.add_argument("--backends", default=None, help="compare these embedding backends (comma-separated)")
    parser.add_argument("--ari-firms", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=2)
    arguments = parser.parse_args()
    if arguments.backends:
        backends_main(arguments)
    else:
        arguments.sentences = arguments.sentences or 700
        main(arguments)
