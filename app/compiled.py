"""numba's compiled kernels of UMAP, pynndescent and hdbscan, kept across processes.

UMAP and pynndescent are compiled by numba the first time a process uses them. Functions
their authors mark ``cache=True`` are kept on disk; the others (most of UMAP's) were
compiled again in every process: on 2 CPUs about 19 s of every run's start, after the
first run's compilation. ``keep_compiled_kernels`` turns numba's on-disk cache on for
every compiled function of those packages, so a process after the first loads them
(docs/benchmarks.md, "First-run warm-up").

They are kept where numba keeps the others: in a ``__pycache__`` folder beside the
package's source when it can write there, else in ``NUMBA_CACHE_DIR`` (the images set
it) or the user's cache folder. One copy serves every data folder and every run of the
machine. numba keys each kernel by its source file and the processor, so a changed
package or another machine compiles afresh rather than loading a stale kernel, and the
code it loads is the code it would have compiled: results do not change.

``python -m app.compiled`` compiles and keeps them ahead of any run: the CPU image's
build step, so its containers start with them.
"""

from __future__ import annotations

import sys

from app.logs import get_logger

log = get_logger("compiled")

PACKAGES = ("umap", "pynndescent", "hdbscan")
_kept = False


def keep_compiled_kernels() -> int:
    """Turn numba's on-disk cache on for every compiled function of ``PACKAGES``
    (importing them), once per process; returns how many functions it turned on, 0 when
    done before. Call it before their first use: a kernel compiled earlier in the process
    is not saved."""
    global _kept
    if _kept:
        return 0
    import hdbscan  # noqa: F401
    import pynndescent  # noqa: F401
    import umap.umap_  # noqa: F401

    kept = 0
    for function in compiled_functions():
        function.enable_caching()
        kept += 1
    _kept = True
    log.info("compiled_kernels_cached", functions=kept)
    return kept


def compiled_functions() -> list:
    """numba's compiled functions (``Dispatcher``s) in the modules of ``PACKAGES`` imported
    so far: what ``keep_compiled_kernels`` keeps, and whose cache statistics show whether a
    process loaded or compiled them."""
    from numba.core.dispatcher import Dispatcher

    return [value for name, module in list(sys.modules.items())
            if module is not None and name.split(".")[0] in PACKAGES
            for value in list(vars(module).values()) if isinstance(value, Dispatcher)]


def main() -> int:
    """``python -m app.compiled``: compile and keep the kernels every run's warm-up
    compiles (``app.clustering.warm_up``); returns 0.

    For an image's build step (the CPU image runs it): a container then loads them instead
    of spending its first run's start compiling. numba keys each kernel by the processor,
    so a container on another processor than the build's compiles afresh, as without.
    The extra warm-up of a firm above 4,096 sentences is left out: most of what it
    compiles (pynndescent's neighbour descent) numba cannot keep, so every process
    compiles it again anyway."""
    from app.backend import CPU
    from app.clustering import warm_up
    from app.settings import RunSettings

    warm_up(CPU, RunSettings())
    return 0


if __name__ == "__main__":
    sys.exit(main())
