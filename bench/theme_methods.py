"""The theme stage's two groupings on the topics of a real finished run, side by side.

Exact Ward keeps every pairwise distance and is used up to ``WARD_EXACT_MAX`` topics;
above it, the two-stage grouping (k-means micro-clusters, then Ward on their centres)
keeps time and memory about linear. This runs both on the same topic vectors -- those
the theme stage made for the run (``app.themes.topic_vectors``) -- with the run's
settings, and prints one JSON line: for each way, the fine themes, the largest theme's
share of topics, the sizes, the levels above and the seconds; their agreement, the
adjusted Rand index (ARI) of the fine themes and of the top level; and, as the
yardstick, the same ARIs between exact Ward on all topics and exact Ward on a seeded
nine tenths of them (how far exact Ward's own themes move with its input).

    python bench/theme_methods.py --run NAME     # the database the commands use
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.clustering import broader_levels, theme_count, theme_labels  # noqa: E402
from app.settings import RunSettings  # noqa: E402
from app.themes import THEMED_TOPICS, topic_vectors  # noqa: E402


async def run_topics(url: str, run_name: str) -> tuple[np.ndarray, RunSettings]:
    """The run's topic vectors, as its theme stage made them, and its settings."""
    from app.database import create_pool
    from app.embedding import load_embedder

    pool = await create_pool(url, max_size=2)
    try:
        async with pool.acquire() as conn:
            run = await conn.fetchrow("SELECT run_id, settings FROM runs WHERE name = $1", run_name)
            if run is None:
                raise SystemExit(f"no run {run_name!r} in the database")
            rows = await conn.fetch(THEMED_TOPICS.format(where=""), run["run_id"])
    finally:
        await pool.close()
    settings = RunSettings(**{k: v for k, v in run["settings"].items() if k in RunSettings.__dataclass_fields__})
    needs_model = any(r["name_source"] == "llm" or r["centre"] is None for r in rows)
    embedder = load_embedder(settings.embedding_model) if needs_model else None
    vectors, _ = await topic_vectors(rows, embedder)
    return vectors, settings


def grouping(vectors: np.ndarray, settings: RunSettings, exact_max: float) -> tuple[dict, np.ndarray, np.ndarray]:
    """One way's figures, its fine themes and its top level."""
    started = time.perf_counter()
    fine = theme_labels(vectors, theme_count(len(vectors), settings), exact_max=exact_max, seed=settings.seed)
    levels = broader_levels(vectors, fine, settings.theme_top_level_size)
    seconds = time.perf_counter() - started
    top = fine
    for parents in levels:
        top = parents[top]
    sizes = np.bincount(fine)
    figures = {"fine_themes": len(sizes), "largest_share": round(float(sizes.max() / len(vectors)), 4),
               "sizes": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())},
               "levels": [len(sizes)] + [int(level.max()) + 1 for level in levels],
               "topics_linked": len(vectors), "seconds": round(seconds, 2)}
    return figures, fine, top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="default", help="the finished run whose topics to group")
    args = parser.parse_args()
    from sklearn.metrics import adjusted_rand_score

    from app.database import resolve_url
    from app.settings import Settings

    vectors, settings = asyncio.run(run_topics(resolve_url(Settings.from_env(os.environ)), args.run))
    exact, exact_fine, exact_top = grouping(vectors, settings, exact_max=float("inf"))
    two, two_fine, two_top = grouping(vectors, settings, exact_max=0)
    # The yardstick: how far exact Ward itself moves when a tenth of the topics is left
    # out (a seeded sample), on the topics both groupings hold.
    kept = np.sort(np.random.default_rng(settings.seed).choice(len(vectors), int(0.9 * len(vectors)), replace=False))
    _, sub_fine, sub_top = grouping(vectors[kept], settings, exact_max=float("inf"))
    print(json.dumps({"run": args.run, "topics": len(vectors), "exact": exact, "two-stage": two,
                      "ari_fine": round(adjusted_rand_score(exact_fine, two_fine), 3),
                      "ari_top": round(adjusted_rand_score(exact_top, two_top), 3),
                      "ari_fine_exact_without_a_tenth": round(adjusted_rand_score(exact_fine[kept], sub_fine), 3),
                      "ari_top_exact_without_a_tenth": round(adjusted_rand_score(exact_top[kept], sub_top), 3)}))


if __name__ == "__main__":
    main()
