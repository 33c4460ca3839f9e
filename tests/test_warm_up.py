"""Clustering's warm-up goes on beside the first firm's embedding: the firm is embedded
at once, and clustered only once the warm-up is done."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from app.backend import CPU
from app.pipeline import FirmStage, _embed_and_cluster_firm
from app.runs import FirmToDo
from app.sample import sample_rows
from app.settings import RunSettings
from app.writer import FirmResult


class Warmed(threading.Event):
    """The warm-up's event, noting when a firm starts waiting for it."""

    def __init__(self):
        super().__init__()
        self.waited = threading.Event()

    def wait(self, timeout=None):
        self.waited.set()
        return super().wait(timeout)


@pytest.mark.results
def test_a_firm_is_embedded_at_once_and_clustered_after_the_warm_up(embedder):
    rows = list(sample_rows(firms=1))
    texts = [r["sentence"] for r in rows if r["firm_id"] == rows[0]["firm_id"]]
    warmed = Warmed()
    stage = FirmStage(pool=None, run_id=0, settings=RunSettings(), embedder=embedder, backend=CPU, namer=None,
                      warmed=warmed)
    result = FirmResult("F", None, status="done", sentence_ids=np.arange(len(texts)))
    worker = threading.Thread(target=_embed_and_cluster_firm,
                              args=(stage, FirmToDo("F", None, len(texts)), texts, result))
    worker.start()
    assert warmed.waited.wait(timeout=300)  # the firm came to wait for the warm-up ...
    assert result.embeddings is not None and len(result.embeddings) == len(texts)  # ... embedded already
    worker.join(timeout=1.0)
    assert worker.is_alive() and "cluster" not in result.seconds  # and not clustered while it waits
    warmed.set()
    worker.join(timeout=300)
    assert not worker.is_alive() and "cluster" in result.seconds and (result.labels >= 0).any()
