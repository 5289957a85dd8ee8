"""Segmentation metrics for the BraTS regions: Dice, HD95 (mm) and volumes (ml).

Regions are unions of BraTS labels: WT (whole tumour) = {1, 2, 4},
TC (tumour core) = {1, 4}, ET (enhancing tumour) = {4}.

Conventions (stated once here, repeated where they matter):

* Masks are boolean arrays of equal shape, 2D or 3D; ``spacing`` is the voxel
  size in mm per axis, in the array's axis order (``(z, y, x)`` for volumes
  from :mod:`bigl.io`).
* **Surface** of a mask = ``mask XOR binary_erosion(mask)`` with the
  face-connected structuring element (6-neighbourhood in 3D, 4 in 2D) and
  everything outside the image treated as background, so object voxels on the
  image border are surface voxels.
* **HD95** = ``max(P95(d(S_pred -> S_ref)), P95(d(S_ref -> S_pred)))``: for
  each surface voxel of one mask the Euclidean distance in mm (anisotropic
  spacing) to the nearest surface voxel of the other, the 95th percentile
  (linear interpolation) of each direction, and the larger of the two. This
  is MONAI's ``compute_hausdorff_distance(percentile=95)`` definition; medpy
  instead pools both directions before taking the percentile.
* **Empty masks.** Dice: both empty -> 1.0, exactly one empty -> 0.0.
  HD95: both empty -> 0.0, exactly one empty -> the image diagonal in mm
  (``sqrt(sum((shape * spacing)**2))``), a finite worst case that keeps means
  finite (MONAI returns NaN/inf there).

Checked against MONAI 1.6 (``tests/bigl/test_metrics.py``): Dice and HD95 agree
to float32 precision, masks touching the image border included (MONAI pads
its crop with background, as the erosion here does).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from bigl.errors import BiglError

REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}

_METRIC_KEYS = ("dice", "hd95")


def _same_shape(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise BiglError(
            f"prediction shape {pred.shape} differs from reference shape {ref.shape}; "
            "compare a prediction with the labels of the same case and grid."
        )


def _spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    values = np.atleast_1d(np.asarray(spacing, dtype=float))
    if values.size == 1:
        values = np.repeat(values, ndim)
    sp = tuple(float(s) for s in values)
    if len(sp) != ndim or not all(np.isfinite(s) and s > 0 for s in sp):
        raise BiglError(
            f"voxel spacing {spacing} is invalid for a {ndim}D mask; give {ndim} positive sizes in mm, one per axis."
        )
    return sp


def region_mask(labels: np.ndarray, region: str) -> np.ndarray:
    """Boolean mask of a BraTS region (``"WT"``, ``"TC"`` or ``"ET"``) in a label map."""
    if region not in REGIONS:
        raise BiglError(f"unknown region {region!r}; choose from {', '.join(REGIONS)}.")
    return np.isin(labels, REGIONS[region])


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient ``2|P∩R| / (|P| + |R|)`` of two boolean masks.

    Both empty -> 1.0 (nothing to find, nothing found); exactly one empty -> 0.0.
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    _same_shape(pred, ref)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)  # face connectivity
    return mask ^ ndimage.binary_erosion(mask, structure=structure, border_value=0)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm between two boolean masks.

    ``max(P95(d(S_pred -> S_ref)), P95(d(S_ref -> S_pred)))`` over face-connected
    surfaces (see the module docstring); works for 2D and 3D, anisotropic
    ``spacing`` (mm per axis). Both empty -> 0.0; exactly one empty -> the image
    diagonal in mm (a finite worst case).
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    _same_shape(pred, ref)
    sp = _spacing(spacing, pred.ndim)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return 0.0
    if has_pred != has_ref:
        return float(np.sqrt(np.sum((np.asarray(pred.shape) * np.asarray(sp)) ** 2)))

    # Work inside the union's bounding box plus one background voxel (clipped to
    # the image): distances between the two surfaces are unchanged, erosion at
    # the image border is unchanged (outside counts as background either way),
    # and a whole-brain volume costs only the tumour's box.
    idx = np.nonzero(pred | ref)
    box = tuple(
        slice(max(int(i.min()) - 1, 0), min(int(i.max()) + 2, n)) for i, n in zip(idx, pred.shape, strict=True)
    )
    s_pred, s_ref = _surface(pred[box]), _surface(ref[box])
    to_ref = ndimage.distance_transform_edt(~s_ref, sampling=sp)[s_pred]
    to_pred = ndimage.distance_transform_edt(~s_pred, sampling=sp)[s_ref]
    return float(max(np.percentile(to_ref, 95), np.percentile(to_pred, 95)))


def volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a boolean mask in millilitres (voxel count x voxel volume in mm³ / 1000)."""
    mask = np.asarray(mask, dtype=bool)
    sp = _spacing(spacing, mask.ndim)
    return float(mask.sum()) * float(np.prod(sp)) / 1000.0


def region_volumes(labels: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Volume in ml of each region: ``{"WT": ml, "TC": ml, "ET": ml}``."""
    return {region: volume_ml(region_mask(labels, region), spacing) for region in REGIONS}


def evaluate_case(
    pred_labels: np.ndarray, ref_labels: np.ndarray, spacing: Sequence[float]
) -> dict[str, dict[str, float]]:
    """Dice, HD95 (mm) and predicted/reference volumes (ml) for WT, TC and ET.

    Returns ``{"WT": {"dice", "hd95", "pred_ml", "ref_ml"}, "TC": ..., "ET": ...}``;
    empty regions follow the rules of :func:`dice` and :func:`hd95`.
    """
    pred_labels = np.asarray(pred_labels)
    ref_labels = np.asarray(ref_labels)
    _same_shape(pred_labels, ref_labels)
    out: dict[str, dict[str, float]] = {}
    for region in REGIONS:
        p, r = region_mask(pred_labels, region), region_mask(ref_labels, region)
        out[region] = {
            "dice": dice(p, r),
            "hd95": hd95(p, r, spacing),
            "pred_ml": volume_ml(p, spacing),
            "ref_ml": volume_ml(r, spacing),
        }
    return out


def summarize(per_case: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over cases of Dice (fraction 0..1) and HD95 (mm).

    ``per_case`` is a list of :func:`evaluate_case` results. Returns, for each
    region and for ``"average"``, ``{"dice_mean", "dice_std", "hd95_mean",
    "hd95_std"}``. ``"average"`` first averages the three regions within each
    case, then takes mean/std over cases. Std is the population std (ddof=0).
    """
    if not per_case:
        raise BiglError("no cases to summarise; evaluate at least one case first.")
    table = {
        key: np.array([[case[region][key] for region in REGIONS] for case in per_case], dtype=float)
        for key in _METRIC_KEYS
    }  # each (n_cases, n_regions)
    summary: dict[str, dict[str, float]] = {}
    for j, region in enumerate(list(REGIONS) + ["average"]):
        stats: dict[str, float] = {}
        for key, values in table.items():
            column = values[:, j] if region != "average" else values.mean(axis=1)
            stats[f"{key}_mean"] = float(column.mean())
            stats[f"{key}_std"] = float(column.std())
        summary[region] = stats
    return summary
