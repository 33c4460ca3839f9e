"""``firmtopics run --input`` on the first N firms of the ECTSum file, as a user runs it:
a subprocess on a fresh embedded PostgreSQL. Prints wall time, sentences/s, peak memory
and the share of time per stage, read from the run's own JSON log.

    python bench/end_to_end.py --firms 12
    python bench/end_to_end.py --firms 0        # all 716 firms (about an hour on 2 CPUs)

Two comparisons, each run after the other on the same firms, each on a fresh database:

    python bench/end_to_end.py --firms 40 --backends torch-fp32,torch,onnx-int8
        the whole job under each ``FIRMTOPICS_EMBED_BACKEND`` (``torch-fp32``: torch with
        ``EMBEDDING_PRECISION=fp32``; ``torch``: the default precision, bfloat16 on a CPU
        that has it), and its wall as a ratio of the first's (above 1 = faster). A backend
        written ``NAME@REF`` runs the program as it was at the git commit ``REF`` (from a
        worktree of it, removed after), so a change is timed against what came before it.
    python bench/end_to_end.py --firms 32 --llm-latency 1 [--repeats 3]
        the whole job with offline names (T_off), and naming through the fake LLM server
        with that latency a request (T_on); LLM time alone is T_llm = requests x latency /
        LLM_CONCURRENCY; efficiency = max(T_off, T_llm) / T_on (1.0: the slower kind of
        work hides the other). Then where the LLM run's extra seconds went, stage by stage.

The per-firm stages (embed, cluster, name, write) overlap in the pipeline, so their
shares are of the summed stage seconds; warm-up, themes and index are sequential.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import corpus, embedded_database, fake_llm_server, machine, table  # noqa: E402


def peak_rss(process: subprocess.Popen, every_s: float = 0.2) -> dict:
    """Poll a process for resident memory until it exits; the peak lands in the returned
    dict under ``mb``, its CPU seconds (user and system, at the last look) under ``cpu_s``."""
    peak = {"mb": 0.0, "cpu_s": 0.0}

    def poll():
        try:
            proc = psutil.Process(process.pid)
            while process.poll() is None:
                try:
                    rss = proc.memory_info().rss
                    peak["cpu_s"] = sum(proc.cpu_times()[:2])
                except psutil.Error:
                    break
                peak["mb"] = max(peak["mb"], rss / 2**20)
                time.sleep(every_s)
        except psutil.Error:
            pass

    threading.Thread(target=poll, daemon=True).start()
    return peak


def run(corpus_path: Path, database_url: str, log_path: Path, code: Path | None = None,
        **settings: str) -> tuple[float, dict, dict]:
    """Run the command, with these extra settings in its environment, from the program in
    the folder ``code`` (this one's by default); returns (wall seconds, {"mb": peak RSS
    MB, "cpu_s": its CPU seconds}, the run_finished event)."""
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_FORMAT": "json"}
    env.pop("XAI_API_KEY", None)
    env.update(settings)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "app", "run", "--input", str(corpus_path)],
                                   stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=code)
        peak = peak_rss(process)
        process.wait()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"run failed with exit code {process.returncode}; see {log_path}")
    finished = [json.loads(line) for line in open(log_path) if '"run_finished"' in line]
    return wall, peak, finished[-1]


def main(args) -> None:
    folder = Path(tempfile.mkdtemp(prefix="firmtopics-e2e-"))
    path, n_firms, n_sentences, description = corpus(args.firms or None, folder)
    print(f"corpus: {description} ({n_sentences} sentences); {machine()}", flush=True)
    wall, used, event = run(path, embedded_database(), folder / "log.jsonl")
    rss = used["mb"]
    stages = event["firm_stage_seconds"]
    summed = sum(stages.values())
    rows = [[f"firm stage: {name}", f"{seconds:.1f}", f"{seconds / summed:.0%} of firm stage"]
            for name, seconds in stages.items()]
    rows += [[name, f"{event.get(key, 0):.1f}", f"{event.get(key, 0) / wall:.0%} of wall"]
             for name, key in (("warm-up (numba, once)", "warm_up_s"), ("firm stage (wall)", "firms_s"),
                               ("themes", "themes_s"), ("index", "index_s"))]
    print()
    print(table(["stage", "seconds", "share"], rows))
    print(f"\nfirms: {n_firms} ({event['done']} done, {event['skipped']} skipped, {event['failed']} failed), "
          f"topics: {event['topics']}, themes: {event['themes']}")
    print(f"wall (process, incl. model load and ingest): {wall:.1f} s; run wall: {event['wall_s']:.1f} s; "
          f"sentences/s over the run: {n_sentences / event['wall_s']:.1f}; "
          f"over the firm stage: {n_sentences / event['firms_s']:.1f}; peak RSS: {rss:.0f} MB")


def compare_backends(args) -> None:
    """The whole job under each embedding backend, one after another."""
    folder = Path(tempfile.mkdtemp(prefix="firmtopics-e2e-"))
    path, n_firms, n_sentences, description = corpus(args.firms or None, folder)
    print(f"corpus: {description} ({n_sentences} sentences); {machine()}", flush=True)
    rows, first = [], None
    for backend in args.backends.split(","):
        name, _, ref = backend.partition("@")
        settings = {"FIRMTOPICS_EMBED_BACKEND": name}
        if name == "torch-fp32":
            settings = {"FIRMTOPICS_EMBED_BACKEND": "torch", "EMBEDDING_PRECISION": "fp32"}
        with program_at(ref) as code:
            wall, used, event = run(path, embedded_database(), folder / f"log-{backend}.jsonl", code, **settings)
        rss = used["mb"]
        first = first or event["wall_s"]
        stages = event["firm_stage_seconds"]
        rows.append([backend, f"{wall:.1f}", f"{event['wall_s']:.1f}", f"{stages.get('embed', 0):.1f}",
                     f"{stages.get('cluster', 0):.1f}", f"{event.get('themes_s', 0):.1f}", f"{event.get('index_s', 0):.1f}",
                     f"{rss:.0f}", f"**{first / event['wall_s']:.2f}**"])
        print(f"{backend}: run wall {event['wall_s']:.1f} s", flush=True)
    print()
    print(table(["backend", "process wall (s)", "run wall (s)", "embed (s)", "cluster (s)", "themes (s)", "index (s)",
                 "peak RSS (MB)", "run wall ratio to the first"], rows))


@contextlib.contextmanager
def program_at(ref: str):
    """A worktree of this repository at the commit ``ref`` (None: this folder, as it is)."""
    if not ref:
        yield None
        return
    root = Path(__file__).resolve().parents[1]
    tree = Path(tempfile.mkdtemp(prefix="firmtopics-at-")) / ref
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(tree), ref], check=True,
                   capture_output=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)], check=False)


def events(log_path: Path) -> list[dict]:
    """The JSON log's events, in order."""
    found = []
    for line in open(log_path):
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def stage_seconds(log: list[dict]) -> dict:
    """Seconds of the run's parts from its log: the firm, theme and index stages (between
    their started and finished events), and each theme level's naming."""
    from datetime import datetime

    def at(event):
        return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()

    started, found, levels = {}, {}, 0
    for event in log:
        name = event.get("event")
        if name == "stage_started":
            started[event["stage"]] = at(event)
        elif name == "stage_finished" and event["stage"] in started:
            found[event["stage"]] = at(event) - started[event["stage"]]
        elif name == "themes_named":
            levels += 1
            found[f"theme level {levels} named ({event['themes']} themes)"] = event["seconds"]
    return found


def overlap(args) -> None:
    """The whole job with offline names and with names from the fake LLM server, in
    ``--repeats`` pairs, the order within a pair alternating; each figure is the median
    over the pairs (one pair moves by several seconds with the machine's load)."""
    folder = Path(tempfile.mkdtemp(prefix="firmtopics-e2e-"))
    path, n_firms, n_sentences, description = corpus(args.firms or None, folder)
    print(f"corpus: {description} ({n_sentences} sentences); {machine()}", flush=True)
    walls, parts, cpu = {"off": [], "on": []}, {"off": [], "on": []}, {"off": [], "on": [], "server": []}
    with fake_llm_server(args.llm_latency) as server:
        llm = {"XAI_API_KEY": "bench-key", "XAI_BASE_URL": server.base_url, "LLM_CONCURRENCY": str(args.concurrency)}
        for pair in range(args.repeats):
            for kind in ("off", "on") if pair % 2 == 0 else ("on", "off"):
                log_path = folder / f"log-{kind}-{pair}.jsonl"
                served_before = server.stats()["requests"]
                server_cpu_before = sum(psutil.Process(server.proc.pid).cpu_times()[:2])
                wall, used, event = run(path, embedded_database(), log_path, **(llm if kind == "on" else {}))
                walls[kind].append(wall)
                cpu[kind].append(used["cpu_s"])
                found = stage_seconds(events(log_path))
                found["firm stage: embedding (summed over firms)"] = event["firm_stage_seconds"]["embed"]
                parts[kind].append(found)
                if kind == "on":
                    requests = server.stats()["requests"] - served_before
                    cpu["server"].append(sum(psutil.Process(server.proc.pid).cpu_times()[:2]) - server_cpu_before)
                print(f"pair {pair + 1}, {'LLM' if kind == 'on' else 'offline'} names: {wall:.1f} s", flush=True)
    t_llm = requests * args.llm_latency / args.concurrency
    efficiencies = [max(off, t_llm) / on for off, on in zip(walls["off"], walls["on"])]
    median = statistics.median
    print()
    print(table(["", "seconds (median)"], [
        ["offline names, T_off (process wall)", f"{median(walls['off']):.1f}"],
        [f"LLM alone, T_llm = {requests} requests x {args.llm_latency} s / {args.concurrency}", f"{t_llm:.1f}"],
        ["LLM names, T_on (process wall)", f"{median(walls['on']):.1f}"],
        ["efficiency = max(T_off, T_llm) / T_on, pair by pair",
         " / ".join(f"{e:.2f}" for e in efficiencies) + f"; median **{median(efficiencies):.2f}**"],
    ]))
    names = list(dict.fromkeys(name for kind in parts.values() for found in kind for name in found))

    def typical(kind: str, name: str) -> float:
        return median(found.get(name, 0.0) for found in parts[kind])

    print()
    print(table(["part (median over pairs)", "offline (s)", "LLM (s)", "LLM - offline (s)"],
                [[name, f"{typical('off', name):.1f}", f"{typical('on', name):.1f}",
                  f"{typical('on', name) - typical('off', name):+.1f}"] for name in names]
                + [["whole process", f"{median(walls['off']):.1f}", f"{median(walls['on']):.1f}",
                    f"{median(walls['on']) - median(walls['off']):+.1f}"],
                   ["CPU seconds of the process", f"{median(cpu['off']):.1f}", f"{median(cpu['on']):.1f}",
                    f"{median(cpu['on']) - median(cpu['off']):+.1f}"],
                   ["CPU seconds of the fake LLM server (same machine)", "-", f"{median(cpu['server']):.1f}", "-"]]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--firms", type=int, default=12, help="first N firms; 0 for all")
    parser.add_argument("--backends", default=None, help="compare the whole job under these embedding backends")
    parser.add_argument("--llm-latency", type=float, default=None, help="compare offline names with a fake LLM")
    parser.add_argument("--concurrency", type=int, default=8, help="LLM_CONCURRENCY with --llm-latency")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs with --llm-latency")
    arguments = parser.parse_args()
    if arguments.backends:
        compare_backends(arguments)
    elif arguments.llm_latency is not None:
        overlap(arguments)
    else:
        main(arguments)
