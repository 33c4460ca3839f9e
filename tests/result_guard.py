"""The ``results`` marker, enforced: every test that depends on what the model or the
clustering computed must carry ``@pytest.mark.results``.

Why: floating point rounds differently on another processor, so a test that compares
what the model or the clustering produced can pass here and fail there. ``.ci/run``
therefore runs the marked tests a second time with torch's arithmetic changed
(``ATEN_CPU_CAPABILITY=default``, and ``avx2`` where the machine has AVX-512). A test
missing the marker would escape that second pass, so this plugin fails it instead.

A test counts as depending on results when, during its setup, call or teardown:
- the model embeds text (``Embedder.encode``), firm topics are clustered
  (``app.clustering.cluster_documents``) or themes are linked
  (``app.clustering.theme_labels``), in this process; or
- it starts ``python -m app`` (or ``firmtopics``) with ``run``, ``update`` or ``demo``;
or when it uses a fixture whose setup did any of that (a finished run shared by many
tests is set up once, yet every test reading it depends on its results).

conftest.py registers this module as a plugin.
"""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest

PIPELINE_COMMANDS = {"run", "update", "demo"}
_calls = 0  # how many result-making calls this process has made so far
_fixtures_with_results: set[str] = set()  # fixtures whose setup made results
_installed = False
_START = pytest.StashKey[int]()  # the count when a test began
_CALLED = pytest.StashKey[bool]()  # whether its call phase ran (not skipped in setup)


def _counted(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        global _calls
        _calls += 1
        return function(*args, **kwargs)

    wrapper.__counted__ = True
    return wrapper


def _starts_pipeline(argv) -> bool:
    """Whether a child's command line runs the pipeline (``python -m app run`` and the like)."""
    if isinstance(argv, (str, bytes)) or not argv:
        return False
    words = [str(word) for word in argv]
    for i, word in enumerate(words):
        is_program = word.endswith("firmtopics") or (word == "app" and i > 0 and words[i - 1] == "-m")
        if is_program:
            rest = [w for w in words[i + 1:] if not w.startswith("-")]
            return bool(rest) and rest[0] in PIPELINE_COMMANDS
    return False


class _CountingPopen(subprocess.Popen):
    def __init__(self, args, *rest, **kwargs):
        global _calls
        if _starts_pipeline(args):
            _calls += 1
        super().__init__(args, *rest, **kwargs)


def install() -> None:
    """Count result-making calls from now on (idempotent).

    Each target is replaced wherever a module of ``app`` holds it, since some modules
    bind it by name (``from app.clustering import theme_labels``).
    """
    global _installed
    if _installed:
        return
    _installed = True
    import app.clustering
    import app.embedding
    import app.job  # noqa: F401  (loads the modules that bind the targets by name)

    app.embedding.Embedder.encode = _counted(app.embedding.Embedder.encode)
    originals = {id(app.clustering.cluster_documents): _counted(app.clustering.cluster_documents),
                 id(app.clustering.theme_labels): _counted(app.clustering.theme_labels)}
    for name, module in list(sys.modules.items()):
        if name == "app" or name.startswith("app."):
            for attribute, value in list(vars(module).items()):
                if id(value) in originals:
                    setattr(module, attribute, originals[id(value)])
    subprocess.Popen = _CountingPopen


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "results: depends on model or clustering output; .ci/run runs these again under other arithmetic")
    install()


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    before = _calls
    yield
    if _calls > before:
        _fixtures_with_results.add(fixturedef.argname)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    item.stash[_START] = _calls


def unmarked_reason(item) -> str | None:
    """Why ``item`` should carry the ``results`` marker and does not; None when all is well."""
    if item.get_closest_marker("results"):
        return None
    made = _calls - item.stash.get(_START, _calls)
    fixtures = sorted(_fixtures_with_results & set(getattr(item, "fixturenames", ())))
    if not made and not (fixtures and item.stash.get(_CALLED, False)):
        return None
    why = f"uses fixtures that made results ({', '.join(fixtures)})" if fixtures else "made results itself"
    return (f"{item.nodeid} depends on model or clustering output ({why}) but is not marked"
            " @pytest.mark.results, so .ci/run would not rerun it under other arithmetic")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when == "call":
        item.stash[_CALLED] = not report.skipped
    if call.when == "teardown" and report.passed:
        reason = unmarked_reason(item)
        if reason:
            report.outcome = "failed"
            report.longrepr = reason
