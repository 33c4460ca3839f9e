"""``firmtopics search`` as a whole process: the query embedded by torch (as before) and
from the model's ONNX export without torch (``app.read.query_embedder``), side by side.

    python bench/search_process.py                          # makes the demo's run first
    python bench/search_process.py --data-dir DIR --run NAME --repeats 7

A search as a user runs it, ``python -m app search TEXT --run NAME``, timed whole
(Python's start, the imports, the database, the model, the query, the output), in four
ways, their order rotating from one repeat to the next:

* ``torch``: the query embedded as it was before, by the run's model loaded through
  sentence-transformers (torch, transformers, the weights), with every reading
  command's module imported as the command line did then (pandas, scikit-learn among
  them); the rest is today's program;
* ``export``: today's program, the query embedded from the export, without torch;

each once with no embedded PostgreSQL running (the process starts the server and, as
its last user, stops it at exit) and once with the server held by another process (as
while a run or a notebook is using it: the search joins it and leaves it running). With
``DATABASE_URL`` set there is no embedded server, and the two are the same.

Then one search in a process that times its own steps (imports, the server, the pool
and schema, the run, the model, the query), the rest of its wall time being Python's
start and its exit (the server's stop), and names any of torch, sentence-transformers, transformers,
pandas, scikit-learn, BERTopic, UMAP, HDBSCAN it imported. When the bench made the run
itself, the first search, which builds the export (importing torch to export it), is
timed too.

Prints one table: median and least wall seconds of each way, and its CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, table  # noqa: E402

TEXT = "supply chain costs"
HEAVY = ("torch", "sentence_transformers", "transformers", "pandas", "sklearn", "bertopic", "umap", "hdbscan")
WAYS = ("torch", "export")


def child_torch(argv: list[str]) -> int:
    """The search as it was: every reading command's module imported, the query embedded
    by the run's model through sentence-transformers."""
    import app.read.query_embedder
    from app.cli import main
    from app.embedding import load_embedder
    from app.read import export, panel, report, search, show, trends  # noqa: F401  (as cmd_read did)

    app.read.query_embedder.load_query_embedder = lambda run, models_dir: load_embedder(run["model"])
    return main(argv)


def child_phases(run_name: str) -> int:
    """One search, each step timed; prints a JSON line of seconds and the heavy modules
    imported."""
    started = time.perf_counter()
    import asyncio

    from app.database import open_database, resolve_url
    from app.read.query_embedder import load_query_embedder
    from app.read.search import search
    from app.runs import load_run
    from app.settings import Settings

    laps = {"imports": time.perf_counter() - started}

    def lap(what: str, since: float) -> float:
        now = time.perf_counter()
        laps[what] = now - since
        return now

    settings = Settings.from_env()
    at = time.perf_counter()
    resolve_url(settings)  # the embedded server's start (or join); open_database joins it again
    at = lap("server start or join", at)

    async def go(at: float) -> None:
        async with open_database(settings) as pool, pool.acquire() as conn:
            at = lap("pool and schema", at)
            run = await load_run(conn, run_name)
            at = lap("run", at)
            embedder = load_query_embedder(run, settings.data_dir / "models")
            at = lap("model", at)
            await search(conn, TEXT, run_name=run_name, embedder=embedder)
            lap("embed and query", at)

    asyncio.run(go(time.perf_counter()))
    laps["until exit"] = time.perf_counter() - started
    print(json.dumps({"laps": laps, "heavy": [m for m in HEAVY if m in sys.modules]}))
    return 0


def timed(argv: list[str], env: dict) -> tuple[float, float]:
    """Run ``argv`` to its end; returns (wall seconds, CPU seconds of it and the children
    it waited for). Raises when it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed: {done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def search_argv(way: str, run: str) -> list[str]:
    if way == "torch":
        return [sys.executable, __file__, "--child", "torch", "--", "search", TEXT, "--run", run]
    return [sys.executable, "-m", "app", "search", TEXT, "--run", run]


class HeldServer:
    """The embedded server held by another process while in this context (left by
    closing its stdin, so it exits cleanly and lets the last user stop the server)."""

    def __init__(self, env: dict):
        self.env = env

    def __enter__(self):
        code = ("import sys\nfrom app.database import resolve_url\nfrom app.settings import Settings\n"
                "resolve_url(Settings.from_env()); print('held', flush=True); sys.stdin.read()")
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=self.env, cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.proc.stdout:  # after the library's own log lines
            if line.strip() == "held":
                return self
        raise RuntimeError("the process holding the server ended before it held it")

    def __exit__(self, *exc):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def compare(env: dict, run: str, repeats: int) -> dict:
    """Each way, with and without a held server, ``repeats`` times in rotating order;
    returns {(way, held): [(wall, cpu), ...]}."""
    embedded = not env.get("DATABASE_URL")
    conditions = [(way, held) for way in WAYS for held in ((False, True) if embedded else (False,))]
    results = {c: [] for c in conditions}
    for _ in (1, 2):  # untimed: the files in the page cache, as after any earlier search
        timed(search_argv("export", run), env)
    for i in range(repeats):
        for way, held in conditions[i % len(conditions):] + conditions[:i % len(conditions)]:
            if held:
                with HeldServer(env):
                    results[(way, held)].append(timed(search_argv(way, run), env))
            else:
                results[(way, held)].append(timed(search_argv(way, run), env))
    return results


def phases(env: dict, run: str) -> dict:
    """One search timing its own steps, with no server running beforehand."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", "phases", "--run", run], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    found = json.loads(done.stdout.strip().splitlines()[-1])
    # The rest: Python's start before the first step, and the exit after the last, which
    # stops the server the process started.
    found["laps"]["Python's start and exit (server stop)"] = wall - found["laps"].pop("until exit")
    return {**found, "wall": wall}


def demo_run(folder: Path, env: dict) -> tuple[dict, str, float]:
    """The demo's run made in ``folder``; returns (its environment, run name, seconds of
    the first search: the one that builds the export)."""
    subprocess.run([sys.executable, "-m", "app", "demo"], env={**env, "FIRMTOPICS_DATA_DIR": str(folder)},
                   cwd=ROOT, check=True, capture_output=True)
    env = {**env, "FIRMTOPICS_DATA_DIR": str(folder / "demo")}  # the demo keeps its data there
    return env, "demo", timed(search_argv("export", "demo"), env)[0]


def report(results: dict, found: dict, first: float | None) -> None:
    rows = []
    for (way, held), times in results.items():
        walls, cpus = [w for w, _ in times], [c for _, c in times]
        server = "held by another process" if held else "started and stopped"
        rows.append([way, server, f"{statistics.median(walls):.2f}", f"{min(walls):.2f}",
                     f"{statistics.median(cpus):.2f}"])
    print(table(["query embedded by", "embedded server", "wall s (median)", "wall s (least)", "CPU s (median)"],
                rows))
    for held in (False, True):
        if ("torch", held) in results:
            ratio = (statistics.median(w for w, _ in results[("torch", held)])
                     / statistics.median(w for w, _ in results[("export", held)]))
            print(f"torch / export, server {'held' if held else 'started and stopped'}: {ratio:.2f}x")
    print("\none search, its steps (s):", json.dumps({k: round(v, 3) for k, v in found["laps"].items()}),
          f"wall {found['wall']:.2f}; heavy modules imported: {found['heavy'] or 'none'}")
    if first is not None:
        print(f"first search of the torch run (builds the export): {first:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="a data folder holding the run (default: make the demo's)")
    parser.add_argument("--run", default="demo", help="the run to search (with --data-dir)")
    parser.add_argument("--repeats", type=int, default=5, help="searches of each way and condition")
    parser.add_argument("--child", choices=("torch", "phases"), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child == "torch":
        sys.exit(child_torch(rest[1:] if rest[:1] == ["--"] else rest))
    if args.child == "phases":
        sys.exit(child_phases(args.run))
    env = {k: v for k, v in os.environ.items() if k != "XAI_API_KEY"}
    env.update(PYTHONPATH=str(ROOT), LOG_FORMAT="json", HF_HUB_OFFLINE="1")
    folder, first = None, None
    if args.data_dir:
        env, run = {**env, "FIRMTOPICS_DATA_DIR": str(args.data_dir)}, args.run
    else:  # not under /root: as root the server runs as another OS user that must reach it
        folder = Path(tempfile.mkdtemp(prefix="firmtopics-search-", dir="/tmp"))
        env, run, first = demo_run(folder, env)
    try:
        results = compare(env, run, args.repeats)
        report(results, phases(env, run), first)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
