"""First-run warm-up: ``firmtopics demo`` on a machine that has never compiled UMAP, and
again, with numba's kernels kept on disk (``app.compiled``: now) and without (before).

    python bench/warm_up.py

For each way, numba's on-disk kernels of umap, pynndescent and hdbscan are deleted first
(the state of a fresh install), then ``firmtopics demo`` runs twice, each in a new data
folder, so the second runs the whole job again on a machine that has compiled once.
Printed for each run: the wall seconds of the process and the run's warm-up seconds
(its log's ``warm_up_finished``: the compilation that is left once the imports are done).
"before" is the same program with ``keep_compiled_kernels`` switched off in the process
and pynndescent's typed kernels compiled at its import (imported before ``app``);
"kept" keeps the kernels but compiles pynndescent's at import (``app.typed_kernels``
off), and exits without ``app.cli.console``'s freeze; "now" is the command as installed.
The ways run one after the other, in that order; the machine's load moves absolute times.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.compiled import PACKAGES  # noqa: E402
from common import machine, table  # noqa: E402

WAYS = {
    "before": "import sys, pynndescent, app.compiled as c; c._kept = True; from app.cli import main; "
              "sys.exit(main(['demo']))",
    "kept": "import sys, pynndescent; from app.cli import main; sys.exit(main(['demo']))",
    "now": "import sys; sys.argv = ['firmtopics', 'demo']; from app.cli import console; console()",
}


def forget_compiled() -> int:
    """Delete numba's kept kernels of ``PACKAGES`` (beside their sources, and in
    ``NUMBA_CACHE_DIR`` when set); returns how many files went."""
    folders = [Path(importlib.util.find_spec(name).origin).parent for name in PACKAGES]
    if os.environ.get("NUMBA_CACHE_DIR"):
        folders.append(Path(os.environ["NUMBA_CACHE_DIR"]))
    files = [f for folder in folders for pattern in ("*.nbi", "*.nbc") for f in folder.rglob(pattern)]
    for f in files:
        f.unlink()
    return len(files)


def demo(code: str) -> tuple[float, float]:
    """One ``firmtopics demo`` in a new data folder; (wall seconds, warm-up seconds)."""
    folder = Path(tempfile.mkdtemp(prefix="firmtopics-warm-", dir="/tmp"))
    env = {**os.environ, "FIRMTOPICS_DATA_DIR": str(folder), "LOG_FORMAT": "json", "HF_HUB_OFFLINE": "1"}
    env.pop("DATABASE_URL", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"demo failed ({done.returncode}): {done.stderr[-2000:]}")
    events = [json.loads(line) for line in done.stderr.splitlines() if '"warm_up_finished"' in line]
    return wall, events[-1]["seconds"] if events else 0.0


def main() -> None:
    print(machine(), flush=True)
    rows = []
    for way, code in WAYS.items():
        gone = forget_compiled()
        for attempt in ("first run (nothing compiled)", "second run"):
            wall, warm = demo(code)
            rows.append([way, attempt, f"{wall:.1f}", f"{warm:.1f}"])
            print(f"{way}, {attempt}: {wall:.1f} s, warm-up {warm:.1f} s ({gone} kept files deleted before)",
                  flush=True)
    print()
    print(table(["way", "run", "wall s (process)", "warm-up s (in the run)"], rows))


if __name__ == "__main__":
    main()
