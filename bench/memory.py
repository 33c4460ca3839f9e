"""Is memory bounded by a firm, not by the corpus?

Two checks, each a pair of ``python -m app`` subprocesses (as a user runs them, on fresh
embedded PostgreSQL servers) whose peak resident memory is polled with psutil (the
server's processes are not counted):

  run      ``python -m app run --input`` on N firms and on 10 x N firms of about the same
           size (ECTSum firms of 100-160 sentences, in file order), same settings; then
           the same pair again with glibc's ``MALLOC_MMAP_THRESHOLD_=65536`` (allocations
           of 64 KiB and more are mapped and unmapped one by one instead of being carved
           from the heap, which fragments as tensors of ever other sizes come and go)
  ingest   ``python -m app ingest`` of a 100,000-row and a 1,000,000-row file, made in
           /tmp from ECTSum rows repeated with new doc_ids (so every row is new)

Ratio = peak RSS of the big input / peak RSS of the small one (1.0 = flat; the goal is
<= 1.2). Peak memory does not depend on the load of a shared machine the way time does,
so each side runs once.

    python bench/memory.py [--firms 3] [--rows 1000000] [--part run|ingest|both]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ECTSUM, embedded_database, machine, table  # noqa: E402
from end_to_end import peak_rss, run  # noqa: E402

SIZE_BAND = (100, 160)  # sentences a firm, for the run check


def firms_of_similar_size(n_firms: int, target: Path) -> tuple[Path, int, int]:
    """The first ``n_firms`` ECTSum firms with SIZE_BAND sentences; (path, firms, sentences).
    Without the shared data, the generated sample corpus repeated under new firm ids."""
    rows_by_firm: dict[str, list[str]] = {}
    if ECTSUM.exists():
        with gzip.open(ECTSUM, "rt", encoding="utf-8") as src:
            for line in src:
                rows_by_firm.setdefault(json.loads(line)["firm_id"], []).append(line)
        chosen = [rows for rows in rows_by_firm.values() if SIZE_BAND[0] <= len(rows) <= SIZE_BAND[1]][:n_firms]
        if len(chosen) < n_firms:
            raise SystemExit(f"only {len(chosen)} ECTSum firms of {SIZE_BAND} sentences")
        lines = [line for rows in chosen for line in rows]
    else:
        from app.sample import sample_rows

        sample = [r for r in sample_rows() if r["firm_id"] != "TNY"]  # TNY is the too-small firm
        per_copy = len({r["firm_id"] for r in sample})
        lines = [json.dumps({**r, "firm_id": f"C{copy}-{r['firm_id']}"}) + "\n"
                 for copy in range(-(-n_firms // per_copy)) for r in sample]
    with gzip.open(target, "wt", encoding="utf-8", compresslevel=1) as out:
        out.writelines(lines)
    return target, len({json.loads(line)["firm_id"] for line in lines}), len(lines)


def repeated_rows(n_rows: int, target: Path) -> Path:
    """``n_rows`` ECTSum rows (the file again and again, each pass with new doc_ids)."""
    written, copy = 0, 0
    with gzip.open(target, "wt", encoding="utf-8", compresslevel=1) as out:
        while written < n_rows:
            with gzip.open(ECTSUM, "rt", encoding="utf-8") as src:
                for line in src:
                    if written == n_rows:
                        break
                    row = json.loads(line)
                    out.write(json.dumps({"firm_id": row["firm_id"], "firm_name": row["firm_name"],
                                          "doc_id": f"{row['doc_id']}-copy{copy}", "sentence": row["sentence"]}) + "\n")
                    written += 1
            copy += 1
    return target


def ingest(path: Path, log_path: Path) -> tuple[float, float]:
    """``python -m app ingest PATH`` on a fresh embedded server; (seconds, peak RSS MB)."""
    env = {**os.environ, "DATABASE_URL": embedded_database(), "LOG_FORMAT": "json"}
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "app", "ingest", str(path)],
                                   stdout=subprocess.DEVNULL, stderr=log, env=env)
        peak = peak_rss(process)
        process.wait()
    if process.returncode != 0:
        raise SystemExit(f"ingest failed with exit code {process.returncode}; see {log_path}")
    return time.perf_counter() - started, peak["mb"]


def main(args) -> None:
    folder = Path(tempfile.mkdtemp(prefix="firmtopics-memory-", dir="/tmp"))
    print(f"{machine()}; FIRMTOPICS_* and EMBEDDING_* settings: "
          + (", ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                       if k.startswith(("FIRMTOPICS_", "EMBEDDING_"))) or "defaults"), flush=True)
    rows = []
    if args.part in ("run", "both"):
        for malloc in ({}, {"MALLOC_MMAP_THRESHOLD_": "65536"}):
            results = {}
            for n in (args.firms, 10 * args.firms):
                path, firms, sentences = firms_of_similar_size(n, folder / f"firms-{n}.jsonl.gz")
                os.environ.update(malloc)  # run() passes this process's environment on
                try:
                    wall, used, event = run(path, embedded_database(), folder / f"run-{n}-{len(malloc)}.log")
                finally:
                    for key in malloc:
                        os.environ.pop(key)
                mb = results[n] = used["mb"]
                label = f"`run --input`, {firms} firms, {sentences:,} sentences" + (
                    ", MALLOC_MMAP_THRESHOLD_=65536" if malloc else "")
                print(f"{label}: peak RSS {mb:.0f} MB, {wall:.0f} s, {event['topics']} topics, "
                      f"{event['themes']} themes", flush=True)
                rows.append([label, f"{mb:.0f}", "-"])
            ratio = results[10 * args.firms] / results[args.firms]
            rows[-1][2] = f"**{ratio:.2f}**" if not malloc else f"{ratio:.2f}"
    if args.part in ("ingest", "both"):
        if not ECTSUM.exists():
            raise SystemExit("the ingest check needs the shared ECTSum file")
        results = {}
        for n in (args.rows // 10, args.rows):
            path = repeated_rows(n, folder / f"rows-{n}.jsonl.gz")
            seconds, mb = ingest(path, folder / f"ingest-{n}.log")
            results[n] = mb
            print(f"ingest, {n:,} rows: peak RSS {mb:.0f} MB, {seconds:.0f} s ({n / seconds:,.0f} rows/s)", flush=True)
            rows.append([f"`ingest`, {n:,} rows", f"{mb:.0f}", "-"])
        rows[-1][2] = f"**{results[args.rows] / results[args.rows // 10]:.2f}**"
    print()
    print(table(["command", "peak RSS MB", "ratio 10x / 1x"], rows))
    print(f"\nrun: ECTSum firms of {SIZE_BAND[0]}-{SIZE_BAND[1]} sentences; goal: ratio <= 1.2")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--firms", type=int, default=3, help="firms of the small run (the big one has 10x)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the big ingest (the small one has 1/10)")
    parser.add_argument("--part", choices=["run", "ingest", "both"], default="both")
    main(parser.parse_args())
