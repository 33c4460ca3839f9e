"""Giving memory freed by a firm back to the operating system before the next firm.

glibc's ``malloc`` keeps what a process frees in its heaps, for reuse, and hands it back
to the system only from the top of a heap. Firms of every size come and go (tokenised
batches, embeddings, UMAP's graph, HDBSCAN's trees, each of another size), and what they
leave behind fragments the heaps: free pages stay resident, so a long run's resident
size creeps up with the number of firms, not with the largest firm. ``malloc_trim(0)``
returns every free page of every heap to the system (glibc >= 2.8), for well under a
millisecond a call; ``docs/benchmarks.md`` (section 5) has what it is worth.

Elsewhere (macOS, musl) there is no ``malloc_trim``, and this does nothing.
"""

from __future__ import annotations

import ctypes


def _find_malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _find_malloc_trim()
# Whether this C library can give free pages back (glibc); without it
# ``release_free_memory`` is a no-op.
CAN_RELEASE = _MALLOC_TRIM is not None


def release_free_memory() -> bool:
    """Return the C heaps' free pages to the operating system.

    Returns True when memory was released, False when there was none to release or
    this C library cannot (then it is a no-op). Safe to call from any thread.
    """
    if _MALLOC_TRIM is None:
        return False
    return bool(_MALLOC_TRIM(0))
