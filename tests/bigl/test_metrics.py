"""bigl.metrics: hand-counted values, the empty-mask rules, and agreement with MONAI."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from bigl import metrics
from bigl.errors import BiglError


def test_region_mask():
    labels = np.array([0, 1, 2, 4, 4, 2])
    assert metrics.region_mask(labels, "WT").tolist() == [False, True, True, True, True, True]
    assert metrics.region_mask(labels, "TC").tolist() == [False, True, False, True, True, False]
    assert metrics.region_mask(labels, "ET").tolist() == [False, False, False, True, True, False]
    with pytest.raises(BiglError, match="unknown region 'NCR'"):
        metrics.region_mask(labels, "NCR")


def test_dice_hand_counted():
    pred = np.zeros((3, 4), bool)
    ref = np.zeros((3, 4), bool)
    pred[0, :4] = True  # 4 voxels
    ref[0, 1:4] = True  # 3 of them shared ...
    ref[1, :3] = True  # ... + 3 more = 6 voxels
    assert metrics.dice(pred, ref) == pytest.approx(2 * 3 / (4 + 6))


def test_dice_empty_rules():
    empty, one = np.zeros((2, 3, 4), bool), np.zeros((2, 3, 4), bool)
    one[1, 1, 1] = True
    assert metrics.dice(empty, empty) == 1.0
    assert metrics.dice(one, empty) == 0.0
    assert metrics.dice(empty, one) == 0.0
    with pytest.raises(BiglError, match="shape"):
        metrics.dice(one, one[0])


def two_cubes(gap_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Two 3x3x3 cubes whose near faces are 8 voxels apart along ``gap_axis``."""
    a = np.zeros((14, 14, 14), bool)
    b = np.zeros_like(a)
    a[0:3, 0:3, 0:3] = True
    idx = [slice(0, 3)] * 3
    idx[gap_axis] = slice(10, 13)
    b[tuple(idx)] = True
    return a, b


def test_hd95_two_cubes_known_value():
    # Surface of a 3x3x3 cube = its 26 non-centre voxels. Distances from cube A's
    # surface to cube B's near face: 9 voxels at 10, 8 at 9, 9 at 8 (layers x=0,1,2).
    # P95 of 26 sorted values: position 0.95*25 = 23.75, between sorted[23] = sorted[24] = 10.
    a, b = two_cubes(gap_axis=2)
    assert metrics.hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(10.0)
    assert metrics.hd95(b, a, (1.0, 1.0, 1.0)) == pytest.approx(10.0)


def test_hd95_anisotropic_spacing_scales_only_its_axis():
    a, b = two_cubes(gap_axis=2)
    assert metrics.hd95(a, b, (1.0, 1.0, 2.0)) == pytest.approx(20.0)  # gap is along the 2 mm axis
    assert metrics.hd95(a, b, (5.0, 1.0, 1.0)) == pytest.approx(10.0)  # other axis: unchanged
    a, b = two_cubes(gap_axis=0)
    assert metrics.hd95(a, b, (2.5, 1.0, 1.0)) == pytest.approx(25.0)


def test_hd95_ignores_a_small_outlier_but_max_would_not():
    # 2D: identical 10x10 squares (36 surface pixels) + one far pixel in pred.
    ref = np.zeros((40, 40), bool)
    ref[2:12, 2:12] = True
    pred = ref.copy()
    pred[35, 35] = True
    # pred surface: 36 zeros and one ~33 px; P95 at position 0.95*36 = 34.2 -> 0
    assert metrics.hd95(pred, ref, (1.0, 1.0)) == 0.0
    # 3 outliers, 19, 24 and ~33.9 px from the square's right edge (row 11):
    # 39 pred-surface distances, P95 at position 0.95*38 = 36.1 -> 19 + 0.1*(24 - 19)
    pred[30, 6] = pred[35, 6] = True
    assert metrics.hd95(pred, ref, (1.0, 1.0)) == pytest.approx(19.5)


def test_hd95_empty_rules_and_border():
    empty = np.zeros((4, 5, 6), bool)
    one = empty.copy()
    one[2, 2, 2] = True
    assert metrics.hd95(empty, empty, (1.0, 2.0, 3.0)) == 0.0
    diagonal = math.sqrt((4 * 1.0) ** 2 + (5 * 2.0) ** 2 + (6 * 3.0) ** 2)
    assert metrics.hd95(one, empty, (1.0, 2.0, 3.0)) == pytest.approx(diagonal)
    assert metrics.hd95(empty, one, (1.0, 2.0, 3.0)) == pytest.approx(diagonal)
    full = np.ones((4, 5, 6), bool)  # all voxels touch... the border counts as background
    assert metrics.hd95(full, full, (1.0, 1.0, 1.0)) == 0.0
    # single voxels: surface is the voxel itself, HD95 is their distance in mm
    other = empty.copy()
    other[2, 2, 5] = True
    assert metrics.hd95(one, other, (1.0, 2.0, 3.0)) == pytest.approx(9.0)
    with pytest.raises(BiglError, match="spacing"):
        metrics.hd95(one, other, (1.0, 2.0))


def test_volume_and_region_volumes():
    labels = np.zeros((2, 3, 4), np.uint8)
    labels[0, 0, :] = 2  # 4 edema voxels
    labels[1, 0, :2] = 1  # 2 necrosis voxels
    labels[1, 2, :3] = 4  # 3 enhancing voxels
    spacing = (1.0, 2.0, 3.0)  # 6 mm^3 per voxel
    assert metrics.volume_ml(labels > 0, spacing) == pytest.approx(9 * 6 / 1000)
    vols = metrics.region_volumes(labels, spacing)
    assert vols == pytest.approx({"WT": 0.054, "TC": 0.030, "ET": 0.018})


def test_evaluate_case_and_summarize():
    ref = np.zeros((1, 4, 4), np.uint8)
    ref[0, 0, :2] = 4
    ref[0, 1, :2] = 2
    pred = ref.copy()
    pred[0, 1, :2] = 4  # edema predicted as ET: WT perfect, TC/ET 2 of 4 predicted voxels right
    result = metrics.evaluate_case(pred, ref, (2.0, 1.0, 1.0))
    assert set(result) == {"WT", "TC", "ET"}
    assert result["WT"]["dice"] == 1.0 and result["WT"]["hd95"] == 0.0
    assert result["ET"]["dice"] == pytest.approx(2 * 2 / (4 + 2))
    assert result["ET"]["pred_ml"] == pytest.approx(4 * 2 / 1000)
    assert result["ET"]["ref_ml"] == pytest.approx(2 * 2 / 1000)
    assert result["TC"] == result["ET"]

    case = lambda d, h: {r: {"dice": d[i], "hd95": h[i], "pred_ml": 0.0, "ref_ml": 0.0} for i, r in enumerate("WT TC ET".split())}  # noqa: E731
    summary = metrics.summarize([case((0.9, 0.6, 0.3), (1, 2, 3)), case((0.7, 0.8, 0.6), (3, 4, 8))])
    assert summary["WT"] == pytest.approx({"dice_mean": 0.8, "dice_std": 0.1, "hd95_mean": 2.0, "hd95_std": 1.0})
    assert summary["ET"]["hd95_std"] == pytest.approx(2.5)
    # "average": per case (0.6, 0.7) dice and (2, 5) hd95
    assert summary["average"] == pytest.approx(
        {"dice_mean": 0.65, "dice_std": 0.05, "hd95_mean": 3.5, "hd95_std": 1.5}
    )
    with pytest.raises(BiglError, match="no cases"):
        metrics.summarize([])


def blobs(seed: int, shape=(16, 24, 20)) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping random smooth blobs; odd seeds let them touch the image border."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.0)
        mask = field > np.quantile(field, 0.8)
        if seed % 2:
            out.append(mask)
            continue
        mask[[0, -1]] = False
        mask[:, [0, -1]] = False
        mask[:, :, [0, -1]] = False
        out.append(mask)
    return out[0], out[1]


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")  # MONAI-internal deprecation
@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_monai(seed):
    # Same definition (face-connected XOR-erosion surface, outside = background,
    # max of the two directed P95s): agreement is to MONAI's float32 precision.
    # Imported, not importorskip: MONAI is in the test extra, and a missing MONAI must fail the
    # cross-check rather than skip it silently (issue 18).
    import monai.metrics as monai_metrics
    import torch
    pred, ref = blobs(seed)
    spacing = (2.5, 1.0, 0.7)
    p = torch.from_numpy(pred[None, None].astype(np.float32))
    r = torch.from_numpy(ref[None, None].astype(np.float32))
    expected_hd = monai_metrics.compute_hausdorff_distance(
        p, r, include_background=True, percentile=95, spacing=spacing
    ).item()
    expected_dice = monai_metrics.compute_dice(p, r, include_background=True).item()
    assert metrics.hd95(pred, ref, spacing) == pytest.approx(expected_hd, rel=1e-5, abs=1e-4)
    assert metrics.dice(pred, ref) == pytest.approx(expected_dice, rel=1e-6)
