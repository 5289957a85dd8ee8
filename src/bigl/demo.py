"""The headless demo: summarise the bundled sample cases and segment them with the bundled demo model."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from bigl.checkpoint import load_bundle
from bigl.evaluate import format_table
from bigl.infer import segment_volume
from bigl.io import list_cases, load_images, load_labels
from bigl.metrics import evaluate_case, region_volumes, summarize


def run_demo(data: str | os.PathLike, *, device: str | torch.device = "auto", sequence: str = "t1") -> str:
    """Segment ``sequence`` of every case in ``data`` with the demo bundle; return a printable report."""
    cases = list_cases(data)
    bundle = load_bundle()
    lines = [f"sample data: {Path(data)} ({len(cases)} cases)",
             f"demo model:  {bundle.path.name} (trained on {', '.join(bundle.sequences)}; "
             f"{sum(p.numel() for p in bundle.segmenter.parameters()):,} parameters)", "",
             f"{'case':24s} {'shape (z,y,x)':16s} {'spacing mm':12s} {'true WT/TC/ET ml':20s} "
             f"{'pred WT/TC/ET ml':20s} {'Dice WT/TC/ET %':18s} {'s':>5s}"]
    per_case = []
    for case in cases:
        image = load_images(case, [sequence])[sequence]
        ref = load_labels(case).data
        t0 = time.perf_counter()
        seg = segment_volume(bundle, image, sequence=sequence, device=device, with_attention=False)
        dt = time.perf_counter() - t0
        scores = evaluate_case(seg.labels, ref, image.spacing)
        per_case.append(scores)
        true_ml = region_volumes(ref, image.spacing)
        fmt = lambda d: "/".join(f"{d[r]:.0f}" for r in ("WT", "TC", "ET"))  # noqa: E731
        dice = "/".join(f"{100 * scores[r]['dice']:.0f}" for r in ("WT", "TC", "ET"))
        spacing = "x".join(f"{s:g}" for s in image.spacing)
        lines.append(f"{case.case_id:24s} {str(image.data.shape):16s} {spacing:12s} {fmt(true_ml):20s} "
                     f"{fmt(seg.volumes_ml):20s} {dice:18s} {dt:5.1f}")
    lines += ["", format_table(summarize(per_case), f"demo model on {sequence} of the sample cases"),
              f"(voxels: {int(np.prod(image.data.shape)):,} per volume; device: {device})"]
    return "\n".join(lines)
