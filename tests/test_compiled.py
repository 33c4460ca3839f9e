"""UMAP's compiled kernels are kept on disk, and a second process loads them instead of
compiling them again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# One of UMAP's kernels that its authors did not mark cache=True: without
# keep_compiled_kernels, every process compiles it again.
PROBE = """
import json
import numpy as np
from app.compiled import keep_compiled_kernels
kept = keep_compiled_kernels()
import umap.umap_ as u
u.smooth_knn_dist(np.random.default_rng(0).random((50, 5)).astype(np.float32), 5.0)
stats = u.smooth_knn_dist.stats
print(json.dumps({"kept": kept, "again": keep_compiled_kernels(), "hits": sum(stats.cache_hits.values()),
                  "misses": sum(stats.cache_misses.values()), "path": stats.cache_path}))
"""


def probe() -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_the_kernels_the_first_kept():
    first = probe()  # compiles and keeps the kernel, or loads it if an earlier process kept it
    assert first["kept"] > 100  # every compiled function of umap, pynndescent and hdbscan
    assert first["again"] == 0  # once per process
    assert first["hits"] + first["misses"] == 1 and first["path"]
    assert any(Path(first["path"]).glob("*smooth_knn_dist*.nbi"))
    second = probe()
    assert second["hits"] == 1 and second["misses"] == 0  # loaded, not compiled


# A new process's warm-up, counting what numba loaded from disk and what it compiled.
WARM_UP_PROBE = """
import json
from app.backend import CPU
from app.clustering import warm_up
from app.compiled import compiled_functions
from app.settings import RunSettings
warm_up(CPU, RunSettings())
functions = compiled_functions()
print(json.dumps({"hits": sum(sum(f.stats.cache_hits.values()) for f in functions),
                  "misses": sum(sum(f.stats.cache_misses.values()) for f in functions)}))
"""


def test_the_images_build_step_keeps_what_a_runs_warm_up_compiles(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}  # empty: nothing compiled there yet
    subprocess.run([sys.executable, "-m", "app.compiled"], cwd=ROOT, env=env, capture_output=True, timeout=900,
                   check=True)
    assert any(tmp_path.rglob("*.nbi"))
    done = subprocess.run([sys.executable, "-c", WARM_UP_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900, check=True)
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    # Loaded, not compiled: on an empty folder every kernel is a miss. A few small helpers
    # that numba compiles inside their callers stay misses (3 of 11 with the versions
    # tested; pynndescent's typed kernels, which a firm this size never calls, are not
    # compiled at all: app.typed_kernels).
    assert loaded["hits"] >= 5 and loaded["misses"] <= loaded["hits"] // 2
