"""What the benchmarks share: a throw-away embedded PostgreSQL, corpus subsets, the
fake LLM server as a subprocess, and table printing.

Benchmarks print ratios measured side by side in one process: absolute times on a shared
machine vary from run to run, ratios hold.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
ECTSUM = SHARED_DATA / "firm_sentences_ectsum.jsonl.gz"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def embedded_database() -> str:
    """Start an embedded PostgreSQL in a temporary folder (deleted at exit); return its URL.

    The server is started as the tests start theirs (``tests/support.py``)."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.append(str(ROOT / "tests"))
    from support import embedded_url_for_tests

    return embedded_url_for_tests(Path(tempfile.mkdtemp(prefix="firmtopics-bench-", dir="/tmp")))


def first_firms(source: Path, n_firms: int | None, target: Path) -> tuple[Path, int, int]:
    """Copy the first ``n_firms`` firms (all when None) of a .jsonl.gz corpus to ``target``.

    Returns (path, firms, sentences). The shared research data is read, never copied
    into the project.
    """
    firms, sentences = [], 0
    with gzip.open(source, "rt", encoding="utf-8") as src, gzip.open(target, "wt", encoding="utf-8") as out:
        for line in src:
            firm = json.loads(line)["firm_id"]
            if not firms or firms[-1] != firm:
                if n_firms is not None and len(firms) == n_firms:
                    break
                firms.append(firm)
            out.write(line)
            sentences += 1
    return target, len(firms), sentences


def corpus(n_firms: int | None, folder: Path) -> tuple[Path, int, int, str]:
    """The benchmark corpus: the first firms of ECTSum when the shared data is here,
    else the generated sample corpus. Returns (path, firms, sentences, description)."""
    if ECTSUM.exists():
        path, firms, sentences = first_firms(ECTSUM, n_firms, folder / "ectsum.jsonl.gz")
        return path, firms, sentences, f"ECTSum, first {firms} firms"
    from app.sample import sample_rows, write_sample_corpus

    path = write_sample_corpus(folder / "sample.jsonl.gz")
    rows = list(sample_rows())
    return path, len({r["firm_id"] for r in rows}), len(rows), "generated sample corpus (no shared data here)"


def fake_llm_server(latency: float, *extra: str):
    """Run tests/fake_llm_server.py as a subprocess (``tests/support.py``'s
    ``fake_llm_process``); use as a context manager that yields the server (its
    ``base_url``, its ``stats()``)."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.append(str(ROOT / "tests"))
    from support import fake_llm_process

    return fake_llm_process(*extra, latency=latency)


def machine() -> str:
    """One line describing this machine, for the results table."""
    import torch

    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} CPUs ({cpu}), torch {torch.__version__}, Python {platform.python_version()}"


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table, ready to paste into docs/benchmarks.md."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
