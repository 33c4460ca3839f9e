"""pynndescent's typed numba kernels compiled at their first call, not at its import.

pynndescent declares many of its numba functions with their types
(``@numba.njit(signature)``), and numba compiles such a function when it is declared.
On a machine that has not compiled them yet, importing pynndescent (which importing UMAP
does) took 32 s of the first run's start on 2 CPUs, one thread holding Python's lock
(docs/benchmarks.md §17). Most of it is its random-projection trees and sparse kernels,
which UMAP calls only for 4,096 points and more: a firm below that never needs them.
Upstream this is lmcinnes/pynndescent#111.

``install`` (run by ``import app``) makes the import of pynndescent declare those
functions without compiling them (``deferred_njit``). At its first call each compiles
the signatures it declares and then refuses to compile others, as it would have at
import: a call with other types is converted to a declared signature, not compiled for
its own. So the machine code is the same, and so are the results; it is compiled later,
or never. A process that imported pynndescent before ``app`` keeps numba's eager way.
(A deferred function pickled before its first call would be rebuilt elsewhere as a
plain lazy one; the program pickles none.)
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

PACKAGE = "pynndescent"


def deferred_njit(signatures, **options):
    """``numba.njit(signatures, **options)`` that compiles at the first call instead of
    now: returns a decorator giving a numba dispatcher which, at its first use (a call
    from Python, or typing a call from compiled code), compiles every signature in
    ``signatures`` (one, or a list), then disables compiling, the state numba's eager
    decorator leaves it in."""
    import numba
    from numba.core import sigutils
    from numba.core.compiler_lock import global_compiler_lock

    declared = signatures if isinstance(signatures, list) else [signatures]

    def decorate(function):
        dispatcher = numba.njit(**options)(function)
        compile_any = dispatcher.compile

        def compile_declared(signature):
            # numba compiles through this one method from both ways in; the lock makes a
            # second thread's first call wait for the first's compiling.
            with global_compiler_lock:
                if dispatcher.__dict__.get("compile") is compile_declared:
                    for each in declared:
                        compile_any(each)
                    dispatcher.disable_compile()
                    del dispatcher.compile
            args, _ = sigutils.normalize_signature(signature)
            compiled = dispatcher.overloads.get(tuple(args))
            # Other argument types than declared: the dispatcher itself, which now
            # converts them to a declared signature as the eager one would.
            return compiled.entry_point if compiled is not None else dispatcher

        dispatcher.compile = compile_declared
        return dispatcher

    return decorate


class _DeferPynndescent(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for ``PACKAGE``'s import, wraps its loader so the package's
    typed kernels are declared by ``deferred_njit`` while it executes, then steps
    aside (once)."""

    def find_spec(self, name, path=None, target=None):
        if name != PACKAGE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            execute = spec.loader.exec_module
            spec.loader.exec_module = lambda module: _declared_deferred(execute, module)
        return spec


def _declared_deferred(execute, module) -> None:
    """Run ``execute(module)`` with ``numba.njit`` deferring the typed kernels of
    ``PACKAGE``'s modules; other modules' declarations meanwhile pass through unchanged."""
    import numba

    eager = numba.njit

    def njit(*args, **options):
        if not args or callable(args[0]):
            return eager(*args, **options)

        def decorate(function):
            if getattr(function, "__module__", "").split(".")[0] == PACKAGE:
                return deferred_njit(args[0], **options)(function)
            return eager(*args, **options)(function)
        return decorate

    numba.njit = njit
    try:
        execute(module)
    finally:
        numba.njit = eager


def install() -> bool:
    """Defer pynndescent's typed kernels in this process; returns whether it will (False
    when pynndescent is already imported, or this was done before)."""
    if PACKAGE in sys.modules or any(isinstance(f, _DeferPynndescent) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, _DeferPynndescent())
    return True
