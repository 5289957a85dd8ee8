"""Argument types, shared options and the progress bar of the `bigl` commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bigl.train import TrainConfig

TRAIN_DEFAULTS = TrainConfig()


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--steps 0`` would fail deep inside training otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _finite_float(text: str, bound: str) -> float:
    """A finite float above 0 (``bound`` ">") or at least 0 (">="), or argparse's error naming the bound."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number {bound} 0, got {text!r}") from None
    if not ((value > 0 if bound == ">" else value >= 0) and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number {bound} 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a learning rate)."""
    return _finite_float(text, ">")


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (a weight; 0 turns its term off)."""
    return _finite_float(text, ">=")


def probability(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {value}")
    return value


MIRROR = {"auto": None, "on": True, "off": False}


def mirror_option(p: argparse.ArgumentParser) -> None:
    """``--mirror``: test-time mirroring (``segment_volume``'s ``mirror``)."""
    p.add_argument("--mirror", choices=tuple(MIRROR), default="auto",
                   help="also segment each slice's left-right mirror image and average: auto (default) for a "
                        "single network, not for an ensemble bundle, whose networks already average; off halves "
                        "a single network's time")


def bundle_outputs(*paths: str, overwrite: bool) -> None:
    """Check bundle outputs before any work and clear temporary files that a killed earlier run left."""
    from bigl._fs import check_distinct, check_output, clean_stale_temps
    from bigl.checkpoint import SUFFIX, partial_path

    for p in paths:
        check_output(p, suffix=SUFFIX, overwrite=overwrite, what="model bundle")
        for q in (p, partial_path(p)):
            clean_stale_temps(q)
    check_distinct([Path(p) for p in paths])


class TextProgress:
    """Progress bars on stderr (tqdm), one per stage of a long operation, fed by the library's progress callback.

    Only on a terminal: piped or logged output gets no bar lines.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar = None

    def __call__(self, p) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self._bar is None or self._bar.desc != p.stage or self._bar.total != p.total or p.step < self._bar.n:
            self.close()
            self._bar = tqdm(total=p.total, desc=p.stage, file=sys.stderr, dynamic_ncols=True)
        if p.metrics:
            self._bar.set_postfix({k: f"{v:.3g}" for k, v in list(p.metrics.items())[:4]}, refresh=False)
        self._bar.update(p.step - self._bar.n)
        if p.step >= p.total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def main_process() -> bool:
    """False on the ranks other than 0 of a torchrun job (they neither write nor print results)."""
    from bigl.distributed import current

    return current().is_main


def data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", default=None,
                   help="folder for the preprocessed cases (default: <dataset folder>.bigl-cache beside each dataset)")
    p.add_argument("--workers", type=int, default=TRAIN_DEFAULTS.workers,
                   help="data-loading worker processes (0: load in the training process)")


def common_options(p: argparse.ArgumentParser, *, seed: bool = False, overwrite: bool = True) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (auto = cuda when available)")
    if seed:
        p.add_argument("--seed", type=int, default=0)
    if overwrite:
        p.add_argument("--overwrite", action="store_true", help="replace existing output files")
