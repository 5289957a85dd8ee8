"""Progress reporting and cancellation shared by every long operation.

Library functions take ``progress: ProgressFn | None`` and ``cancel: CancelFn | None``.
The CLI turns progress events into a text bar, the napari plugin into a napari
progress bar; both are fed by the same callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Progress:
    """One progress event: ``step`` of ``total`` in ``stage``, with optional scalar metrics."""

    stage: str
    step: int
    total: int
    metrics: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 1.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left, extrapolated from the time spent so far."""
        if self.step <= 0 or self.total <= 0:
            return None
        return self.elapsed_s * (self.total - self.step) / self.step


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


class Cancelled(Exception):
    """Raised inside a long operation when its cancel flag is set; callers catch it."""


class Reporter:
    """Small helper a long loop uses to emit progress and honour cancellation."""

    def __init__(self, stage: str, total: int, progress: ProgressFn | None = None,
                 cancel: CancelFn | None = None) -> None:
        self.stage = stage
        self.total = total
        self._progress = progress
        self._cancel = cancel
        self._t0 = time.perf_counter()

    def check_cancel(self) -> None:
        if self._cancel is not None and self._cancel():
            raise Cancelled(f"{self.stage} cancelled")

    def __call__(self, step: int, **metrics: float) -> None:
        self.check_cancel()
        if self._progress is not None:
            self._progress(Progress(self.stage, step, self.total, dict(metrics),
                                    time.perf_counter() - self._t0))
