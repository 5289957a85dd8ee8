"""Render docs/sample_case.png: one case's t1, t1ce, t2, flair and labels side by side.

Usage (from the repository root):

    .venv/bin/python scripts/make_sample_figure.py [--data sample_data] [--case 0] [--out docs/sample_case.png]

Reads the case through ``bigl.io`` (so the figure shows what is on disk), picks
the axial slice with the largest tumour area (or ``--slice``) and also a
coronal slice through the tumour centre (``--views axial,coronal``). Each
panel is windowed from 0 to the 99.5th percentile of its brain voxels. The label
panel overlays the BraTS labels on FLAIR: edema (2) green, necrotic /
non-enhancing core (1) yellow, enhancing tumour (4) red - i.e. WT green,
TC yellow, ET red as in the BiGL paper's figures. Needs no matplotlib: numpy,
scipy's zoom and Pillow (a scikit-image dependency) for the captions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from bigl import io

LABEL_COLOURS = {2: (40, 200, 60), 1: (250, 220, 30), 4: (230, 30, 30)}
TITLES = ("T1", "T1ce", "T2", "FLAIR", "labels")


def _window(sl: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Map [0, 99.5th percentile of the brain] to [0, 1], as a radiological display starts at 0."""
    vals = sl[brain]
    hi = np.percentile(vals, 99.5) if vals.size else 1.0
    return np.clip(sl / max(hi, 1e-6), 0, 1) * brain


def _overlay(grey: np.ndarray, seg: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for lab, col in LABEL_COLOURS.items():
        m = seg == lab
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(col) / 255.0
    return rgb


def _row(images: dict[str, np.ndarray], seg: np.ndarray, take, zoom: tuple[float, float]) -> list[np.ndarray]:
    brain = take(images["t1"]) > 0
    panels = []
    for key in io.SEQUENCES:
        g = _window(take(images[key]).astype(np.float64), brain)
        panels.append(np.repeat(g[..., None], 3, axis=-1))
    panels.append(_overlay(panels[3][..., 0], take(seg)))
    # Physical aspect: zoom each panel so one pixel is the same size in mm.
    return [np.stack([ndimage.zoom(p[..., c], zoom, order=1) for c in range(3)], axis=-1) for p in panels]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="sample_data")
    ap.add_argument("--case", type=int, default=0, help="index into the sorted case list")
    ap.add_argument("--slice", type=int, default=None, help="axial slice index (default: largest tumour area)")
    ap.add_argument("--views", default="axial,coronal")
    ap.add_argument("--px-per-mm", type=float, default=1.5)
    ap.add_argument("--out", default="docs/sample_case.png")
    args = ap.parse_args()

    case = io.list_cases(args.data)[args.case]
    vols = io.load_images(case)
    images = {k: v.data for k, v in vols.items()}
    seg = io.load_labels(case).data
    sz, sy, sx = vols["t1"].spacing
    k = args.slice if args.slice is not None else int(np.argmax((seg > 0).sum(axis=(1, 2))))
    cy = int(round(np.argwhere(seg > 0)[:, 1].mean())) if (seg > 0).any() else seg.shape[1] // 2

    rows = []
    for view in args.views.split(","):
        if view == "axial":
            # vol[k] is (y, x); flip y so anterior is up, flip x so patient's left is on the right (radiological).
            take, zoom = (lambda v: v[k][::-1, ::-1]), (sy * args.px_per_mm, sx * args.px_per_mm)
        elif view == "coronal":
            take, zoom = (lambda v: v[:, cy, :][::-1, ::-1]), (sz * args.px_per_mm, sx * args.px_per_mm)
        else:
            raise SystemExit(f"unknown view {view!r}; use axial and/or coronal")
        rows.append(_row(images, seg, take, zoom))

    gap, title_h = 4, 18
    h = sum(r[0].shape[0] for r in rows) + gap * (len(rows) - 1) + title_h
    w = sum(p.shape[1] for p in rows[0]) + gap * (len(rows[0]) - 1)
    canvas = np.zeros((h, w, 3))
    y = title_h
    for r in rows:
        x = 0
        for p in r:
            canvas[y : y + p.shape[0], x : x + p.shape[1]] = p
            x += p.shape[1] + gap
        y += r[0].shape[0] + gap
    img = Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    x = 0
    for p, t in zip(rows[0], TITLES):
        draw.text((x + 4, 3), t, fill=(255, 255, 255))
        x += p.shape[1] + gap
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    print(f"wrote {out} ({case.case_id}, axial slice {k}, coronal slice {cy})")


if __name__ == "__main__":
    main()
