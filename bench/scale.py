"""The program at the scale of a large study, on synthetic data.

``--theme-topics N``: the theme stage's grouping alone (fine themes by
``app.clustering.theme_labels``, then the levels above them by ``broader_levels``) on N
synthetic topic vectors, with the program's settings. Names are not made: a theme's
offline name needs no clustering, and LLM names are network time. Prints one JSON line:
``topics``, ``themes`` (fine), ``levels`` (themes per level, fine first), ``method``,
``seconds`` (the grouping, not the making of the vectors), ``cpu_seconds`` (the same in
the process's CPU time, all threads: less moved by other jobs on the machine) and ``peak_rss_gb`` (the
process's peak resident memory, vectors included).

The vectors: 384-dimensional unit vectors, clustered as a corpus's topics are: about
sqrt(N) subjects (as many as the themes the program makes), grouped in about
sqrt(sqrt(N)) families; each topic is its subject's direction plus noise. Seeded, so a
size always gives the same vectors.

``--method`` forces a way of grouping: ``exact`` (Ward on all topics), ``two-stage``
(micro-clusters first, then Ward on their centres), or ``auto`` (the program's choice:
exact up to ``WARD_EXACT_MAX`` topics). ``--compare`` runs exact and two-stage each in a
fresh process (so each peak memory is its own) and prints one JSON line with both, their
ratios, the agreement of their fine themes (adjusted Rand index), and each one's with
the subjects the topics were made from.

    python bench/scale.py --theme-topics 200000
    python bench/scale.py --theme-topics 16000 --compare

``--sentences N``: the database part at N synthetic sentences: the theme stage, the
attaching, the indexes, then every reading command, one JSON line each (``what``,
``seconds``, ``peak_rss_gb``); ``bench/scale_database.py`` says how.

    python bench/scale.py --sentences 1000000
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))  # synthetic_run, shared with the tests

from app.clustering import WARD_EXACT_MAX, broader_levels, theme_count, theme_labels  # noqa: E402
from app.settings import RunSettings  # noqa: E402
from synthetic_run import synthetic_topics  # noqa: E402

EXACT_MAX = {"auto": WARD_EXACT_MAX, "exact": math.inf, "two-stage": 0}


def theme_stage(n: int, method: str, labels_out: Path | None = None) -> dict:
    """Group ``n`` synthetic topics as the theme stage does; the JSON line's fields.
    With ``labels_out``, the fine themes are saved there (``np.save``) for a comparison."""
    vectors, _ = synthetic_topics(n)
    settings = RunSettings()
    started, cpu_started = time.perf_counter(), time.process_time()
    fine = theme_labels(vectors, theme_count(n, settings), exact_max=EXACT_MAX[method], seed=settings.seed)
    levels = broader_levels(vectors, fine, settings.theme_top_level_size)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    if labels_out is not None:
        np.save(labels_out, fine)
    return {"topics": n, "themes": int(fine.max()) + 1, "levels": [int(fine.max()) + 1]
            + [int(level.max()) + 1 for level in levels], "method": method, "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu_seconds, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def compare(n: int) -> dict:
    """Exact Ward and the two-stage grouping side by side on the same ``n`` topics, each in
    a fresh process; both results, time and memory ratios (exact / two-stage), their
    agreement (ARI of the fine themes) and each one's agreement with the subjects the
    topics were made from."""
    from sklearn.metrics import adjusted_rand_score

    results, labels = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for method in ("exact", "two-stage"):
            out = Path(folder) / f"{method}.npy"
            line = subprocess.run([sys.executable, __file__, "--theme-topics", str(n), "--method", method,
                                   "--labels-out", str(out)], check=True, capture_output=True, text=True).stdout
            results[method], labels[method] = json.loads(line), np.load(out)
    exact, two = results["exact"], results["two-stage"]
    _, subject = synthetic_topics(n)
    return {"topics": n, "exact": exact, "two-stage": two,
            "seconds_ratio": round(exact["seconds"] / max(two["seconds"], 1e-9), 2),
            "memory_ratio": round(exact["peak_rss_gb"] / two["peak_rss_gb"], 2),
            "ari": round(adjusted_rand_score(labels["exact"], labels["two-stage"]), 3),
            "ari_subjects": {method: round(adjusted_rand_score(subject, labels[method]), 3) for method in labels}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--theme-topics", type=int, metavar="N",
                      help="run the theme stage's grouping on N synthetic topics")
    size.add_argument("--sentences", type=int, metavar="N",
                      help="the database part: a run of N synthetic sentences, its later stages and the commands")
    parser.add_argument("--method", choices=sorted(EXACT_MAX), default="auto")
    parser.add_argument("--compare", action="store_true", help="exact and two-stage side by side")
    parser.add_argument("--labels-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # one step of --sentences, in a process of its own
    args = parser.parse_args()
    if args.sentences is not None:
        import scale_database

        if args.stage:
            scale_database.run_stage(args.stage, args.sentences)
        else:
            scale_database.measure(args.sentences)
        return
    result = compare(args.theme_topics) if args.compare else theme_stage(args.theme_topics, args.method,
                                                                          args.labels_out)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
