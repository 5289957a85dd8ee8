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
    rows, cols = mask.any(axis=2), mask.any(axis=1)         # (z, y), (z, x)
    for k in np.flatnonzero(rows.any(axis=1)):
        # holes filled inside the slice's non-zero box plus a 1-voxel background ring: the same result
        # (background outside the box reaches the slice border), 5x faster on a BraTS volume
        ys, xs = np.flatnonzero(rows[k]), np.flatnonzero(cols[k])
        box = (k, slice(max(ys[0] - 1, 0), ys[-1] + 2), slice(max(xs[0] - 1, 0), xs[-1] + 2))
        mask[box] = ndimage.binary_fill_holes(mask[box])
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
    """A normalised volume ready for slicing: image, brain mask and (optionally) class indices.

    One sequence: ``image`` is (z, y, x). Several sequences (a multi-sequence
    model's input): ``image`` is (z, C, y, x), channels in the model's sequence
    order, each normalised on its own; ``image[k]`` is then slice ``k`` of every
    channel.
    """

    image: np.ndarray               # (z, y, x) or (z, C, y, x) float32, normalised
    mask: np.ndarray                # (z, y, x) bool
    target: np.ndarray | None       # (z, y, x) int64 class indices 0..3, or None when unlabelled
    name: str = ""
    spacing: tuple[float, float, float] | None = None   # mm (z, y, x), when known

    @property
    def channels(self) -> int:
        return 1 if self.image.ndim == 3 else self.image.shape[1]

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


def prepare(image: np.ndarray | list[np.ndarray], labels: np.ndarray | None = None, name: str = "") -> PreparedVolume:
    """Mask and normalise one raw volume, or a list of co-registered sequences (and map labels to class indices).

    A list gives a (z, C, y, x) image; each sequence is normalised inside its
    own brain mask, and the volume's mask is their union.
    """
    target = labels_to_classes(labels) if labels is not None else None
    if isinstance(image, np.ndarray):
        mask = brain_mask(image)
        return PreparedVolume(normalize(image, mask), mask, target, name)
    masks = [brain_mask(im) for im in image]
    stacked = np.stack([normalize(im, m) for im, m in zip(image, masks)], axis=1)
    return PreparedVolume(stacked, np.logical_or.reduce(masks), target, name)


def inplane_factor(spacing: tuple[float, float, float], target: tuple[float, float] | None,
                   tolerance: float = 0.1) -> tuple[float, float] | None:
    """Zoom factors (y, x) that bring ``spacing`` to the ``target`` in-plane spacing, or None when within tolerance."""
    if not target:
        return None
    f = (spacing[1] / target[0], spacing[2] / target[1])
    return f if any(abs(v - 1) > tolerance for v in f) else None


def resample_inplane(volume: np.ndarray, factor: tuple[float, float], *, labels: bool = False) -> np.ndarray:
    """Zoom the last two axes of a (z, y, x) or (z, C, y, x) array by ``factor``: linear for images, nearest for labels.

    The network is 2D and learns structures at the pixel size it was trained
    at, so an input at another in-plane resolution is brought to it first
    (slice thickness does not change what a 2D network sees).
    """
    zoom = (1.0,) * (volume.ndim - 2) + tuple(factor)
    return ndimage.zoom(volume, zoom, order=0 if labels else 1, grid_mode=True, mode="grid-constant")


def resample_prepared(vol: PreparedVolume, inplane_mm: tuple[float, float]) -> PreparedVolume:
    """``vol`` at the in-plane spacing ``inplane_mm`` (unchanged when already within 10 %); needs ``vol.spacing``."""
    factor = inplane_factor(vol.spacing, inplane_mm)
    if factor is None:
        return vol
    mask = resample_inplane(vol.mask, factor, labels=True)
    image = resample_inplane(vol.image, factor) * (mask if vol.image.ndim == 3 else mask[:, None])   # 0 outside
    target = resample_inplane(vol.target, factor, labels=True) if vol.target is not None else None
    return PreparedVolume(image.astype(np.float32), mask, target, vol.name,
                          (vol.spacing[0], float(inplane_mm[0]), float(inplane_mm[1])))


def stack_slices(image: np.ndarray, idx: np.ndarray, context: int = 0) -> np.ndarray:
    """Network input channels of slices ``idx``: (B, C * (2 * context + 1), y, x).

    2.5D input: slice ``k`` with its ``context`` neighbours on each side
    (clamped at the volume's ends), neighbour-major, then sequence channels.
    """
    idx = np.asarray(idx)
    if context:
        offsets = np.arange(-context, context + 1)
        idx = np.clip(idx[:, None] + offsets[None], 0, image.shape[0] - 1)       # (B, 2c+1)
    out = image[idx]                                  # (B, y, x), (B, C, y, x), (B, 2c+1, y, x) or (B, 2c+1, C, y, x)
    return out.reshape(len(idx), -1, *image.shape[-2:])


def patch_size_for(volumes: list[PreparedVolume], stride: int, margin: int = 4) -> tuple[int, int]:
    """Smallest stride-multiple (h, w) window that holds every volume's axial brain extent plus a margin.

    A cached volume (:class:`bigl.data.cache.CachedVolume`) knows its brain box; others measure their mask.
    """
    h = w = stride
    for v in volumes:
        box = getattr(v, "brain_box", None)
        if box is None:
            ys, xs = bounding_box(v.mask.any(axis=0))
            box = (ys.start, ys.stop, xs.start, xs.stop)
        h = max(h, round_up(box[1] - box[0] + 2 * margin, stride))
        w = max(w, round_up(box[3] - box[2] + 2 * margin, stride))
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
