"""Per-firm clustering time on the CPU backend, by firm size: what dominates, and what
cutting it costs in topic quality.

Firms of 500, 2,000 and 10,000 ECTSum sentences (whole firms in file order, joined: the
first firm with at least 500 sentences, then the next ones), embedded once and cached in
/tmp (the first run embeds 10,000 sentences: a few minutes on 2 CPUs), so only
clustering is timed. Each firm is clustered by ``app.clustering.cluster_documents`` with
the program's settings, three ways, side by side (the order rotates), for several seeds:

  before              umap-learn as the program used it: its own neighbour search (below
                      4,096 points all pairwise distances, its metric called from Python
                      for each pair; above, NN-descent) and its default 500 epochs
  exact neighbours    below 4,096 points the same neighbours and distances, bit for bit,
                      from ``app.clustering.exact_neighbours`` (one matrix product picks
                      candidates; only those pairs get umap-learn's arithmetic), handed
                      to umap-learn: the program's CPU backend now
  + 200 epochs        and 200 layout epochs instead of 500 (umap-learn's own default above
                      10,000 points)

"+ 200 epochs" is measured as the next step, not taken (see docs/benchmarks.md).

At 4,096 points and above the program leaves the neighbour search to umap-learn, so
"exact neighbours" is "before" there and is not run again.

Time ratio = before seconds / seconds of the way, median over seeds. Where the time goes
is measured inside each call (k-NN graph, layout epochs, HDBSCAN, c-TF-IDF, the rest).
Quality: topics found and outlier share (median over seeds), whether the labels are
identical to before's, and their agreement with before's (adjusted Rand index, same
seed) next to the agreement of before with itself under another seed: UMAP is chaotic,
so any change of its input or epochs moves labels about as much as a new seed does; a
change costs quality only if it moves them more. And, where there is a truth to compare
with, the three ways cluster the BBC News articles of the shared data (2,225 articles,
5 human labels; embedded once and cached too): normalised mutual information of the
topics with the human labels.

With ``--real-firms``, each real firm inside the 10,000 sentences is also clustered
whole, every way and seed: the topics a firm gets, and how often it comes out as two big
clusters. With ``--compile``, the numba compilation paid once per process (``warm_up``)
is measured in fresh subprocesses: first fit minus second fit of the 600-point warm-up
firm.

With ``--options``, nothing of the above runs: the per-firm HDBSCAN options (cluster
selection, smallest topic, min_samples, attaching outliers) are compared instead, on the
first N ECTSum firms in file order (12 by default, about 4,600 sentences; embedded once and
cached too). Each firm with at least ``min_firm_sentences`` sentences is clustered by
``app.clustering.cluster_firm`` with the program's settings changed by the option, its
outliers attached by ``attach_outliers``, and measured by ``app.quality.firm_quality``:
topics a firm, catch-all firms (largest topic > 50% of the clustered sentences), the
largest topic's share, HDBSCAN's outliers and what stays unassigned after attaching
(shares of all sentences), keyword coherence (NPMI) and diversity, and clustering seconds.

    python bench/clustering.py [--seeds 3] [--sizes 500,2000,10000] [--no-bbc]
                               [--real-firms] [--compile]
    python bench/clustering.py --options [--options-firms 12]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import gzip
import hashlib
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import clustering  # noqa: E402
from app.backend import CPU, ClusteringBackend  # noqa: E402
from app.quality import CATCH_ALL_SHARE, firm_quality, run_quality  # noqa: E402
from app.settings import RunSettings  # noqa: E402
from common import ECTSUM, SHARED_DATA, machine, table  # noqa: E402

CACHE = Path("/tmp/firmtopics-bench-cache")
BBC = SHARED_DATA / "topic_labels_bbc.jsonl.gz"


# --- the firms and their embeddings ------------------------------------------------------


def bbc_articles() -> tuple[list[str], list[str]]:
    """The BBC News articles and their human topic labels (shared data set B)."""
    rows = [json.loads(line) for line in gzip.open(BBC, "rt", encoding="utf-8")]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def joined_firms(n_sentences: int) -> list[str]:
    """Whole ECTSum firms in file order, from the first with >= 500 sentences, joined and
    cut at ``n_sentences``: every smaller size is a prefix (one real firm for 500)."""
    return joined_firm_spans(n_sentences)[0]


def joined_firm_spans(n_sentences: int) -> tuple[list[str], list[tuple[str, int, int]]]:
    """``joined_firms`` and, for each whole firm in it, ``(firm_id, start, end)``."""
    texts: list[str] = []
    spans = []
    firm, current = None, []
    with gzip.open(ECTSUM, "rt", encoding="utf-8") as src:
        for line in src:
            row = json.loads(line)
            if row["firm_id"] != firm:
                if current and (texts or len(current) >= 500):
                    spans.append((firm, len(texts), len(texts) + len(current)))
                    texts += current
                if len(texts) >= n_sentences:
                    break
                firm, current = row["firm_id"], []
            current.append(row["sentence"])
    return texts[:n_sentences], [span for span in spans if span[2] <= n_sentences]


def cached_embeddings(texts: list[str], model: str, source: str = "ectsum-joined") -> np.ndarray:
    """``Embedder.encode(texts)``, computed once and kept in /tmp.

    One file per source and model holds the longest prefix embedded so far; shorter
    requests take its first rows (``joined_firms`` of every size are prefixes of one
    sequence).
    """
    path = CACHE / f"{source}-{hashlib.sha1(model.encode()).hexdigest()[:12]}.npy"
    if path.exists():
        cached = np.load(path, mmap_mode="r")
        if len(cached) >= len(texts):
            return np.array(cached[: len(texts)])
    from app.embedding import load_embedder

    print(f"embedding {len(texts)} sentences once (cached in {path}) ...", flush=True)
    started = time.perf_counter()
    vectors = load_embedder(model).encode(texts)
    print(f"... {time.perf_counter() - started:.0f} s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


# --- the three ways ----------------------------------------------------------------------


def umap_as_before(*, n_neighbors, n_components, min_dist, random_state, n_epochs=None):
    """The CPU backend's UMAP as it was: umap-learn's defaults (500 epochs up to 10,000 points)."""
    from umap import UMAP

    return UMAP(n_neighbors=n_neighbors, n_components=n_components, min_dist=min_dist, metric="cosine",
                random_state=random_state, n_epochs=n_epochs)


# cluster_documents hands umap-learn exact neighbours only for the backend named "cpu".
WAYS = {
    "before": ClusteringBackend("cpu, as before", umap_as_before, CPU.make_hdbscan),
    "exact neighbours": ClusteringBackend("cpu", umap_as_before, CPU.make_hdbscan),
    "+ 200 epochs": ClusteringBackend("cpu", functools.partial(umap_as_before, n_epochs=200), CPU.make_hdbscan),
}


def program_way() -> str:
    """Which way the program's CPU backend is now (checked, not assumed)."""
    args = dict(n_neighbors=15, n_components=5, min_dist=0.0, random_state=1)
    for name, backend in WAYS.items():
        if backend.name == CPU.name and backend.make_umap(**args).get_params() == CPU.make_umap(**args).get_params():
            return name
    return "none of them"


def cluster(texts, vectors, backend, seed: int):
    settings = RunSettings()
    return clustering.cluster_documents(
        texts, vectors, backend=backend, n_neighbors=settings.umap_n_neighbors,
        n_components=settings.umap_n_components, min_dist=settings.umap_min_dist,
        min_cluster_size=settings.hdbscan_min_cluster_size, seed=seed, top_n_keywords=settings.top_n_keywords)


# --- where the time goes ----------------------------------------------------------------

PARTS = ["k-NN graph", "layout (init + epochs)", "HDBSCAN", "c-TF-IDF keywords", "representative docs"]


class Stopwatch:
    """Exclusive seconds per part: library functions are wrapped, and time spent in a
    wrapped call nested inside another counts for the inner one only."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)
        self._stack: list[float] = []

    def wrap(self, owner, name: str, part: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            self._stack.append(0.0)
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                nested = self._stack.pop()
                self.seconds[part] += elapsed - nested
                if self._stack:
                    self._stack[-1] += elapsed

        setattr(owner, name, timed)

    def take(self) -> dict[str, float]:
        taken, self.seconds = dict(self.seconds), collections.defaultdict(float)
        return taken


def instrument() -> Stopwatch:
    import bertopic._bertopic
    import hdbscan
    import umap.umap_

    watch = Stopwatch()
    for name in ("pairwise_distances", "nearest_neighbors", "fuzzy_simplicial_set"):
        watch.wrap(umap.umap_, name, "k-NN graph")
    watch.wrap(clustering, "exact_neighbours", "k-NN graph")
    watch.wrap(umap.umap_, "simplicial_set_embedding", "layout (init + epochs)")
    watch.wrap(hdbscan.HDBSCAN, "fit", "HDBSCAN")
    watch.wrap(bertopic._bertopic.BERTopic, "_extract_topics", "c-TF-IDF keywords")
    watch.wrap(bertopic._bertopic.BERTopic, "_save_representative_docs", "representative docs")
    return watch


# --- compilation, in a fresh process -----------------------------------------------------


def first_fit(way: str) -> None:
    """Child mode: the warm-up firm clustered twice in a fresh process; prints JSON."""
    settings = RunSettings()
    backend = WAYS[way]
    started = time.perf_counter()
    clustering.warm_up(backend, settings)
    first = time.perf_counter() - started
    clustering._warmed.clear()
    started = time.perf_counter()
    clustering.warm_up(backend, settings)
    print(json.dumps({"first": first, "second": time.perf_counter() - started}))


def compile_seconds(way: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--first-fit", way], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["first"] - result["second"]


# --- the benchmark -----------------------------------------------------------------------


def skipped(size: int, name: str) -> bool:
    """At and above UMAP_EXACT_BELOW points the program leaves the neighbour search to
    umap-learn, so "exact neighbours" is "before" there: not run again."""
    return name == "exact neighbours" and size >= clustering.UMAP_EXACT_BELOW


def time_firms(texts, vectors, sizes, seeds, watch) -> tuple[dict, dict]:
    """Every (size, way, seed) clustered once, ways side by side in a rotating order."""
    runs, graphs = {}, {}
    for seed in seeds:
        for size in sizes:
            names = [n for n in WAYS if not skipped(size, n)]
            shift = (seed + size) % len(names)
            for name in names[shift:] + names[:shift]:
                made = []

                def make_umap(backend=WAYS[name], **kw):
                    made.append(backend.make_umap(**kw))
                    return made[-1]

                backend = dataclasses.replace(WAYS[name], make_umap=make_umap)
                watch.take()
                started = time.perf_counter()
                result = cluster(texts[:size], vectors[:size], backend, seed)
                seconds = time.perf_counter() - started
                runs[size, name, seed] = (seconds, watch.take(), result.labels, len(result.clusters),
                                          result.n_outliers / size)
                if seed == seeds[0] and made and hasattr(made[0], "graph_"):
                    graphs[size, name] = made[0].graph_
            print(f"seed {seed}, {size:,} sentences: "
                  + ", ".join(f"{n} {runs[size, n, seed][0]:.1f} s" for n in names), flush=True)
    return runs, graphs


def real_firms(model: str, seeds: list[int]) -> None:
    """Each real firm of the 10,000 sentences (60 sentences or more) clustered whole, every
    way, every seed: topics found, and how often a firm comes out as two big clusters."""
    texts, spans = joined_firm_spans(10_000)
    vectors = cached_embeddings(texts, model)
    spans = [s for s in spans if s[2] - s[1] >= clustering.UMAP_MIN_DOCS]
    found = {name: [] for name in WAYS}
    seconds = {name: 0.0 for name in WAYS}
    for seed in seeds:
        for i, (_firm, start, end) in enumerate(spans):
            names = list(WAYS)
            for name in names[(i + seed) % 3:] + names[: (i + seed) % 3]:
                started = time.perf_counter()
                found[name].append(len(cluster(texts[start:end], vectors[start:end], WAYS[name], seed).clusters))
                seconds[name] += time.perf_counter() - started
        print(f"real firms, seed {seed}: done", flush=True)
    print()
    print(table([f"{len(spans)} real firms ({min(e - s for _, s, e in spans)}-{max(e - s for _, s, e in spans)} "
                 f"sentences) x {len(seeds)} seeds", "topics a firm (mean)", "firms with <= 2 topics",
                 "seconds (all)", "ratio before / this"],
                [[name, f"{np.mean(v):.2f}", f"{np.mean(np.array(v) <= 2):.0%}", f"{seconds[name]:.1f}",
                  f"{seconds['before'] / seconds[name]:.1f}"] for name, v in found.items()]))


# --- per-firm HDBSCAN options ------------------------------------------------------------

# name -> RunSettings overrides; the last three are the program's settings now.
NO_ATTACHING = dict(outlier_threshold=2.0)  # a cosine similarity never reaches 2
OPTIONS = {
    "eom, min 10 (earlier)": dict(cluster_selection="eom", hdbscan_min_cluster_size=10, min_topic_share=0.0,
                                  hdbscan_min_samples=None, **NO_ATTACHING),
    "leaf, min 10": dict(cluster_selection="leaf", hdbscan_min_cluster_size=10, min_topic_share=0.0,
                         hdbscan_min_samples=None, **NO_ATTACHING),
    "leaf, min 10, min_samples 3": dict(cluster_selection="leaf", hdbscan_min_cluster_size=10, min_topic_share=0.0,
                                        hdbscan_min_samples=3, **NO_ATTACHING),
    "leaf, min max(8, 3.3%), min_samples 5": dict(cluster_selection="leaf", hdbscan_min_cluster_size=8,
                                                  min_topic_share=0.033, hdbscan_min_samples=5, **NO_ATTACHING),
    "eom, min max(8, 3.3%), min_samples 3": dict(cluster_selection="eom", hdbscan_min_cluster_size=8,
                                                 min_topic_share=0.033, hdbscan_min_samples=3, **NO_ATTACHING),
    "leaf, min max(8, 3.3%), min_samples 3 (now, no attaching)": dict(NO_ATTACHING),
    "now: + outliers attached at 0.4": {},
    "+ attached at 0.3": dict(outlier_threshold=0.3),
    "+ attached at 0.5": dict(outlier_threshold=0.5),
}


def first_firms(n_firms: int) -> list[tuple[str, list[str]]]:
    """The first ``n_firms`` ECTSum firms in file order: ``(firm_id, sentences)`` each."""
    firms: list[tuple[str, list[str]]] = []
    with gzip.open(ECTSUM, "rt", encoding="utf-8") as src:
        for line in src:
            row = json.loads(line)
            if not firms or firms[-1][0] != row["firm_id"]:
                if len(firms) == n_firms:
                    break
                firms.append((row["firm_id"], []))
            firms[-1][1].append(row["sentence"])
    return firms


def option_rows(n_firms: int) -> list[list]:
    """One table row per entry of ``OPTIONS``: every firm of the first ``n_firms`` with at
    least ``min_firm_sentences`` sentences clustered whole with the option's settings,
    outliers attached, and the firms' ``firm_quality`` figures aggregated as a run's are
    (``run_quality``), plus the spread of topics, the largest share and the seconds."""
    defaults = RunSettings()
    firms = first_firms(n_firms)
    vectors = cached_embeddings([t for _, texts in firms for t in texts], defaults.embedding_model,
                                source=f"ectsum-first{n_firms}")
    spans, start = [], 0
    for firm, texts in firms:
        if len(texts) >= defaults.min_firm_sentences:
            spans.append((firm, texts, vectors[start:start + len(texts)]))
        start += len(texts)
    # UMAP's numba compilation, once per process, kept out of the first firm's seconds.
    clustering.warm_up(CPU, defaults, largest_firm=max(len(texts) for _, texts, _ in spans))
    rows = []
    for name, option in OPTIONS.items():
        settings = dataclasses.replace(defaults, **option)
        figures, seconds = [], 0.0
        for _firm, texts, embeddings in spans:
            started = time.perf_counter()
            result = clustering.cluster_firm(texts, embeddings, settings, CPU)
            seconds += time.perf_counter() - started
            final = clustering.attach_outliers(embeddings, result.labels, settings.outlier_threshold)
            figures.append(firm_quality(result.labels, final, [c.keywords for c in result.clusters], texts))
        run = run_quality(figures, [], 0, 0)["firms"]
        topics = [f["topics"] for f in figures]
        rows.append([name, f"{run['mean_topics']:.1f} ({min(topics)}-{max(topics)})",
                     f"{run['firms_with_catch_all']} of {len(figures)}", f"{run['mean_largest_topic_share']:.0%}",
                     f"{max(f['largest_topic_share'] for f in figures):.0%}", f"{run['outlier_share']:.1%}",
                     f"{run['unassigned_share']:.1%}", _figure(run["mean_coherence"], 3),
                     _figure(run["mean_diversity"], 2), f"{seconds:.1f}"])
        print(f"{name}: done", flush=True)
    return rows


def _figure(value: float | None, decimals: int) -> str:
    """``value`` with ``decimals`` decimals; "n/a" for None (no firm had a topic)."""
    return "n/a" if value is None else f"{value:.{decimals}f}"


def main(args) -> None:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    sizes = [int(s) for s in args.sizes.split(",")]
    texts = joined_firms(max(sizes))
    model = RunSettings().embedding_model
    vectors = cached_embeddings(texts, model)
    seeds = list(range(42, 42 + args.seeds))
    print(f"firms: {', '.join(f'{s:,}' for s in sizes)} ECTSum sentences; seeds {seeds}; {machine()}", flush=True)
    program = program_way()
    print(f"the program's CPU backend now: {program}", flush=True)

    compile_s = {}
    if args.compile:
        for way in ("before", program):
            compile_s[way] = compile_seconds(way)
            print(f"numba compilation in a fresh process ({way}): {compile_s[way]:.1f} s", flush=True)

    # Compile everything in this process before timing anything.
    for backend in WAYS.values():
        clustering.warm_up(backend, RunSettings(), largest_firm=max(sizes))
    watch = instrument()
    runs, graphs = time_firms(texts, vectors, sizes, seeds, watch)

    # Time and where it goes
    print()
    rows = []
    for size in sizes:
        for name in WAYS:
            if skipped(size, name):
                rows.append([f"{size:,}", name, "= before", "1.0"] + ["-"] * (len(PARTS) + 1))
                continue
            seconds = [runs[size, name, s][0] for s in seeds]
            ratio = statistics.median(runs[size, "before", s][0] / runs[size, name, s][0] for s in seeds)
            parts = {p: statistics.median(runs[size, name, s][1].get(p, 0.0) for s in seeds) for p in PARTS}
            total = statistics.median(seconds)
            other = max(total - sum(parts.values()), 0.0)
            rows.append([f"{size:,}", name, f"{total:.2f}",
                         f"**{ratio:.1f}**" if name == program else f"{ratio:.1f}"]
                        + [f"{parts[p]:.2f}" for p in PARTS] + [f"{other:.2f}"])
    print(table(["sentences", "way", "seconds (median)", "ratio before / this"] + [f"{p} s" for p in PARTS]
                + ["other s"], rows))

    # Quality on the firms
    print()
    rows = []
    for size in sizes:
        baseline = statistics.mean(adjusted_rand_score(runs[size, "before", a][2], runs[size, "before", b][2])
                                   for a, b in itertools.combinations(seeds, 2)) if len(seeds) > 1 else float("nan")
        for name in WAYS:
            if skipped(size, name):
                continue
            topics = statistics.median(runs[size, name, s][3] for s in seeds)
            outliers = statistics.median(runs[size, name, s][4] for s in seeds)
            agreement = (f"{baseline:.2f} (other seed)" if name == "before" else
                         f"{statistics.mean(adjusted_rand_score(runs[size, 'before', s][2], runs[size, name, s][2]) for s in seeds):.2f}")
            identical = "-" if name == "before" else (
                "yes" if all(np.array_equal(runs[size, "before", s][2], runs[size, name, s][2]) for s in seeds)
                else "no")
            if name == "exact neighbours" and (size, name) in graphs and (size, "before") in graphs:
                same_graph = (graphs[size, name] != graphs[size, "before"]).nnz == 0
                identical += " (UMAP graph " + ("identical" if same_graph else "differs") + ")"
            rows.append([f"{size:,}", name, f"{topics:g}", f"{outliers:.0%}",
                         " / ".join(str(runs[size, name, s][3]) for s in seeds), identical, agreement])
    print(table(["sentences", "way", "topics (median)", "outliers (median)", "topics per seed",
                 "labels identical to before's", "ARI to before, same seed"], rows))

    # Quality against human labels
    if args.real_firms:
        real_firms(model, seeds)
    if args.bbc and BBC.exists():
        articles, labels = bbc_articles()
        bbc_vectors = cached_embeddings(articles, model, source="bbc")
        scores = {name: [] for name in WAYS}
        for seed in seeds:
            names = list(WAYS)
            for name in names[seed % 3:] + names[: seed % 3]:
                started = time.perf_counter()
                result = cluster(articles, bbc_vectors, WAYS[name], seed)
                seconds = time.perf_counter() - started
                clustered = result.labels != -1
                scores[name].append((len(result.clusters), 1 - clustered.mean(),
                                     normalized_mutual_info_score(labels, result.labels),
                                     normalized_mutual_info_score(np.array(labels)[clustered],
                                                                  result.labels[clustered]), seconds))
            print(f"BBC, seed {seed}: " + ", ".join(f"{n} {scores[n][-1][4]:.1f} s" for n in WAYS), flush=True)
        print()
        print(table(["BBC News, 2,225 articles, 5 human labels", "topics (median)", "outliers (median)",
                     "NMI with the labels (mean)", "NMI, clustered articles only (mean)", "seconds (median)",
                     "ratio before / this"],
                    [[name, f"{statistics.median(x[0] for x in v):g}", f"{statistics.median(x[1] for x in v):.0%}",
                      f"{statistics.mean(x[2] for x in v):.3f}", f"{statistics.mean(x[3] for x in v):.3f}",
                      f"{statistics.median(x[4] for x in v):.1f}",
                      f"{statistics.median(b[4] / x[4] for b, x in zip(scores['before'], v)):.1f}"]
                     for name, v in scores.items()]))
    if compile_s:
        print()
        print(table(["numba compilation, once per process (600-point warm-up firm)", "seconds", "ratio"],
                    [[way, f"{s:.1f}", f"{compile_s['before'] / s:.1f}"] for way, s in compile_s.items()]))
    print(f"\nsettings: {RunSettings().umap_n_neighbors} neighbours, {RunSettings().umap_n_components} components, "
          f"min_cluster_size {RunSettings().hdbscan_min_cluster_size}; seeds {seeds}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500,2000,10000")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--compile", action="store_true",
                        help="also measure numba compilation in two fresh processes (about a minute)")
    parser.add_argument("--no-bbc", dest="bbc", action="store_false", help="skip the check against human labels")
    parser.add_argument("--real-firms", action="store_true",
                        help="also cluster each real firm of the 10,000 sentences whole (about 2 minutes)")
    parser.add_argument("--options", action="store_true",
                        help="compare the per-firm HDBSCAN options instead (a few minutes)")
    parser.add_argument("--options-firms", type=int, default=12,
                        help="with --options: how many ECTSum firms, first in file order (default 12)")
    parser.add_argument("--first-fit", choices=list(WAYS), help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.first_fit:
        first_fit(parsed.first_fit)
    elif parsed.options:
        if not ECTSUM.exists():
            print(f"no ECTSum corpus at {ECTSUM}: nothing to measure")
            sys.exit(0)
        rows = option_rows(parsed.options_firms)
        print()
        print(table(["option", "topics a firm (mean, min-max)", f"firms with largest topic > {CATCH_ALL_SHARE:.0%}",
                     "largest topic (mean)", "largest topic (max)", "HDBSCAN outliers", "unassigned after attaching",
                     "NPMI coherence (mean)", "diversity (mean)", "clustering seconds (all firms)"], rows))
        print(f"\nfirst {parsed.options_firms} ECTSum firms in file order (those with at least "
              f"{RunSettings().min_firm_sentences} sentences), seed {RunSettings().seed}; {machine()}")
    else:
        main(parsed)
