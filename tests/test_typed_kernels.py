"""pynndescent's typed kernels are compiled at their first call, not at its import
(``app.typed_kernels``), and compiled to the same code: a deferred function holds the
signatures it declares and converts other argument types to them, as numba's eager
decorator does, so UMAP's result does not change."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numba
import numpy as np

from app.typed_kernels import deferred_njit

ROOT = Path(__file__).resolve().parents[1]


def third(x):
    return x / 3


def test_a_deferred_function_compiles_at_its_first_call_what_it_declares():
    eager = numba.njit("float32(float32)")(third)
    deferred = deferred_njit("float32(float32)")(third)
    assert len(deferred.overloads) == 0  # nothing compiled at the declaration

    # A float64 argument is converted to the declared float32, not compiled for: a
    # function compiled for its own types would return a third in float64.
    assert deferred(1.0) == eager(1.0) == float(np.float32(1) / np.float32(3)) != 1 / 3
    assert deferred.signatures == eager.signatures
    assert [c.signature for c in deferred.overloads.values()] == [c.signature for c in eager.overloads.values()]
    assert not deferred._can_compile  # as the eager one: no other signature is compiled later


def test_a_caller_compiled_first_types_its_call_by_the_declared_signature():
    deferred = deferred_njit(["float32(float32)"], fastmath=True)(third)

    @numba.njit
    def caller(x):
        return deferred(x) * 3.0

    assert caller(1.0) == float(np.float32(1) / np.float32(3)) * 3.0
    assert [str(s) for s in deferred.signatures] == ["(float32,)"]


@deferred_njit("int64(int64)")
def factorial(n):
    return 1 if n <= 1 else n * factorial(n - 1)


def test_a_recursive_deferred_function_compiles_once_and_calls_itself():
    # pynndescent's tree builders are typed and recursive (make_angular_tree, ...).
    assert factorial(10) == 3628800
    assert [str(s) for s in factorial.signatures] == ["(int64,)"]


def test_threads_calling_a_deferred_function_first_at_once_all_get_its_result():
    deferred = deferred_njit("float32(float32)")(third)
    results: list[float] = []
    threads = [threading.Thread(target=lambda: results.append(deferred(2.0))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [float(np.float32(2) / np.float32(3))] * 4
    assert len(deferred.overloads) == 1


IMPORTED = """
import json, numba
eager_njit = numba.njit
import app, umap
import pynndescent.rp_trees as trees
from app.typed_kernels import install
print(json.dumps({"tree_kernel_compiled": len(trees.angular_random_projection_split.overloads),
                  "njit_restored": numba.njit is eager_njit, "again": install()}))
"""


def test_importing_umap_after_app_compiles_none_of_pynndescents_tree_kernels():
    done = subprocess.run([sys.executable, "-c", IMPORTED], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=True)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"tree_kernel_compiled": 0, "njit_restored": True, "again": False}


# UMAP above 4,096 points, where it calls pynndescent's typed kernels (approximate
# neighbours). "eager": pynndescent imported before app, numba's own way.
FIT = """
import sys
if sys.argv[1] == "eager":
    import pynndescent
import app, json, numpy as np
import pynndescent.rp_trees as trees
from umap import UMAP
compiled_at_import = len(trees.angular_random_projection_split.overloads) > 0
rng = np.random.default_rng(7)
centres = rng.normal(size=(8, 16))
x = (centres[rng.integers(0, 8, 4200)] + 0.3 * rng.normal(size=(4200, 16))).astype(np.float32)
layout = UMAP(n_neighbors=15, n_components=5, metric="cosine", random_state=42, n_epochs=30).fit_transform(x)
print(json.dumps({"compiled_at_import": compiled_at_import, "layout": layout.tolist()}))
"""


def test_umap_above_4096_points_lays_out_the_same_with_the_kernels_deferred():
    # Both ways at once, each in a process of its own: each compiles pynndescent's
    # neighbour descent (about a minute on 2 CPUs; numba cannot keep it on disk).
    ways = {way: subprocess.Popen([sys.executable, "-c", FIT, way], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True) for way in ("deferred", "eager")}
    seen = {}
    for way, process in ways.items():
        out, _ = process.communicate(timeout=900)
        assert process.returncode == 0, way
        seen[way] = json.loads(out.strip().splitlines()[-1])
    assert (seen["deferred"]["compiled_at_import"], seen["eager"]["compiled_at_import"]) == (False, True)
    # UMAP is chaotic: one kernel compiled for other types (a float64 random number where
    # pynndescent declares float32) gives another layout altogether.
    assert np.array_equal(np.array(seen["deferred"]["layout"], dtype=np.float32),
                          np.array(seen["eager"]["layout"], dtype=np.float32))
