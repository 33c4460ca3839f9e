"""One giant firm's clustering, on synthetic vectors: what FIRMTOPICS_MAX_FIRM_SENTENCES
bounds.

A firm of N sentences (``--sentences``) is clustered as the firm stage clusters it after
embedding: the sentences it is clustered on (``app.clustering.firm_sample``: all of them
up to ``--cap``, else a seeded sample of ``--cap``), UMAP + HDBSCAN + c-TF-IDF
(``cluster_firm``), the rest attached to their nearest topic (``attach_outliers``), and
the firm's quality figures (``firm_quality``), with the program's settings otherwise.
Embedding is left out: its time is the model's (benchmarks sections 2 and 7) and its
memory is the firm's vectors, held once (``Embedder.encode`` fills one array).

The vectors: 384-dimensional unit vectors (all-MiniLM-L6-v2's size) around 20 subjects,
each a subject's direction plus noise (cosine about 0.7 to it); each sentence's text is
a few words of its subject and a few shared ones. Seeded, so a size always gives the
same firm. Prints one JSON line: ``sentences``, ``cap``, ``clustered``, ``topics``,
``nearest_share``, ``unassigned_share``, ``seconds`` (clustering, attaching, quality),
``data_gb`` (resident memory once the firm is made: its vectors and texts) and
``peak_rss_gb`` (the process's peak). Run each size in a process of its own, so each peak
is its own.

    python bench/giant_firm.py --sentences 200000               # the default cap: clustered whole
    python bench/giant_firm.py --sentences 1000000 --cap 200000  # a giant firm, sampled
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.backend import CPU  # noqa: E402
from app.clustering import attach_outliers, cluster_firm, firm_sample  # noqa: E402
from app.quality import firm_quality  # noqa: E402
from app.settings import RunSettings  # noqa: E402

DIMENSION = 384
SUBJECTS = 20
NOISE = 1.0  # the noise vector's length against the subject's unit direction
CHUNK = 100_000  # sentences made at a time, so making them needs no more memory than holding them


def synthetic_firm(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """``n`` unit vectors (float32, one a row) and their texts (see the module docstring)."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(SUBJECTS, DIMENSION))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    subjects = rng.integers(0, SUBJECTS, n)
    vectors = np.empty((n, DIMENSION), dtype=np.float32)
    for start in range(0, n, CHUNK):
        part = subjects[start:start + CHUNK]
        noisy = directions[part] + rng.normal(scale=NOISE / np.sqrt(DIMENSION), size=(len(part), DIMENSION))
        vectors[start:start + len(part)] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    words = rng.integers(0, 8, (n, 3))
    texts = [f"subject{s}alpha subject{s}w{a} subject{s}w{b} common{c} quarter"
             for s, (a, b, c) in zip(subjects.tolist(), words.tolist())]
    return vectors, texts


def resident_gb() -> float:
    """This process's resident memory now, in GB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, required=True)
    parser.add_argument("--cap", type=int, default=RunSettings().max_firm_sentences)
    args = parser.parse_args()
    settings = RunSettings(max_firm_sentences=args.cap)
    vectors, texts = synthetic_firm(args.sentences)
    data_gb = resident_gb()
    seconds = {}
    started = time.perf_counter()
    sample = firm_sample(len(texts), settings, "GIANT")
    clustering = cluster_firm(texts, vectors, settings, CPU, sample=sample)
    seconds["cluster"] = time.perf_counter() - started
    started = time.perf_counter()
    final = attach_outliers(vectors, clustering.labels, settings.outlier_threshold)
    seconds["attach"] = time.perf_counter() - started
    started = time.perf_counter()
    quality = firm_quality(clustering.labels, final, [c.keywords for c in clustering.clusters], texts)
    seconds["quality"] = time.perf_counter() - started
    print(json.dumps({
        "sentences": args.sentences, "cap": args.cap, "clustered": len(texts) if sample is None else len(sample),
        "topics": quality["topics"], "nearest_share": quality["nearest_share"],
        "unassigned_share": quality["unassigned_share"], "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "data_gb": round(data_gb, 2), "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
    }))


if __name__ == "__main__":
    main()
