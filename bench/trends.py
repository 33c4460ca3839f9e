"""Themes over time on real earnings calls: the first N ECTSum firms (40 by default), each
call's period taken from its doc_id (``AAP_q4_2020`` -> ``2020Q4``), run offline through
the whole job, then ``firmtopics trends``.

    python bench/trends.py --firms 40

Prints the corpus, the run's summary line and the trends table (the largest themes'
share of each quarter's themed sentences). Not a timing: it shows what a researcher
gets, on data this repository does not ship.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ECTSUM, embedded_database, machine  # noqa: E402

QUARTER = re.compile(r"_q([1-4])_(\d{4})$", re.I)


def with_periods(n_firms: int, target: Path) -> tuple[int, int, int]:
    """The first ``n_firms`` firms of ECTSum with a ``period`` from each doc_id; returns
    (firms, sentences, sentences without a recognisable quarter)."""
    firms, sentences, without = [], 0, 0
    with gzip.open(ECTSUM, "rt", encoding="utf-8") as src, gzip.open(target, "wt", encoding="utf-8") as out:
        for line in src:
            row = json.loads(line)
            if not firms or firms[-1] != row["firm_id"]:
                if len(firms) == n_firms:
                    break
                firms.append(row["firm_id"])
            found = QUARTER.search(row.get("doc_id") or "")
            if found:
                row["period"] = f"{found.group(2)}Q{found.group(1)}"
            else:
                without += 1
            out.write(json.dumps(row) + "\n")
            sentences += 1
    return len(firms), sentences, without


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--firms", type=int, default=40, help="the first N ECTSum firms")
    parser.add_argument("--top", type=int, default=10, help="themes shown")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="firmtopics-trends-"))
    path = folder / "ectsum_periods.jsonl.gz"
    firms, sentences, without = with_periods(args.firms, path)
    print(f"corpus: ECTSum, first {firms} firms, {sentences} sentences ({without} without a quarter); {machine()}",
          flush=True)
    os.environ.update({"DATABASE_URL": embedded_database(), "LOG_FORMAT": "json"})
    os.environ.pop("XAI_API_KEY", None)
    from app.cli import main as firmtopics

    assert firmtopics(["run", "--input", str(path)]) == 0
    assert firmtopics(["trends", "--top", str(args.top)]) == 0


if __name__ == "__main__":
    main()
