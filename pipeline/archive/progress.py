"""Progress of a job: a tqdm bar on a terminal, else a line at most every ``interval`` seconds."""

from __future__ import annotations

import sys
import time


class Progress:
    """Counts ``unit``s (tiles when compressing, images when restoring) done and failed out of
    ``total``, with the rate and a caller's note (running means); a tqdm bar on a terminal, else one
    line at most every ``interval`` seconds (and a last one)."""

    def __init__(self, label: str, total: int, done: int, enabled: bool, unit: str = "img", interval: float = 10.0) -> None:
        self.label, self.total, self.done, self.enabled, self.unit, self.interval = label, total, done, enabled, unit, interval
        self.failed = self.run = 0
        self.note = ""
        self.start = self.last = time.monotonic()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=label, unit=unit, file=sys.stderr)

    def update(self, done: int, failed: int, note: str = "") -> None:
        self.done += done + failed
        self.failed += failed
        self.run += done
        self.note = note or self.note
        if self.bar is not None:
            self.bar.update(done + failed)
            self.bar.set_postfix_str(self._stats(), refresh=False)
        elif self.enabled and time.monotonic() - self.last >= self.interval:
            self._print()

    def _stats(self) -> str:
        rate = self.run / max(time.monotonic() - self.start, 1e-9)
        return ", ".join(filter(None, [f"{self.failed} failed", f"{rate:.2f} {self.unit}/s" if self.run else "", self.note]))

    def _print(self) -> None:
        self.last = time.monotonic()
        print(f"{self.label}: {self.done}/{self.total} {self.unit}, {self._stats()}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._print()
