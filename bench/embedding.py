"""Does the embedding stage cost more than a bare ``SentenceTransformer.encode``? And does
sorting sentences by length before batching (less padding) pay?

The same sentences, the same model object and batch size, in one process, four ways:

  bare encode            ``model.encode(texts, batch_size=B)``: the reference
  Embedder (sorted)      ``Embedder.encode(texts)``, as the program calls it: it sorts the
                         texts by length itself, encodes, normalises, restores the order
  Embedder (unsorted)    ``Embedder.encode(texts, sort_by_length=False)``
  no length sorting      one ``model.encode`` call per batch of B sentences in file order,
                         so no batch is formed by length: what sorting is worth
                         (``model.encode`` itself sorts its whole input by length first)

The work is done firm by firm (the program embeds one firm per call): for each firm the
four ways run one after another, ``--repeats`` times, in an order that rotates, so each
sees the same load on a shared machine; a firm's seconds for a way are the least of its
repeats (the same work repeated: the least disturbed run is the fairest figure on a
machine whose load comes and goes). Ratio = bare seconds / seconds of the way, over all firms (1.0 = as fast as
bare encode; above 1 = faster).

    python bench/embedding.py [--sentences 700] [--repeats 5] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.embedding import load_embedder  # noqa: E402
from app.settings import DEFAULT_EMBEDDING_MODEL  # noqa: E402
from common import ECTSUM, machine, table  # noqa: E402


def ectsum_firms(n_sentences: int) -> tuple[list[list[str]], str]:
    """Whole ECTSum firms in file order until ``n_sentences`` (the last one cut short);
    the generated sample corpus when the shared data is absent."""
    firms: list[list[str]] = []
    total = 0
    if ECTSUM.exists():
        current = None
        with gzip.open(ECTSUM, "rt", encoding="utf-8") as src:
            for line in src:
                row = json.loads(line)
                if total == n_sentences:
                    break
                if row["firm_id"] != current:
                    current = row["firm_id"]
                    firms.append([])
                firms[-1].append(row["sentence"])
                total += 1
        return firms, f"ECTSum, first {len(firms)} firms"
    from app.sample import sample_rows

    by_firm: dict[str, list[str]] = {}
    for row in sample_rows():
        if total < n_sentences:
            by_firm.setdefault(row["firm_id"], []).append(row["sentence"])
            total += 1
    return list(by_firm.values()), "generated sample corpus (no shared data here)"


def padding_share(tokenizer, firms: list[list[str]], batch_size: int, *, by_length: bool, max_length: int) -> float:
    """Share of the token slots in all batches (firm by firm) that are padding, with or
    without sorting each firm's sentences by length."""
    slots = used = 0
    for texts in firms:
        lengths = np.array([min(len(ids), max_length) for ids in tokenizer(texts)["input_ids"]])
        if by_length:
            lengths = np.sort(lengths)
        for start in range(0, len(lengths), batch_size):
            batch = lengths[start:start + batch_size]
            slots += batch.max() * len(batch)
            used += batch.sum()
    return 1 - used / slots


def main(args) -> None:
    firms, description = ectsum_firms(args.sentences)
    n = sum(len(f) for f in firms)
    embedder = load_embedder(args.model, batch_size=args.batch_size)
    model, batch = embedder.model, args.batch_size
    print(f"corpus: {description} ({n} sentences); model {args.model} on {embedder.device}, batch size {batch}; "
          f"{machine()}", flush=True)

    def bare(texts):
        return model.encode(texts, batch_size=batch, show_progress_bar=False)

    def no_sorting(texts):
        return np.concatenate([model.encode(texts[i:i + batch], batch_size=batch, show_progress_bar=False)
                               for i in range(0, len(texts), batch)])

    ways = {
        "bare encode": bare,
        "Embedder (sorted)": embedder.encode,
        "Embedder (unsorted)": lambda texts: embedder.encode(texts, sort_by_length=False),
        "no length sorting": no_sorting,
    }
    bare(firms[0][: batch * 2])  # first-call overhead (thread pools, allocator) outside the timings
    seconds = {name: 0.0 for name in ways}
    per_firm_ratio: dict[str, list[float]] = {name: [] for name in ways}
    vectors = {}
    for i, texts in enumerate(firms):
        names = list(ways)
        repeats = {name: [] for name in names}
        for rep in range(args.repeats):
            shift = (i + rep) % len(names)
            for name in names[shift:] + names[:shift]:
                started = time.perf_counter()
                vectors[name] = ways[name](texts)
                repeats[name].append(time.perf_counter() - started)
        timed = {name: min(repeats[name]) for name in names}
        for name, s in timed.items():
            seconds[name] += s
            per_firm_ratio[name].append(timed["bare encode"] / s)
        reference = vectors["bare encode"] / np.linalg.norm(vectors["bare encode"], axis=1, keepdims=True)
        for name in ways:
            # Every way must give the same vectors (up to float noise from batch composition).
            assert np.min(np.sum(reference * vectors[name], axis=1)
                          / np.linalg.norm(vectors[name], axis=1)) > 0.9999, name
        print(f"firm {i + 1}/{len(firms)} ({len(texts)} sentences): "
              + ", ".join(f"{k} {v:.1f} s" for k, v in timed.items()), flush=True)

    tokenizer, max_length = model.tokenizer, model.max_seq_length
    pad_sorted = padding_share(tokenizer, firms, batch, by_length=True, max_length=max_length)
    pad_file = padding_share(tokenizer, firms, batch, by_length=False, max_length=max_length)
    print()
    print(table(
        ["way", "seconds (all firms, least of repeats)", "sentences/s", "ratio to bare encode", "median per-firm ratio"],
        [[name, f"{s:.1f}", f"{n / s:.0f}", f"**{seconds['bare encode'] / s:.2f}**" if name == "Embedder (sorted)"
          else f"{seconds['bare encode'] / s:.2f}", f"{statistics.median(per_firm_ratio[name]):.2f}"]
         for name, s in seconds.items()],
    ))
    print(f"\npadding share of the token slots, firm by firm in batches of {batch}: "
          f"{pad_file:.0%} in file order, {pad_sorted:.0%} sorted by length. "
          "Goal: Embedder >= 0.9 x bare encode.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=700)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each way per firm (the least is taken)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default=DEFAULT_EMBEDDING_MODEL)
    main(parser.parse_args())
