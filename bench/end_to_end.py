"""``firmtopics run --input`` on the first N firms of the ECTSum file, as a user runs it:
a subprocess on a fresh embedded PostgreSQL. Prints wall time, sentences/s, peak memory
and the share of time per stage, read from the run's own JSON log.

    python bench/end_to_end.py --firms 12
    python bench/end_to_end.py --firms 0        # all 716 firms (about an hour on 2 CPUs)

The per-firm stages (embed, cluster, name, write) overlap in the pipeline, so their
shares are of the summed stage seconds; warm-up, themes and index are sequential.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import corpus, embedded_database, machine, table  # noqa: E402


def peak_rss(process: subprocess.Popen, every_s: float = 0.2) -> dict:
    """Poll a process (and its children) for resident memory until it exits; the peak
    lands in the returned dict under ``mb``."""
    peak = {"mb": 0.0}

    def poll():
        try:
            proc = psutil.Process(process.pid)
            while process.poll() is None:
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    break
                peak["mb"] = max(peak["mb"], rss / 2**20)
                time.sleep(every_s)
        except psutil.Error:
            pass

    threading.Thread(target=poll, daemon=True).start()
    return peak


def run(corpus_path: Path, database_url: str, log_path: Path) -> tuple[float, float, dict]:
    """Run the command; returns (wall seconds, peak RSS MB, the run_finished event)."""
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_FORMAT": "json"}
    env.pop("XAI_API_KEY", None)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "app", "run", "--input", str(corpus_path)],
                                   stdout=subprocess.DEVNULL, stderr=log, env=env)
        peak = peak_rss(process)
        process.wait()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"run failed with exit code {process.returncode}; see {log_path}")
    finished = [json.loads(line) for line in open(log_path) if '"run_finished"' in line]
    return wall, peak["mb"], finished[-1]


def main(args) -> None:
    folder = Path(tempfile.mkdtemp(prefix="firmtopics-e2e-"))
    path, n_firms, n_sentences, description = corpus(args.firms or None, folder)
    print(f"corpus: {description} ({n_sentences} sentences); {machine()}", flush=True)
    wall, rss, event = run(path, embedded_database(), folder / "log.jsonl")
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--firms", type=int, default=12, help="first N firms; 0 for all")
    main(parser.parse_args())
