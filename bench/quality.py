"""Result quality, measured: the figures every run now stores (``runs.quality``), on real
firms, for the clustering settings of the program side by side with the earlier ones;
and, on a labelled set, how well sentences land in the right theme.

    python bench/quality.py --firms 12                  # the first 12 ECTSum firms
    python bench/quality.py --firm-ids A,AA,AAN,AAP     # named firms
    python bench/quality.py --bbc --groups 20           # BBC News, dealt into 20 "firms"
    python bench/quality.py --firms 716 --ways now      # all firms, today's settings only

Firms: both ways run the whole job in this process (``app.job.run_job``, offline names,
the CPU backend) on one embedded PostgreSQL, one after the other, as two runs of the
same ingested corpus:

  earlier   HDBSCAN's excess-of-mass selection, a fixed minimum topic of 10 sentences,
            min_samples = min_cluster_size (HDBSCAN's default), no outlier attached
  now       the program's defaults (RunSettings())

The theme stage is today's in both (the earlier theme stage is gone from the code; its
figures on the same firms are quoted in docs/quality.md from the run that found them).
The firm stage's wall time is printed for both, and the ratio now / earlier.

BBC: the 2,225 labelled articles (5 labels), shuffled with a fixed seed and dealt into N
groups taken as firms, go through the whole job; each article's theme is compared with
its label (NMI, ARI, harmonic purity: ``app.quality.label_scores``; an article in no
theme counts as a cluster of its own). Side by side, one plain BERTopic model fitted on
all articles with the same embeddings (BERTopic's defaults: UMAP 15 neighbours, 5
components; HDBSCAN min_cluster_size 10, excess of mass), reduced to the run's number of
themes (``nr_topics``) and as it comes, and reduced with every outlier then given its
nearest topic (BERTopic's ``reduce_outliers``). Both depend on UMAP's random state, and one seed
can move a score by a few hundredths either way, so each is run with several seeds (the
same for both) and compared by the mean.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import anyio
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.backend import CPU  # noqa: E402
from app.database import open_database  # noqa: E402
from app.embedding import load_embedder  # noqa: E402
from app.ingest import ingest_file  # noqa: E402
from app.job import run_job  # noqa: E402
from app.naming import OfflineNamer  # noqa: E402
from app.quality import label_scores  # noqa: E402
from app.settings import RunSettings, Settings  # noqa: E402
from common import ECTSUM, SHARED_DATA, embedded_database, first_firms, machine, table  # noqa: E402

BBC = SHARED_DATA / "topic_labels_bbc.jsonl.gz"

WAYS = {
    "earlier": RunSettings(cluster_selection="eom", hdbscan_min_cluster_size=10, min_topic_share=0.0,
                           hdbscan_min_samples=None, outlier_threshold=2.0),
    "now": RunSettings(),
}


def named_firms(ids: list[str], target: Path) -> Path:
    """The sentences of the firms ``ids`` from ECTSum, as a corpus file."""
    wanted = set(ids)
    with gzip.open(ECTSUM, "rt", encoding="utf-8") as src, gzip.open(target, "wt", encoding="utf-8") as out:
        for line in src:
            if json.loads(line)["firm_id"] in wanted:
                out.write(line)
    return target


def bbc_corpus(groups: int, target: Path, seed: int = 0) -> dict[str, str]:
    """The BBC articles dealt into ``groups`` firms; returns {doc_id: label}."""
    rows = [json.loads(line) for line in gzip.open(BBC, "rt", encoding="utf-8")]
    random.Random(seed).shuffle(rows)
    labels = {}
    with gzip.open(target, "wt", encoding="utf-8") as out:
        for i, row in enumerate(rows):
            doc_id = f"bbc{i:05d}"
            labels[doc_id] = row["label"]
            out.write(json.dumps({"firm_id": f"group{i % groups:02d}", "doc_id": doc_id, "sentence": row["text"]}) + "\n")
    return labels


async def run_ways(corpus: Path, ways: dict[str, RunSettings]) -> dict[str, dict]:
    """Run the job once per way on one fresh database; returns per way its quality,
    firm-stage seconds, themes and the pool's URL (for further reads)."""
    settings = Settings(database_url=embedded_database())
    embedder = load_embedder(RunSettings().embedding_model)
    results = {}
    async with open_database(settings) as pool:
        await ingest_file(pool, corpus)
        for name, run_settings in ways.items():
            started = time.perf_counter()
            outcome = await run_job(pool, run_settings, run_name=name, embedder=embedder, backend=CPU,
                                    namer=OfflineNamer())
            async with pool.acquire() as conn:
                quality = await conn.fetchval("SELECT quality FROM runs WHERE name = $1", name)
                levels = [r["n"] for r in await conn.fetch(
                    "SELECT count(*) AS n FROM themes WHERE run_id = $1 GROUP BY level ORDER BY level",
                    outcome.run_id)]
            results[name] = {"quality": quality, "firms_s": outcome.timings.get("firms_s"),
                             "themes_s": outcome.timings.get("themes_s", 0.0),
                             "wall_s": time.perf_counter() - started, "run_id": outcome.run_id,
                             "themes": outcome.themes, "levels": levels}
        results["_url"] = settings.database_url
    return results


def firm_rows(results: dict) -> list[list]:
    """One table row per figure, one column per way."""
    names = [n for n in results if not n.startswith("_")]

    def figure(path, fmt):
        cells = []
        for n in names:
            value = results[n]["quality"]
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            cells.append("n/a" if value is None else fmt(value))
        return cells

    pct = lambda v: f"{v:.1%}"  # noqa: E731
    two = lambda v: f"{v:.2f}"  # noqa: E731
    rows = [
        ["firms whose largest topic holds > 50% of their clustered sentences",
         *figure(("firms", "firms_with_catch_all"), str)],
        ["mean largest-topic share", *figure(("firms", "mean_largest_topic_share"), two)],
        ["topics a firm (mean)", *figure(("firms", "mean_topics"), lambda v: f"{v:.1f}")],
        ["sentences with no topic", *figure(("firms", "unassigned_share"), pct)],
        ["  outliers of HDBSCAN", *figure(("firms", "outlier_share"), pct)],
        ["  attached by nearness", *figure(("firms", "nearest_share"), pct)],
        ["coherence (NPMI, mean over firms)", *figure(("firms", "mean_coherence"), two)],
        ["diversity (mean over firms)", *figure(("firms", "mean_diversity"), two)],
        ["themes", *figure(("themes", "themes"), str)],
        ["largest theme's share of topics", *figure(("themes", "largest_theme_share"), pct)],
        ["topics not linked to a theme", *figure(("themes", "unlinked"), str)],
        ["sentences in no topic attached to a theme", *figure(("themes", "sentences_attached_share"), pct)],
        ["sentences in no theme", *figure(("themes", "sentences_in_no_theme_share"), pct)],
        ["themes per level, fine first", *[str(results[n]["levels"]) for n in names]],
        ["theme stage (s); share of the run", *[f"{results[n]['themes_s']:.1f}; {results[n]['themes_s'] / results[n]['wall_s']:.1%}"
                                               for n in names]],
        ["firm stage (s)", *[f"{results[n]['firms_s']:.1f}" for n in names]],
    ]
    return rows


def firms_main(args) -> None:
    folder = Path(tempfile.mkdtemp(prefix="firmtopics-quality-"))
    if args.firm_ids:
        path = named_firms(args.firm_ids.split(","), folder / "firms.jsonl.gz")
        description = f"ECTSum firms {args.firm_ids}"
    else:
        path, n, sentences = first_firms(ECTSUM, args.firms, folder / "firms.jsonl.gz")
        description = f"ECTSum, first {n} firms ({sentences} sentences)"
    print(f"corpus: {description}; {machine()}", flush=True)
    ways = {name: WAYS[name] for name in args.ways.split(",")}
    results = anyio.run(run_ways, path, ways)
    names = [n for n in results if not n.startswith("_")]
    print()
    print(table(["measure", *names], firm_rows(results)))
    if {"now", "earlier"} <= set(names):
        ratio = results["now"]["firms_s"] / results["earlier"]["firms_s"]
        print(f"\nfirm stage time, now / earlier: {ratio:.2f}")
    worst = results["now"]["quality"].get("worst_firms") or []
    print("firms to look at (now):", ", ".join(f"{w['firm_id']} {w['largest_topic_share']:.2f}" for w in worst[:5]))


async def bbc_assignments(url: str, run_id: int) -> tuple[list[str], list[int], np.ndarray, list[str]]:
    """Per article of the run: doc_id, theme (-1 for none), embedding, text."""
    import asyncpg
    from pgvector.asyncpg import register_vector

    conn = await asyncpg.connect(url)
    try:
        await register_vector(conn)
        rows = await conn.fetch(
            # The theme a researcher reads: the topic's, or the nearest theme's for an
            # article in no topic (sentence_assignments.theme_via says which).
            "SELECT sa.doc_id, coalesce(sa.theme_id, -1) AS theme, st.embedding, sa.text"
            " FROM sentence_assignments sa JOIN sentence_topics st USING (run_id, sentence_id)"
            " WHERE sa.run_id = $1 ORDER BY sa.sentence_id",
            run_id,
        )
    finally:
        await conn.close()
    return ([r["doc_id"] for r in rows], [r["theme"] for r in rows],
            np.stack([r["embedding"].to_numpy() for r in rows]).astype(np.float32), [r["text"] for r in rows])


def plain_bertopic(texts: list[str], embeddings: np.ndarray, nr_topics=None, seed: int = 42,
                   reduce_outliers: bool = False) -> list[int]:
    """One BERTopic model on all documents, its defaults, the same embeddings; with
    ``reduce_outliers``, each outlier then given its nearest topic by BERTopic's
    ``reduce_outliers`` (embeddings strategy), as a BERTopic user may do."""
    from bertopic import BERTopic
    from hdbscan import HDBSCAN
    from sklearn.feature_extraction.text import CountVectorizer
    from umap import UMAP

    model = BERTopic(umap_model=UMAP(n_neighbors=15, n_components=5, min_dist=0.0, metric="cosine",
                                     random_state=seed),
                     hdbscan_model=HDBSCAN(min_cluster_size=10, metric="euclidean", cluster_selection_method="eom",
                                           prediction_data=True),
                     vectorizer_model=CountVectorizer(stop_words="english"), nr_topics=nr_topics, verbose=False)
    labels, _ = model.fit_transform(texts, embeddings=embeddings)
    if reduce_outliers:
        labels = model.reduce_outliers(texts, labels, strategy="embeddings", embeddings=embeddings)
    return list(labels)


def bbc_main(args) -> None:
    folder = Path(tempfile.mkdtemp(prefix="firmtopics-bbc-"))
    truth_by_doc = bbc_corpus(args.groups, folder / "bbc.jsonl.gz")
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"corpus: BBC News, {len(truth_by_doc)} articles, 5 labels, dealt into {args.groups} groups; "
          f"seeds {seeds}; {machine()}", flush=True)
    # One run per seed (UMAP's random state of every firm); plain BERTopic with the same seed.
    ways = {f"seed {seed}": dataclasses.replace(WAYS["now"], seed=seed) for seed in seeds}
    results = anyio.run(run_ways, folder / "bbc.jsonl.gz", ways)
    rows, totals = [], {}
    for seed, way in zip(seeds, ways):
        docs, themes, embeddings, texts = anyio.run(bbc_assignments, results["_url"], results[way]["run_id"])
        truth = [truth_by_doc[d] for d in docs]
        n_themes = results[way]["themes"]
        for name, predicted in (
            ("firmtopics: sentence -> theme", themes),
            ("plain BERTopic, reduced to the run's number of themes",
             plain_bertopic(texts, embeddings, n_themes, seed)),
            ("plain BERTopic, its defaults", plain_bertopic(texts, embeddings, None, seed)),
            ("plain BERTopic, reduced, then every outlier to its nearest topic",
             plain_bertopic(texts, embeddings, n_themes, seed, reduce_outliers=True)),
        ):
            scores = label_scores(predicted, truth)
            clusters = len(set(predicted) - {-1})
            unassigned = sum(1 for p in predicted if p == -1) / len(predicted)
            rows.append([name, seed, clusters, f"{unassigned:.1%}", scores["nmi"], scores["ari"],
                         scores["harmonic_purity"]])
            totals.setdefault(name, []).append([scores["nmi"], scores["ari"], scores["harmonic_purity"]])
    rows += [[f"**{name}, mean**", "", "", "", *[round(float(v), 4) for v in np.mean(values, axis=0)]]
             for name, values in totals.items()]
    print()
    print(table(["clustering", "seed", "clusters", "unassigned", "NMI", "ARI", "harmonic purity"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--firms", type=int, default=12, help="the first N ECTSum firms")
    parser.add_argument("--firm-ids", default="", help="comma-separated firm ids instead of the first N")
    parser.add_argument("--ways", default="earlier,now", help="which settings to run: earlier, now or both")
    parser.add_argument("--bbc", action="store_true", help="the labelled BBC set instead of firms")
    parser.add_argument("--groups", type=int, default=20, help="BBC: how many groups (firms) to deal into")
    parser.add_argument("--seeds", default="42,1,2", help="BBC: the seeds to run both ways with")
    arguments = parser.parse_args()
    bbc_main(arguments) if arguments.bbc else firms_main(arguments)
