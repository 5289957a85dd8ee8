"""Healthy anatomy of a phantom brain: cerebrum with folded cortex, deep grey nuclei, ventricles, veins,
cerebellum and brainstem, and the head pose (rotation, off-centre placement).

All sizes in mm in a brain-centred frame; axes ``(z, y, x)`` = inferior->superior,
posterior->anterior, left->right.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from scipy import ndimage

from bigl.phantom.fields import Field, box, capsule_distance, rotation_matrix


class Tissue(IntEnum):
    """Codes of :attr:`PhantomCase.tissues`; the last four are the tumour compartments."""

    BACKGROUND = 0
    CSF = 1
    GM = 2
    WM = 3
    DEEP_GM = 4
    VESSEL = 5  # cortical veins and choroid plexus: enhance faintly in t1ce
    EDEMA = 6
    NECROSIS = 7
    NET = 8  # non-enhancing solid tumour
    ENHANCING = 9


# BraTS label of each tissue code (index = Tissue value).
TISSUE_TO_LABEL = np.array([0, 0, 0, 0, 0, 0, 2, 1, 1, 4], dtype=np.uint8)



# Lateral ventricle centre line (z, y, x) in mm for the right side (x > 0) and
# radius per point: frontal horn tip, body, atrium, occipital horn; plus the
# temporal horn branching from the atrium.
_VENTRICLE_MAIN = ((12.0, 30.0, 5.0), (16.0, 8.0, 5.5), (14.0, -16.0, 10.0), (10.0, -28.0, 15.0), (7.0, -42.0, 14.0))
_VENTRICLE_MAIN_R = (3.0, 4.5, 4.5, 6.0, 3.0)
_VENTRICLE_TEMPORAL = ((10.0, -28.0, 15.0), (-4.0, -24.0, 24.0), (-16.0, -4.0, 27.0))
_VENTRICLE_TEMPORAL_R = (5.0, 2.5, 2.0)


def healthy_brain(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                  axes, half_box, info: dict) -> np.ndarray:
    """Tissue code volume of the healthy brain, ``(z, y, x)`` uint8, in the brain-centred frame."""
    zc, yc, xc = axes
    Z, Y, X = zc[:, None, None], yc[None, :, None], xc[None, None, :]

    # --- outer shape: an egg-shaped ellipsoid, flatter below, smoothly deformed.
    size = float(np.exp(rng.uniform(-0.10, 0.08)))
    az, ay, ax = (s * size * float(np.exp(rng.uniform(-0.07, 0.07))) for s in (63.0, 84.0, 66.0))
    disp = [Field(rng, 40.0, half_box) for _ in range(3)]  # clipped below: no extreme bulges
    bumps = Field(rng, 12.0, half_box)
    disp_amp = float(rng.uniform(2.0, 6.0))  # large smooth deformations on some brains
    zz = Z + disp_amp * np.clip(disp[0](zc, yc, xc), -2.0, 2.0)
    yy = Y + disp_amp * np.clip(disp[1](zc, yc, xc), -2.0, 2.0)
    xx = X + disp_amp * np.clip(disp[2](zc, yc, xc), -2.0, 2.0)
    az_eff = np.where(zz < 0, az * (0.72 - 0.12 * np.clip(yy / ay, 0, 1)), az)  # flat base, orbital rise
    ax_eff = ax * (1.0 - 0.06 * np.clip(yy / ay, -1, 1))  # wider at the back
    r = np.sqrt((zz / az_eff) ** 2 + (yy / ay) ** 2 + (xx / ax_eff) ** 2)
    r0 = r.astype(np.float32)
    r = r * (1.0 + 0.015 * bumps(zc, yc, xc))
    mask = r < 1.0
    del r, az_eff, ax_eff
    # Keep a background rim: a brain cut by the field of view still ends in CSF, not at the edge.
    mask[[0, -1]] = False
    mask[:, [0, -1]] = False
    mask[:, :, [0, -1]] = False
    info["brain_axes_mm"] = (az, ay, ax)

    spacing = np.asarray(spacing)
    depth = ndimage.distance_transform_edt(mask, sampling=spacing).astype(np.float32)  # mm from surface

    # --- cortex: pial surfaces are the outer surface, the interhemispheric
    # fissure and sulci. Sulci are zero-sets of a folding field sampled at the
    # point's radial projection towards the surface, so they run roughly
    # perpendicular to it (as real sulci do), down to a random fundus depth.
    fold_field = Field(rng, 6.0, half_box)
    lat_step = 1.5
    lattice = [np.arange(-h, h + lat_step, lat_step) for h in (az + 12.0, ay + 12.0, ax + 12.0)]
    fold_lat = fold_field(*lattice)  # fixed mm lattice: same folds on every grid
    shell = depth < 40.0
    rs = np.maximum(r0[shell], 0.2) ** -0.55  # mostly radial projection, drifting with depth
    pts = [(np.broadcast_to(g, shape)[shell] * rs - lat[0]) / lat_step for g, lat in zip((zz, yy, xx), lattice)]
    fold = np.ones(shape, np.float32)
    fold[shell] = ndimage.map_coordinates(fold_lat, pts, order=1, mode="nearest")
    del pts, rs, fold_lat, r0
    grad = np.gradient(fold, *spacing)
    gmag = np.sqrt(grad[0] ** 2 + grad[1] ** 2 + grad[2] ** 2) + 1e-3
    del grad
    sulc_dist = np.abs(fold) / gmag  # ~ mm to the nearest sulcal sheet
    del fold, gmag
    sulc_depth = rng.uniform(13.0, 21.0) + 5.0 * Field(rng, 25.0, half_box)(zc, yc, xc)
    thick = rng.uniform(2.1, 3.3) + 0.5 * Field(rng, 20.0, half_box)(zc, yc, xc)
    sulc_gm = np.where(depth < sulc_depth + 0.8 * thick, sulc_dist, np.inf)  # GM wraps the fundus
    sulc_dist = np.where(depth < sulc_depth, sulc_dist, np.inf)
    del sulc_depth
    midline = 1.5 * Field(rng, 50.0, half_box)(zc, yc, xc)
    fiss_dist = np.abs(xx - midline)
    del midline
    cc_top = 20.0 - 12.0 * np.clip(yy / 38.0, -1.2, 1.2) ** 2  # corpus callosum arch
    fissure_on = (zz > cc_top) | (np.abs(yy) > 40.0)
    fiss_dist = np.where(fissure_on, fiss_dist, np.inf)
    del cc_top, fissure_on
    csf_surf = rng.uniform(0.7, 2.4) + 0.4 * Field(rng, 20.0, half_box)(zc, yc, xc)
    # Cortex = within `thick` mm of a CSF/GM interface (outer CSF layer, sulcal
    # CSF sheet, fissure); the sulcal GM also wraps around the fundus.
    sulc_half, fiss_half = rng.uniform(0.5, 1.4), rng.uniform(0.9, 2.0)  # atrophy widens sulci
    pial = np.minimum(np.minimum(depth - csf_surf, sulc_gm - sulc_half), fiss_dist - fiss_half)
    tissues = np.full(shape, Tissue.WM, dtype=np.uint8)
    tissues[pial < thick] = Tissue.GM
    tissues[(depth < csf_surf) | (sulc_dist < sulc_half) | (fiss_dist < fiss_half)] = Tissue.CSF
    del pial, thick, sulc_dist, sulc_gm, fiss_dist, csf_surf

    # --- deep grey matter (thalami, basal ganglia) and ventricles, near the centre only.
    vsize = float(np.exp(rng.uniform(-0.35, 0.5)))  # ventricle size varies a lot
    vdisp = [Field(rng, 15.0, half_box) for _ in range(3)]
    a = float(rng.uniform(-0.25, 0.25))
    asym = (1.0 + a, 1.0 - a)  # left-right ventricle asymmetry
    deep_jit = rng.uniform(-3, 3, size=(4, 3))
    vent_jit = rng.uniform(-3, 3, size=(2, len(_VENTRICLE_MAIN) + len(_VENTRICLE_TEMPORAL), 3))
    cbox = box((0.0, -5.0, 0.0), (45.0, 60.0, 45.0), axes)
    bz, by, bx = zc[cbox[0]], yc[cbox[1]], xc[cbox[2]]
    sub = tissues[cbox]
    subdepth = depth[cbox]
    zz_b = zz[cbox] + 1.5 * vdisp[0](bz, by, bx)
    yy_b = yy[cbox] + 1.5 * vdisp[1](bz, by, bx)
    xx_b = xx[cbox] + 1.5 * vdisp[2](bz, by, bx)
    deep = np.zeros(sub.shape, bool)
    for k, (c, rad) in enumerate(
        [((2.0, -10.0, 11.0), (11.0, 14.0, 8.0)), ((2.0, -10.0, -11.0), (11.0, 14.0, 8.0)),
         ((4.0, 10.0, 20.0), (11.0, 13.0, 6.0)), ((4.0, 10.0, -20.0), (11.0, 13.0, 6.0))]
    ):
        c = np.asarray(c) + deep_jit[k]
        deep |= ((zz_b - c[0]) / rad[0]) ** 2 + ((yy_b - c[1]) / rad[1]) ** 2 + ((xx_b - c[2]) / rad[2]) ** 2 < 1
    sub[deep & (subdepth > 12.0)] = Tissue.DEEP_GM

    vent = np.zeros(sub.shape, bool)
    choroid = np.zeros(sub.shape, bool)
    for side, sgn in enumerate((1.0, -1.0)):
        pts = [np.array(p) * (1, 1, sgn) + vent_jit[side, i] * (1, 1, 0.5)
               for i, p in enumerate(_VENTRICLE_MAIN + _VENTRICLE_TEMPORAL)]
        radii = [r * vsize * asym[side] for r in _VENTRICLE_MAIN_R + _VENTRICLE_TEMPORAL_R]
        n_main = len(_VENTRICLE_MAIN)
        for i in range(len(pts) - 1):
            if i == n_main - 1:
                continue  # end of main line; temporal horn starts at the atrium
            ra, rb = radii[i], radii[i + 1]
            d, t = capsule_distance(zz_b, yy_b, xx_b, pts[i], pts[i + 1], (1.0, 1.0, 1.6))
            vent |= d < ra + (rb - ra) * t
        atrium = pts[3]
        choroid |= (zz_b - atrium[0]) ** 2 + (yy_b - atrium[1]) ** 2 + (xx_b - atrium[2]) ** 2 < (2.5 * vsize) ** 2
    d3, _ = capsule_distance(zz_b, yy_b, xx_b, (2.0, 8.0, 0.0), (2.0, -14.0, 0.0), (1.0, 1.0, 3.0))
    vent |= d3 < 3.0 * min(vsize, 1.3)  # third ventricle, a thin midline slit
    vent &= subdepth > 8.0
    sub[vent] = Tissue.CSF
    sub[vent & choroid] = Tissue.VESSEL
    tissues[cbox] = sub
    info["ventricle_scale"] = vsize

    # --- cortical veins: bits of sulcal / surface CSF that enhance faintly in t1ce.
    veins = Field(rng, 5.0, half_box)(zc, yc, xc) > 1.9
    tissues[veins & (tissues == Tissue.CSF) & (depth < 15.0)] = Tissue.VESSEL
    tissues[~mask] = Tissue.BACKGROUND
    _hindbrain(rng, axes, half_box, tissues, mask, (az, ay, ax))
    tissues[_rim(shape)] = Tissue.BACKGROUND
    return tissues


def _rim(shape) -> np.ndarray:
    """The outermost voxel layer of a grid: always background, so a brain cut by the field of view still ends."""
    rim = np.zeros(shape, bool)
    rim[[0, -1]] = rim[:, [0, -1]] = rim[:, :, [0, -1]] = True
    return rim


def _hindbrain(rng: np.random.Generator, axes, half_box, tissues: np.ndarray, cerebrum: np.ndarray,
               brain_axes: tuple[float, float, float]) -> None:
    """Cerebellum (folia: GM with a WM arbor and CSF fissures) and brainstem below the occipital lobes, in place.

    Painted only outside the cerebrum, so they show on the lower slices as in a real scan.
    """
    zc, yc, xc = axes
    Z, Y, X = zc[:, None, None], yc[None, :, None], xc[None, None, :]
    az, ay, ax = brain_axes
    c = np.array([-0.62 * az, -0.52 * ay, 0.0]) + rng.uniform(-3, 3, 3) * (1, 1, 0.3)
    r = np.array([20.0, 26.0, 0.75 * ax]) * float(np.exp(rng.uniform(-0.1, 0.1)))
    sub_box = box(c, r + 4.0, axes)
    bz, by, bx = zc[sub_box[0]], yc[sub_box[1]], xc[sub_box[2]]
    Zb, Yb, Xb = Z[sub_box[0]], Y[:, sub_box[1]], X[:, :, sub_box[2]]
    rho = np.sqrt(((Zb - c[0]) / r[0]) ** 2 + ((Yb - c[1]) / r[1]) ** 2 + ((Xb - c[2]) / r[2]) ** 2)
    rho = rho * (1.0 + 0.04 * Field(rng, 10.0, half_box)(bz, by, bx))
    # folia: thin CSF sheets roughly parallel to the cerebellar surface, wavy
    folia = np.sin(2 * np.pi * (rho * r[0] / 3.2 + 0.8 * Field(rng, 12.0, half_box)(bz, by, bx)))
    sub = tissues[sub_box]
    free = ~cerebrum[sub_box]
    cb = (rho < 1.0) & free & (np.abs(Xb - c[2]) > 1.5)  # the two hemispheres meet at the vermis
    arbor = rho < 0.45 + 0.12 * Field(rng, 6.0, half_box)(bz, by, bx)
    sub[cb] = Tissue.GM
    sub[cb & arbor] = Tissue.WM
    sub[cb & ~arbor & (folia > 0.75) & (rho > 0.5)] = Tissue.CSF
    sub[(rho >= 1.0) & (rho < 1.08) & free & (sub == Tissue.BACKGROUND)] = Tissue.CSF
    tissues[sub_box] = sub
    # brainstem: a tapering WM-like column from the midbrain down in front of the cerebellum
    top = np.array([-5.0, -12.0, 0.0])
    bottom = np.array([c[0] - 1.1 * r[0], c[1] + 0.8 * r[1], 0.0])
    d, t = capsule_distance(Z, Y, X, top, bottom, (1.0, 1.0, 1.0))
    stem = (d < 11.0 - 3.5 * t) & (tissues == Tissue.BACKGROUND)
    tissues[stem] = Tissue.WM
    tissues[(d < 12.5 - 3.5 * t) & ~stem & (tissues == Tissue.BACKGROUND)] = Tissue.CSF


def pose(tissues: np.ndarray, spacing, rotation_deg: float, offset_mm: float, rng: np.random.Generator,
         info: dict) -> np.ndarray:
    """Rotate the head by up to ``rotation_deg`` about each axis and shift it by up to ``offset_mm`` (nearest neighbour).

    A scanner's field of view is not aligned with the brain; this is the same
    tissue map seen in a rotated, off-centre frame. The grid rim stays background.
    """
    angles = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3))
    shift = rng.uniform(-offset_mm, offset_mm, 3)
    info["rotation_deg"] = tuple(float(a) for a in np.rad2deg(angles))
    info["offset_mm"] = tuple(float(s) for s in shift)
    if rotation_deg == 0 and offset_mm == 0:
        return _fill_pockets(tissues)
    sp = np.asarray(spacing, dtype=np.float64)
    rot = rotation_matrix(angles)
    centre = (np.asarray(tissues.shape) - 1) / 2
    # output voxel o -> mm (o - c) * sp -> rotate back -> input voxel
    matrix = np.diag(1 / sp) @ rot.T @ np.diag(sp)
    offset = centre - matrix @ (centre + shift / sp)
    out = ndimage.affine_transform(tissues, matrix, offset=offset, order=0, mode="constant", cval=0)
    out[_rim(out.shape)] = 0
    return _fill_pockets(out)


def _fill_pockets(tissues: np.ndarray) -> np.ndarray:
    """Background enclosed by brain in an axial slice (e.g. between cerebellum and cerebrum) becomes CSF.

    A skull-stripped scan keeps the CSF and dura there; bigl's brain mask fills such holes anyway.
    """
    for k in range(tissues.shape[0]):
        brain = tissues[k] > 0
        if brain.any():
            tissues[k][ndimage.binary_fill_holes(brain) & ~brain] = Tissue.CSF
    return tissues
