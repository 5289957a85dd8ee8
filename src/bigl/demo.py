"""The headless demo: the product's story on the bundled sample cases.

1. the bundled T1 model on T1, the sequence it was trained on;
2. the same model on T2, a sequence it never saw: it fails;
3. that model adapted to T2 without T2 labels (the bundled ``t1_to_t2`` model, made by the
   ``bigl adapt`` command in docs/adaptation.md; ``live=True`` runs that adaptation now);
4. the four-sequence model on every sequence of a case.
Each prints per-case volumes, Dice and time, and the mean Dice.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bigl.adapt.config import AdaptConfig
from bigl.bundles import ADAPTED_T2_MODEL, MULTI_MODEL, T1_MODEL
from bigl.checkpoint import Bundle, load_bundle
from bigl.evaluate import format_table
from bigl.infer import segment_volume
from bigl.io import Case, Volume, list_cases, load_images, load_labels
from bigl.metrics import evaluate_case, region_volumes, summarize
from bigl.progress import ProgressFn

log = logging.getLogger(__name__)

Cases = list[tuple[Case, dict[str, Volume], Volume]]
# `bigl adapt` with defaults on this project's 2-core reference CPU, measured (docs/adaptation.md: 14.3 min on
# 12 + 12 cases by benchmarks/adapt_time.py, 2026-12-02; the time follows the step counts, not the case count)
ADAPT_MINUTES = 15


@dataclass
class DemoReport:
    text: str                          # what `bigl demo` prints
    mean_dice: dict[str, float]        # section title -> mean of WT/TC/ET Dice over the cases (0-1)


def _section(title: str, bundle: Bundle, cases: Cases, device, sequence: str | None = None
             ) -> tuple[list[str], float]:
    """Per-case volumes, Dice and time of one model on every case, and the summary; and the mean Dice.

    ``sequence``: the one sequence fed to the model whatever it was trained on (``None``: the model's own).
    """
    name = bundle.path.name if bundle.path else "adapted now"
    reads = sequence or "+".join(bundle.sequences)
    made = (f"adapted from {bundle.source_sequence} to {'+'.join(bundle.sequences)}" if bundle.source_sequence
            else f"trained on {'+'.join(bundle.sequences)}")
    n = sum(p.numel() for p in bundle.segmenter.parameters())
    size = f"{len(bundle.segmenters)} segmenters of {n:,} parameters, averaged" if bundle.members else f"{n:,} parameters"
    lines = [title, f"model: {name} ({made}; {size}), fed {reads}", "",
             f"{'case':24s} {'true WT/TC/ET ml':18s} {'pred WT/TC/ET ml':18s} {'Dice WT/TC/ET %':16s} {'s':>5s}"]
    per_case = []
    for case, images, labels in cases:
        ref, spacing_mm = labels.data, labels.spacing     # labels are on every image's grid (bigl.io checks)
        t0 = time.perf_counter()
        seg = segment_volume(bundle, images[sequence] if sequence else images, device=device, with_attention=False)
        dt = time.perf_counter() - t0
        scores = evaluate_case(seg.labels, ref, spacing_mm)
        per_case.append(scores)
        fmt = lambda d: "/".join(f"{d[r]:.0f}" for r in ("WT", "TC", "ET"))  # noqa: E731
        dice = "/".join(f"{100 * scores[r]['dice']:.0f}" for r in ("WT", "TC", "ET"))
        lines.append(f"{case.case_id:24s} {fmt(region_volumes(ref, spacing_mm)):18s} {fmt(seg.volumes_ml):18s} "
                     f"{dice:16s} {dt:5.1f}")
    summary = summarize(per_case)
    return lines + ["", format_table(summary, f"{name} on {reads}"), ""], summary["average"]["dice_mean"]


def _adapt_live(cases: list[Case], device, progress: ProgressFn | None, cfg: AdaptConfig | None,
                notify: Callable[[str], None]) -> tuple[Bundle, list[str]]:
    """Adapt the bundled T1 model to T2 now: source = the cases' T1 with labels, target = their T2 images only."""
    from bigl.adapt import adapt

    cfg = cfg or AdaptConfig()
    notify(f"Adapting the T1 model to T2 now ({cfg.translator.steps} translator steps, then {cfg.steps} alignment "
           f"steps): about {ADAPT_MINUTES} minutes on a 2-core CPU, a minute or two on a GPU; the bar shows the "
           "time left.")
    t0 = time.perf_counter()
    result = adapt(load_bundle(T1_MODEL), cases, "t1", cases, "t2", cfg, device=device, progress=progress)
    note = (f"(adapted just now in {time.perf_counter() - t0:.0f} s, on the sample cases' T1 with labels and their "
            "T2 images without labels; the T2 labels below only score it)")
    return result.bundle, [note]


def run_demo(data: str | os.PathLike, *, device: str | torch.device = "auto", live: bool = False,
             progress: ProgressFn | None = None, adapt_config: AdaptConfig | None = None,
             notify: Callable[[str], None] | None = None) -> DemoReport:
    """Run the demo's four sections on every case in ``data``: the printable report and each section's mean Dice.

    ``live``: adapt the T1 model to T2 now (``progress`` reports it; ``adapt_config``, default the library's
    defaults) instead of loading the bundled adapted model; ``notify`` gets the time estimate first (default:
    the log).
    """
    listed = list_cases(data)
    cases = [(case, load_images(case), load_labels(case)) for case in listed]   # read once, used by every section
    t1 = load_bundle(T1_MODEL)
    if live:
        adapted, note = _adapt_live(listed, device, progress, adapt_config, notify or log.info)
    else:
        adapted, note = load_bundle(ADAPTED_T2_MODEL), []
    lines = [f"sample data: {Path(data)} ({len(cases)} cases)", ""]
    scores = {}
    for title, bundle, sequence in (
            ("1. The T1 model on T1, the sequence it was trained on", t1, "t1"),
            ("2. The same T1 model on T2, a sequence it never saw: it fails", t1, "t2"),
            ("3. The T1 model adapted to T2 without any T2 label (BiGL)", adapted, "t2"),
            ("4. The four-sequence model, every sequence of each case", load_bundle(MULTI_MODEL), None)):
        section, scores[title] = _section(title, bundle, cases, device, sequence)
        lines += section[:-1] + (note if bundle is adapted else []) + section[-1:]
    shape = cases[0][2].data.shape
    lines.append(f"(voxels: {int(np.prod(shape)):,} per volume; device: {device})")
    return DemoReport("\n".join(lines), scores)
