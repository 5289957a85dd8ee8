"""Small PNG rendering helpers for figures in docs and benchmark results (no matplotlib dependency).

Label colours follow the paper's figures: edema (2) green, necrotic/non-enhancing
core (1) yellow, enhancing tumour (4) red — so WT reads green, TC yellow, ET red.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LABEL_COLOURS: dict[int, tuple[int, int, int]] = {1: (255, 220, 0), 2: (0, 200, 60), 4: (230, 30, 30)}


def to_gray(image: np.ndarray) -> np.ndarray:
    """2D image -> uint8 grey, windowed to the 1–99.5 percentiles of its non-zero pixels."""
    img = np.asarray(image, dtype=np.float32)
    nz = img[img != 0]
    lo, hi = (np.percentile(nz, [1, 99.5]) if nz.size else (0.0, 1.0))
    return (np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def label_overlay(image: np.ndarray, labels: np.ndarray | None, alpha: float = 0.55) -> np.ndarray:
    """RGB uint8 (H, W, 3): grey image with BraTS labels blended on top, anterior up.

    Axial slices are (y, x) with y running posterior -> anterior (bigl.io), so
    rows are flipped to show anterior at the top as radiology viewers do.
    """
    gray = to_gray(image)
    rgb = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)
    if labels is not None:
        for value, colour in LABEL_COLOURS.items():
            m = labels == value
            rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(colour, np.float32)
    return rgb.astype(np.uint8)[::-1]


def tile(panels: list[tuple[str, np.ndarray]], scale: int = 2, columns: int | None = None) -> np.ndarray:
    """Titled panels side by side (wrapping after ``columns``), each upscaled by ``scale`` (nearest)."""
    columns = columns or len(panels)
    h = max(p.shape[0] for _, p in panels) * scale
    w = max(p.shape[1] for _, p in panels) * scale
    title_h = 16
    n_rows = -(-len(panels) // columns)
    canvas = Image.new("RGB", (columns * (w + 4), n_rows * (h + title_h + 4)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (title, panel) in enumerate(panels):
        r, c = divmod(i, columns)
        x0, y0 = c * (w + 4), r * (h + title_h + 4)
        img = panel if panel.ndim == 3 else np.repeat(to_gray(panel)[..., None], 3, axis=-1)
        img = np.kron(img, np.ones((scale, scale, 1), dtype=np.uint8))
        canvas.paste(Image.fromarray(img), (x0, y0 + title_h))
        draw.text((x0 + 2, y0 + 2), title[: w // 6], fill=(255, 255, 255))
    return np.asarray(canvas)


def save_png(rgb: np.ndarray, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path
