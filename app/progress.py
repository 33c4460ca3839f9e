"""Progress for log-tailing: firms done / total, sentences per second, ETA.

One ``Progress`` per firm stage. The writer calls ``firm_finished`` for every firm it
stores; a ticker task calls ``maybe_report`` so a progress event appears every few
seconds even while one large firm is being processed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from app.logs import get_logger

log = get_logger("progress")


@dataclass
class Progress:
    """Counts for one firm stage and the arithmetic for rate and ETA."""

    total_firms: int
    total_sentences: int
    every_s: float = 10.0
    firms_done: int = 0
    firms_skipped: int = 0
    firms_failed: int = 0
    sentences_done: int = 0
    stage_seconds: dict = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _last_report: float = field(default=0.0)

    @property
    def firms_finished(self) -> int:
        return self.firms_done + self.firms_skipped + self.firms_failed

    def firm_finished(self, status: str, n_sentences: int, seconds: dict) -> None:
        """Count one stored firm and add its per-stage seconds to the totals."""
        if status == "done":
            self.firms_done += 1
        elif status == "skipped":
            self.firms_skipped += 1
        else:
            self.firms_failed += 1
        self.sentences_done += n_sentences
        for stage, value in seconds.items():
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + value

    def snapshot(self) -> dict:
        """Firms finished/total, sentences/s and ETA (seconds) as of now."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.sentences_done / elapsed
        left = max(self.total_sentences - self.sentences_done, 0)
        eta = left / rate if rate > 0 else None
        return {
            "firms_finished": self.firms_finished,
            "firms_total": self.total_firms,
            "firms_done": self.firms_done,
            "firms_skipped": self.firms_skipped,
            "firms_failed": self.firms_failed,
            "sentences_per_s": round(rate, 1),
            "elapsed_s": round(elapsed, 1),
            "eta_s": None if eta is None else round(eta, 1),
        }

    def maybe_report(self, force: bool = False) -> None:
        """Log a ``progress`` event if ``every_s`` has passed since the last one."""
        now = time.monotonic()
        if force or now - self._last_report >= self.every_s:
            self._last_report = now
            log.info("progress", **self.snapshot())
