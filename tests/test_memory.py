"""Freed memory goes back to the operating system between firms (glibc only)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.memory import CAN_RELEASE, release_free_memory

pytestmark = pytest.mark.skipif(not CAN_RELEASE, reason="this C library has no malloc_trim (not glibc)")


# The measurement runs in a fresh interpreter: how a heap answers a free depends on what
# the process did before (after a whole job run in the same process, glibc was seen to
# hand the freed buffers back by itself, so there was nothing left to trim).
FREE_PAGES_LEFT_BEHIND = """
import gc, json, psutil
from app.memory import release_free_memory
resident_mb = lambda: psutil.Process().memory_info().rss / 2**20
# 200 MB of 2 KB buffers (over pymalloc's limit, so from malloc's heap); all but the
# last are freed. The last one pins the top of the heap, so malloc cannot shrink it by
# itself: the free pages below stay resident until they are trimmed.
buffers = [bytearray(2048) for _ in range(100_000)]
pinned = buffers[-1]
del buffers
gc.collect()
before = resident_mb()
released = release_free_memory()
print(json.dumps({"released": released, "before": before, "after": resident_mb(), "pinned": len(pinned)}))
"""


def test_free_pages_left_behind_by_small_objects_are_returned():
    done = subprocess.run([sys.executable, "-c", FREE_PAGES_LEFT_BEHIND], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[1])
    measured = json.loads(done.stdout)
    assert measured["released"] is True
    assert measured["before"] - measured["after"] > 100, measured
    assert measured["pinned"] == 2048


def test_nothing_to_release_is_not_an_error():
    release_free_memory()
    assert release_free_memory() in (True, False)
