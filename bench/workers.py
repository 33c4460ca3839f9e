"""What several workers on one run cost per firm: the time to claim a firm and to write it,
with N ``firmtopics run`` processes sharing a run against the same run done by one.

    python bench/workers.py                      # 24 firms, 1 worker against 3
    python bench/workers.py --firms 48 --workers 4

Two parts, both on one fresh embedded PostgreSQL:

1. **Real workers.** The corpus is ingested once; run ``one`` is done by a single
   ``firmtopics run``, then run ``many`` by N of them started together. Every firm's
   seconds are read from the workers' JSON logs (``firm_finished``): ``claim`` (from
   looking for a firm to holding one no other worker holds, passed-over firms included)
   and ``write`` (the firm's transaction). The figure is what N workers add per firm,
   (claim + write with N) - (claim + write alone), as a share of a firm's time alone.
   On a machine with fewer cores than workers, the workers also slow each other's
   compute and the server's; that lands in the write time too, so the figure is an upper
   bound for the coordination itself.
2. **Claims alone.** K claimers (``app.claims.FirmClaims``, each with its own connection
   as a worker has) go through 1,000 firms in the same order, each taking a firm,
   recording it and giving it back: the coordination with no compute around it, in
   milliseconds per firm, for K = 1, 3 and 8.
3. **The run-wide LLM limit.** Topics named at the fake LLM server (0.2 s and 1 s a
   reply) by one worker with its own 8 slots, and by 3 workers sharing 8 slots of the
   run through the database (``LLM_RUN_CONCURRENCY=8``): what sharing costs in throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import corpus, embedded_database, machine, table  # noqa: E402
from support import bare_run  # noqa: E402

COMPUTE = ("load", "embed", "cluster")


def start_worker(database_url: str, run: str, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_FORMAT": "json"}
    env.pop("XAI_API_KEY", None)
    return subprocess.Popen([sys.executable, "-m", "app", "run", "--run", run], stdout=subprocess.DEVNULL,
                            stderr=open(log_path, "w"), env=env)  # noqa: SIM115 - closed with the process


def workers(database_url: str, run: str, n: int, folder: Path) -> tuple[float, list[dict]]:
    """Run ``run`` with ``n`` workers at once; returns (wall seconds, every firm_finished event)."""
    logs = [folder / f"{run}-{i}.jsonl" for i in range(n)]
    started = time.perf_counter()
    processes = [start_worker(database_url, run, log) for log in logs]
    codes = [p.wait() for p in processes]
    wall = time.perf_counter() - started
    if any(codes):
        raise SystemExit(f"a worker of run {run!r} exited with {codes}; see {folder}")
    events = [json.loads(line) for log in logs for line in open(log) if '"firm_finished"' in line]
    return wall, events


def per_firm(events: list[dict]) -> dict:
    """Mean seconds per firm: claim, write, compute (load + embed + cluster), and the
    firm's whole time (every stage summed)."""
    def mean(key):
        return statistics.fmean(e["seconds"].get(key, 0.0) for e in events)

    return {"firms": len(events), "claim": mean("claim"), "write": mean("write"),
            "compute": sum(mean(k) for k in COMPUTE),
            "whole": statistics.fmean(sum(e["seconds"].values()) for e in events)}


async def claims_alone(database_url: str, claimers: int, n_firms: int = 1000) -> dict:
    """K claimers through ``n_firms`` firms of a run of their own; ms per firm in claims."""
    from app.claims import FirmClaims
    from app.database import create_pool

    pool = await create_pool(database_url, max_size=claimers + 2, vector=False)
    firms = [f"C{i:05d}" for i in range(n_firms)]
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO firms (firm_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING", firms)
        run_id = await bare_run(conn, f"claims-{claimers}", embedding_dim=384)
    in_claims = [0.0] * claimers
    taken = [0] * claimers

    async def claimer(k: int) -> None:
        async with FirmClaims(pool, run_id) as claims:
            for firm in firms:
                started = time.perf_counter()
                got = await claims.take(firm)
                in_claims[k] += time.perf_counter() - started
                if not got:
                    continue
                async with pool.acquire() as conn:  # the firm's write, reduced to its record
                    await conn.execute("INSERT INTO run_firms (run_id, firm_id, status, n_sentences, n_topics,"
                                       " n_outliers) VALUES ($1, $2, 'done', 0, 0, 0)", run_id, firm)
                started = time.perf_counter()
                await claims.release(firm)
                in_claims[k] += time.perf_counter() - started
                taken[k] += 1

    started = time.perf_counter()
    await asyncio.gather(*(claimer(k) for k in range(claimers)))
    wall = time.perf_counter() - started
    await pool.close()
    assert sum(taken) == n_firms, taken  # every firm taken once
    return {"claimers": claimers, "ms_per_firm": 1000 * sum(in_claims) / n_firms, "wall_s": wall,
            "taken": taken}


async def naming_wall(database_url: str, base_url: str, workers: int, run_wide: int | None,
                      topics: int = 240) -> float:
    """Seconds for ``workers`` namers of one run (``LLM_CONCURRENCY`` 8 each, the run-wide
    limit ``run_wide``) to name ``topics`` topics, split between them, at the fake server."""
    import anyio

    from app.database import create_pool
    from app.llm import LLMNamer
    from app.naming import TopicToName
    from app.settings import Settings

    settings = Settings(xai_api_key="bench-key", xai_base_url=base_url, xai_model="fake-model", llm_concurrency=8,
                        llm_run_concurrency=run_wide, llm_cache=False, log_format="json")
    pool = await create_pool(database_url, max_size=workers + 4)
    run_id = await bare_run(pool, f"naming-{workers}-{run_wide}-{time.time()}", embedding_dim=384)
    namers = [LLMNamer(settings, backoff_base_s=0.01, backoff_cap_s=0.02) for _ in range(workers)]
    started = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack, anyio.create_task_group() as tg:
        for w, namer in enumerate(namers):
            await stack.enter_async_context(namer)
            namer = await stack.enter_async_context(namer.for_run(pool, run_id))
            for n in range(w, topics, workers):
                tg.start_soon(namer.name_topic, TopicToName(
                    firm_id=f"F{n}", firm_name=f"Firm {n}", topic_no=n, keywords=[f"word{n}", "sales"],
                    sentences=[f"Sentence {n}."], sentence_ids=[n], n_sentences=10))
    wall = time.perf_counter() - started
    await pool.close()
    return wall


def main(args) -> None:
    folder = Path(tempfile.mkdtemp(prefix="firmtopics-workers-"))
    path, n_firms, n_sentences, description = corpus(args.firms, folder)
    print(f"corpus: {description} ({n_sentences} sentences); {machine()}", flush=True)
    url = embedded_database()
    env = {**os.environ, "DATABASE_URL": url}
    subprocess.run([sys.executable, "-m", "app", "ingest", str(path)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    wall_one, one = workers(url, "one", 1, folder)
    wall_many, many = workers(url, "many", args.workers, folder)
    assert len(one) == len(many) == n_firms, (len(one), len(many), n_firms)
    alone, shared = per_firm(one), per_firm(many)
    added = (shared["claim"] + shared["write"]) - (alone["claim"] + alone["write"])
    print()
    print(table(["workers", "firms", "claim ms/firm", "write ms/firm", "compute s/firm", "whole s/firm",
                 "(claim + write) / whole", "run wall s"],
                [[n, f["firms"], f"{1000 * f['claim']:.1f}", f"{1000 * f['write']:.1f}", f"{f['compute']:.2f}",
                  f"{f['whole']:.2f}", f"{(f['claim'] + f['write']) / f['whole']:.2%}", f"{wall:.0f}"]
                 for n, f, wall in ((1, alone, wall_one), (args.workers, shared, wall_many))]))
    print(f"\nadded per firm by {args.workers} workers: {1000 * added:.1f} ms = "
          f"{added / alone['whole']:.2%} of a firm's time alone (the issue's bound: 5%)")

    from app.logs import configure

    configure("json", stream=open(os.devnull, "w"))  # noqa: SIM115 - the in-process parts' logs: not wanted
    print()
    rows = []
    for k in (1, 3, 8):
        result = asyncio.run(claims_alone(url, k))
        rows.append([k, f"{result['ms_per_firm']:.2f}", f"{result['wall_s']:.2f}",
                     " / ".join(map(str, result["taken"]))])
    print(table(["claimers", "ms in claims per firm", "wall s (1,000 firms)", "firms taken by each"], rows))

    # 3. The run-wide LLM limit: 8 slots shared by 3 workers through the database, against
    # one worker's own semaphore of 8, at a fake server answering in 0.2 s and in 1 s.
    from common import fake_llm_server

    rows = []
    for latency, topics in ((0.2, 240), (1.0, 80)):
        with fake_llm_server(latency, "--api-key", "bench-key") as server:
            alone = min(asyncio.run(naming_wall(url, server.base_url, 1, None, topics)) for _ in range(2))
            shared = min(asyncio.run(naming_wall(url, server.base_url, 3, 8, topics)) for _ in range(2))
        rows.append([f"{latency:g} s", topics, f"{topics / 8 * latency:.1f}", f"{alone:.2f}", f"{shared:.2f}",
                     f"{alone / shared:.2f}"])
    print()
    print(table(["reply time", "topics", "ideal s", "1 worker, LLM_CONCURRENCY=8: s",
                 "3 workers, LLM_RUN_CONCURRENCY=8: s", "ratio"], rows))

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--firms", type=int, default=24, help="first N firms of the corpus")
    parser.add_argument("--workers", type=int, default=3, help="workers sharing the second run")
    main(parser.parse_args())
