"""The headless demo: segment the bundled sample cases with the bundled models and print volumes and scores."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from bigl.bundles import MULTI_MODEL, T1_MODEL
from bigl.checkpoint import load_bundle
from bigl.evaluate import format_table
from bigl.infer import segment_volume
from bigl.io import Case, Volume, list_cases, load_images, load_labels
from bigl.metrics import evaluate_case, region_volumes, summarize


def _section(bundle_path: Path, cases: list[tuple[Case, dict[str, Volume], Volume]], device) -> list[str]:
    """Per-case volumes, Dice and time of one bundled model on every (case, images, labels), and the summary."""
    bundle = load_bundle(bundle_path)
    seqs = tuple(bundle.sequences)
    lines = [f"model: {bundle_path.name} (reads {', '.join(seqs)}; "
             f"{sum(p.numel() for p in bundle.segmenter.parameters()):,} parameters)", "",
             f"{'case':24s} {'shape (z,y,x)':16s} {'spacing mm':12s} {'true WT/TC/ET ml':20s} "
             f"{'pred WT/TC/ET ml':20s} {'Dice WT/TC/ET %':18s} {'s':>5s}"]
    per_case = []
    for case, images, labels in cases:
        ref, spacing_mm = labels.data, labels.spacing     # labels are on every image's grid (bigl.io checks)
        t0 = time.perf_counter()
        seg = segment_volume(bundle, images, device=device, with_attention=False)   # takes the model's sequences
        dt = time.perf_counter() - t0
        scores = evaluate_case(seg.labels, ref, spacing_mm)
        per_case.append(scores)
        true_ml = region_volumes(ref, spacing_mm)
        fmt = lambda d: "/".join(f"{d[r]:.0f}" for r in ("WT", "TC", "ET"))  # noqa: E731
        dice = "/".join(f"{100 * scores[r]['dice']:.0f}" for r in ("WT", "TC", "ET"))
        spacing = "x".join(f"{s:g}" for s in spacing_mm)
        lines.append(f"{case.case_id:24s} {str(ref.shape):16s} {spacing:12s} {fmt(true_ml):20s} "
                     f"{fmt(seg.volumes_ml):20s} {dice:18s} {dt:5.1f}")
    return lines + ["", format_table(summarize(per_case), f"{bundle_path.name} on {'+'.join(seqs)} of the cases")]


def run_demo(data: str | os.PathLike, *, device: str | torch.device = "auto") -> str:
    """Segment every case in ``data`` with the bundled T1 model and the four-sequence model; a printable report."""
    cases = [(case, load_images(case), load_labels(case)) for case in list_cases(data)]   # read once, used twice
    lines = [f"sample data: {Path(data)} ({len(cases)} cases)", ""]
    for path in (T1_MODEL, MULTI_MODEL):
        lines += _section(path, cases, device) + [""]
    shape = cases[0][2].data.shape
    lines.append(f"(voxels: {int(np.prod(shape)):,} per volume; device: {device})")
    return "\n".join(lines)
