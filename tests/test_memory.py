"""Freed memory goes back to the operating system between firms (glibc only)."""

import gc

import psutil
import pytest

from app.memory import CAN_RELEASE, release_free_memory

pytestmark = pytest.mark.skipif(not CAN_RELEASE, reason="this C library has no malloc_trim (not glibc)")


def resident_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def test_free_pages_left_behind_by_small_objects_are_returned():
    # 200 MB of 2 KB buffers (over pymalloc's limit, so from malloc's heap); all but the
    # last are freed. The last one pins the top of the heap, so malloc cannot shrink
    # it by itself: the free pages below stay resident until they are trimmed.
    buffers = [bytearray(2048) for _ in range(100_000)]
    pinned = buffers[-1]
    del buffers
    gc.collect()
    before = resident_mb()
    assert release_free_memory() is True
    after = resident_mb()
    assert before - after > 100, (before, after)
    assert len(pinned) == 2048


def test_nothing_to_release_is_not_an_error():
    release_free_memory()
    assert release_free_memory() in (True, False)
