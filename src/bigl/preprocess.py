"""Brain mask, intensity normalisation, brain cropping and slice sampling.

Everything here works on `(z, y, x)` arrays as defined by :mod:`bigl.io`; the
network sees axial slices ``vol[k]`` of shape ``(y, x)``.

Normalisation (recorded in every model bundle as :data:`NORMALIZATION`):
intensities inside the brain mask are clipped to their 0.5–99.5 percentiles,
then z-scored with the mean and standard deviation of the clipped brain
voxels; everything outside the mask is set to 0. This makes the arbitrary
per-scanner intensity scale of MR irrelevant and keeps background at exactly 0,
which the translator and the segmenter rely on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

NORMALIZATION = {"method": "zscore_in_brain", "clip_percentiles": [0.5, 99.5]}


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Brain mask of a skull-stripped volume: non-zero voxels, holes filled per axial slice."""
    mask = image != 0
    for k in range(mask.shape[0]):
        if mask[k].any():
            mask[k] = ndimage.binary_fill_holes(mask[k])
    return mask


def normalize(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Clip to brain percentiles and z-score inside the brain; 0 outside. Returns float32."""
    if mask is None:
        mask = brain_mask(image)
    out = np.zeros(image.shape, dtype=np.float32)
    values = image[mask].astype(np.float64)
    if values.size == 0:
        return out
    lo, hi = np.percentile(values, NORMALIZATION["clip_percentiles"])
    values = np.clip(values, lo, hi)
    std = values.std()
    out[mask] = ((values - values.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
    return out


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Tight bounding box of a mask as slices, grown by ``margin`` voxels and clipped to the array."""
    if not mask.any():
        return tuple(slice(0, 0) for _ in mask.shape)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def crop_or_pad_2d(image: np.ndarray, center: tuple[float, float], size: tuple[int, int]) -> np.ndarray:
    """Window of ``size`` (h, w) centred on ``center`` over the last two axes, zero-padded where it leaves the image."""
    h, w = size
    top = int(round(center[0] - h / 2))
    left = int(round(center[1] - w / 2))
    out = np.zeros(image.shape[:-2] + (h, w), dtype=image.dtype)
    H, W = image.shape[-2:]
    sy0, sy1 = max(top, 0), min(top + h, H)
    sx0, sx1 = max(left, 0), min(left + w, W)
    if sy1 > sy0 and sx1 > sx0:
        out[..., sy0 - top:sy1 - top, sx0 - left:sx1 - left] = image[..., sy0:sy1, sx0:sx1]
    return out


@dataclass
class PreparedVolume:
    """A normalised volume ready for slicing: image, brain mask and (optionally) class indices."""

    image: np.ndarray               # (z, y, x) float32, normalised
    mask: np.ndarray                # (z, y, x) bool
    target: np.ndarray | None       # (z, y, x) int64 class indices 0..3, or None when unlabelled
    name: str = ""

    @property
    def brain_slices(self) -> np.ndarray:
        return np.flatnonzero(self.mask.any(axis=(1, 2)))

    @property
    def tumour_slices(self) -> np.ndarray:
        if self.target is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero((self.target > 0).any(axis=(1, 2)))

    @property
    def brain_center(self) -> tuple[float, float]:
        ys, xs = bounding_box(self.mask.any(axis=0))
        return ((ys.start + ys.stop) / 2, (xs.start + xs.stop) / 2)


def labels_to_classes(labels: np.ndarray) -> np.ndarray:
    """BraTS labels {0,1,2,4} -> class indices {0,1,2,3}."""
    from bigl.io import LABEL_VALUES

    lut = np.zeros(max(LABEL_VALUES) + 1, dtype=np.int64)
    for i, v in enumerate(LABEL_VALUES):
        lut[v] = i
    return lut[labels]


def classes_to_labels(classes: np.ndarray) -> np.ndarray:
    """Class indices {0,1,2,3} -> BraTS labels {0,1,2,4} (uint8)."""
    from bigl.io import LABEL_VALUES

    return np.asarray(LABEL_VALUES, dtype=np.uint8)[classes]


def prepare(image: np.ndarray, labels: np.ndarray | None = None, name: str = "") -> PreparedVolume:
    """Mask and normalise one raw volume (and map its labels to class indices)."""
    mask = brain_mask(image)
    target = labels_to_classes(labels) if labels is not None else None
    return PreparedVolume(normalize(image, mask), mask, target, name)


def patch_size_for(volumes: list[PreparedVolume], stride: int, margin: int = 4) -> tuple[int, int]:
    """Smallest stride-multiple (h, w) window that holds every volume's axial brain extent plus a margin."""
    h = w = stride
    for v in volumes:
        ys, xs = bounding_box(v.mask.any(axis=0))
        h = max(h, round_up(ys.stop - ys.start + 2 * margin, stride))
        w = max(w, round_up(xs.stop - xs.start + 2 * margin, stride))
    return h, w


class SliceSampler:
    """Draws (volume, slice) pairs from brain-containing axial slices, oversampling tumour slices.

    With probability ``tumour_fraction`` the slice is drawn from slices that
    contain tumour (when the volume has labels), otherwise from all slices that
    contain brain.
    """

    def __init__(self, volumes: list[PreparedVolume], tumour_fraction: float = 0.5) -> None:
        self.volumes = volumes
        self.tumour_fraction = tumour_fraction
        self._brain = [v.brain_slices for v in volumes]
        self._tumour = [v.tumour_slices for v in volumes]

    def sample(self, rng: np.random.Generator) -> tuple[int, int]:
        i = int(rng.integers(len(self.volumes)))
        pool = self._tumour[i] if (len(self._tumour[i]) and rng.random() < self.tumour_fraction) else self._brain[i]
        return i, int(pool[rng.integers(len(pool))])
