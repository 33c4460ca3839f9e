"""The ``results`` marker is enforced (``tests/result_guard.py``): a test that makes or
reads model or clustering output without the marker fails, so none escapes the second
pass of ``.ci/run`` under other arithmetic. Checked on a small suite of its own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from result_guard import _starts_pipeline

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent

SUITE = '''
import numpy as np
import pytest

from app.clustering import theme_labels


def vectors():
    rng = np.random.default_rng(0)
    return rng.normal(size=(12, 4)).astype(np.float32)


@pytest.fixture(scope="session")
def themes_made_once():
    return theme_labels(vectors(), 3)


def test_unmarked_and_clustering():
    assert len(theme_labels(vectors(), 3)) == 12


@pytest.mark.results
def test_marked_and_clustering(themes_made_once):
    assert len(theme_labels(vectors(), 3)) == 12


def test_unmarked_reading_a_fixture_that_clustered(themes_made_once):
    assert len(themes_made_once) == 12


def test_unmarked_and_no_results():
    assert sum([1, 2]) == 3
'''


def test_a_test_that_depends_on_results_without_the_marker_fails(pytester, monkeypatch):
    pytester.makeconftest("import result_guard\n\n"
                          "def pytest_configure(config):\n"
                          "    config.pluginmanager.register(result_guard, 'result_guard')\n")
    pytester.makepyfile(test_suite=SUITE)
    root = str(TESTS.parent)
    path = os.pathsep.join([str(TESTS), root, os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=4, errors=2)  # each unmarked one fails at teardown
    text = result.stdout.str()
    assert "test_unmarked_and_clustering depends on model or clustering output (made results itself)" in text
    assert ("test_unmarked_reading_a_fixture_that_clustered depends on model or clustering output"
            " (uses fixtures that made results (themes_made_once))") in text
    assert "ERROR test_suite.py::test_unmarked_and_no_results" not in text
    assert "ERROR test_suite.py::test_marked_and_clustering" not in text


@pytest.mark.parametrize("argv, runs", [
    (["python", "-m", "app", "run", "--input", "x"], True),
    (["python", "-m", "app", "--json", "demo"], True),
    (["/usr/bin/firmtopics", "update"], True),
    (["python", "-m", "app", "ingest", "x"], False),
    (["firmtopics", "status"], False),
    (["python", "tests/fake_llm_server.py", "--port", "0"], False),
    ("python -m app run", False),  # a shell string: not a command line it can read
])
def test_which_child_processes_run_the_pipeline(argv, runs):
    assert _starts_pipeline(argv) is runs
