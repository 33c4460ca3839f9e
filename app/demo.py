"""``firmtopics demo``: the whole job on a generated sample corpus, with no settings.

The demo keeps to a database of its own (an embedded PostgreSQL in ``<data dir>/demo``),
so its made-up firms never mix with a researcher's real corpus, whatever
``DATABASE_URL`` says. It prints the themes it found and the commands to explore them.
"""

from __future__ import annotations

import dataclasses

from app.database import open_database
from app.errors import EXIT_INTERRUPTED, EXIT_OK
from app.sample import write_sample_corpus
from app.settings import Settings

DEMO_RUN = "demo"


def demo_settings(settings: Settings) -> Settings:
    """The settings the demo runs with: its own embedded database, everything else as given."""
    return dataclasses.replace(settings, database_url=None, data_dir=settings.data_dir / "demo")


async def run_demo(settings: Settings) -> int:
    """Make the sample corpus, ingest it, run the job, print the themes and next steps.

    Returns the command's exit code: ``EXIT_INTERRUPTED`` when a signal stopped the job
    (the demo resumes when started again), else ``EXIT_OK``."""
    from app.ingest import ingest_corpus
    from app.job import describe_outcome, run_with_signals

    settings = demo_settings(settings)
    corpus = write_sample_corpus(settings.data_dir / "sample_corpus.jsonl.gz")
    print(f"sample corpus: {corpus}")
    async with open_database(settings) as pool:
        await ingest_corpus(pool, corpus)
        outcome = await run_with_signals(pool, settings, run_name=DEMO_RUN)
        print(describe_outcome(outcome))
        async with pool.acquire() as conn:
            themes = await conn.fetch(
                "SELECT th.theme_id, th.name, th.n_topics, th.n_firms FROM themes th JOIN runs r USING (run_id)"
                " WHERE r.name = $1 ORDER BY th.n_topics DESC, th.theme_id",
                DEMO_RUN,
            )
    if themes:
        print("\nthemes found:")
        for theme in themes:
            print(f"  [{theme['theme_id']}] {theme['name']}  ({theme['n_topics']} topics from {theme['n_firms']} firms)")
    print(next_steps(settings))
    return EXIT_INTERRUPTED if outcome.status == "interrupted" else EXIT_OK


def next_steps(settings: Settings) -> str:
    """What to try after the demo: commands against the demo's own database."""
    env = f"FIRMTOPICS_DATA_DIR={settings.data_dir}"
    return "\n".join([
        "",
        "next, explore the demo's database (it lives in its own folder):",
        f"  {env} firmtopics status --run {DEMO_RUN}",
        f"  {env} firmtopics search \"supply chain costs\" --run {DEMO_RUN}",
        f"  {env} firmtopics search \"we bought back shares\" --level sentence --run {DEMO_RUN}",
        f"  {env} firmtopics show theme ID   (an id from the list above; also: show topic ID, show firm ID --run {DEMO_RUN})",
        f"  {env} firmtopics trends --run {DEMO_RUN}   (themes over time: the sample's calls carry quarters)",
        f"  {env} firmtopics panel --run {DEMO_RUN} --out demo-panel.csv   (each firm's share of each theme,"
        " quarter by quarter, for regressions)",
        f"  {env} firmtopics report --run {DEMO_RUN} --out demo-report   (one HTML page: themes and a topic map)",
        f"  {env} firmtopics export --run {DEMO_RUN} --out demo-export   (Parquet files for pandas, polars, R)",
        "",
        "to run on your own corpus (JSON Lines, CSV or Parquet with firm_id and sentence columns):",
        "  firmtopics run --input my_corpus.jsonl.gz",
    ])
