"""Does clustering really go on while the LLM is awaited?

The same firms are run three ways, side by side in one process:

  (a) offline   names from keywords: the compute time alone, T_a
  (b) overlap   the real pipeline against the fake LLM server, whose latency is set so
                that LLM time alone (calls x latency / concurrency) equals T_a
  (c) serial    for comparison, a design that names firm by firm after clustering it

Efficiency = max(T_a, T_llm_alone) / T. A perfect overlap scores 1.0 (the slower of the
two kinds of work hides the other); naming firm by firm scores about 0.5.

    python bench/overlap.py [--firms 8] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import logs  # noqa: E402
from app.backend import choose_backend  # noqa: E402
from app.clustering import warm_up  # noqa: E402
from app.database import open_database  # noqa: E402
from app.embedding import load_embedder  # noqa: E402
from app.ingest import ingest_file  # noqa: E402
from app.llm import make_namer  # noqa: E402
from app.naming import OfflineNamer  # noqa: E402
from app.pipeline import FirmStage, compute_firm, name_firm, run_firm_stage  # noqa: E402
from app.progress import Progress  # noqa: E402
from app.runs import firms_to_do, open_run  # noqa: E402
from app.schema import fix_embedding_dimension  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.writer import write_firm_with_retry  # noqa: E402
from common import corpus, embedded_database, fake_llm_server, machine, table  # noqa: E402


async def start_run(pool, settings, embedder, backend, name):
    async with pool.acquire() as conn:
        run = await open_run(conn, name, settings.run, embedding_dim=embedder.dimension, backend=backend.describe())
        return run.run_id, await firms_to_do(conn, run.run_id)


async def pipelined(pool, settings, embedder, backend, namer, name) -> tuple[float, float]:
    """The firm stage as the program runs it; returns its seconds and the compute
    (embed + cluster) seconds inside it."""
    run_id, todo = await start_run(pool, settings, embedder, backend, name)
    stage = FirmStage(pool, run_id, settings.run, embedder, backend, namer)
    progress = Progress(len(todo), sum(f.n_sentences for f in todo), every_s=1e9)
    started = time.perf_counter()
    await run_firm_stage(stage, todo, progress)
    compute = progress.stage_seconds.get("embed", 0) + progress.stage_seconds.get("cluster", 0)
    return time.perf_counter() - started, compute


async def serial(pool, settings, embedder, backend, namer, name) -> float:
    """Cluster a firm, wait for all its names, write it, then the next firm."""
    run_id, todo = await start_run(pool, settings, embedder, backend, name)
    stage = FirmStage(pool, run_id, settings.run, embedder, backend, namer)
    started = time.perf_counter()
    for firm in todo:
        result = await name_firm(namer, await compute_firm(stage, firm))
        await write_firm_with_retry(pool, run_id, result)
    return time.perf_counter() - started


async def main(args) -> None:
    folder = Path(tempfile.mkdtemp(prefix="firmtopics-overlap-"))
    logs.configure("json", stream=open(folder / "log.jsonl", "w"))
    settings = Settings.from_env({"DATABASE_URL": embedded_database(), "LLM_CONCURRENCY": str(args.concurrency)})
    path, n_firms, n_sentences, description = corpus(args.firms, folder)
    print(f"corpus: {description} ({n_sentences} sentences); {machine()}", flush=True)
    async with open_database(settings) as pool:
        await ingest_file(pool, path)
        embedder = load_embedder(settings.run.embedding_model)
        backend = choose_backend()
        warm_up(backend, settings.run)
        async with pool.acquire() as conn:
            await fix_embedding_dimension(conn, embedder.dimension)

        t_a, compute_a = await pipelined(pool, settings, embedder, backend, OfflineNamer(), "offline")
        async with pool.acquire() as conn:
            calls = await conn.fetchval("SELECT count(*) FROM topics t JOIN runs r USING (run_id) WHERE r.name = 'offline'")
        latency = t_a * args.concurrency / calls
        t_llm = calls * latency / args.concurrency
        print(f"(a) offline: {t_a:.1f} s for {calls} topics; fake LLM latency set to {latency:.2f} s", flush=True)

        with fake_llm_server(latency) as server:
            llm = dataclasses.replace(settings, xai_api_key="bench-key", xai_base_url=server.base_url)
            async with make_namer(llm) as namer:
                t_b, compute_b = await pipelined(pool, settings, embedder, backend, namer, "overlap")
                usage_b = namer.usage()
            print(f"(b) overlap: {t_b:.1f} s, peak in flight {usage_b.get('peak_in_flight')}", flush=True)
            t_c = None
            if not args.skip_serial:
                async with make_namer(llm) as namer:
                    t_c = await serial(pool, settings, embedder, backend, namer, "serial")
                print(f"(c) serial: {t_c:.1f} s", flush=True)

    best = max(t_a, t_llm)
    print()
    print(table(
        ["design", "seconds", "LLM calls", "efficiency = max(T_a, T_llm) / T"],
        [
            ["(a) offline names (compute alone), T_a", f"{t_a:.1f}", 0, "-"],
            ["LLM alone, calls x latency / concurrency, T_llm", f"{t_llm:.1f}", calls, "-"],
            ["(b) pipeline: compute overlapped with naming, T_b", f"{t_b:.1f}", usage_b.get("requests"),
             f"**{best / t_b:.2f}**"],
            ["(c) name firm by firm after clustering", f"{t_c:.1f}" if t_c else "skipped", calls,
             f"{best / t_c:.2f}" if t_c else "-"],
        ],
    ))
    print(f"\nfirms: {n_firms}, LLM_CONCURRENCY: {args.concurrency}, latency: {latency:.2f} s, "
          f"peak requests in flight: {usage_b.get('peak_in_flight')}, retries: {usage_b.get('retries')}")
    print(f"compute (embed + cluster) seconds: {compute_a:.1f} in (a), {compute_b:.1f} in (b) "
          f"(the machine's noise and the event loop's share of the CPU show here)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--firms", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--skip-serial", action="store_true", help="leave out design (c)")
    asyncio.run(main(parser.parse_args()))
