"""Seeded synthetic multi-sequence brain-tumour cases in BraTS layout.

A case is a skull-stripped "brain" (background exactly 0) with cortex, white
matter, deep grey matter, ventricles and sulcal CSF, one glioma (necrotic core,
enhancing rim, edema) and four MR sequences ``t1, t1ce, t2, flair`` whose
tissue contrasts follow real MR (see ``docs/phantom.md`` for the table). The
sequences differ enough that a segmenter trained on T1 does poorly on raw T2
or FLAIR, which is what the domain-adaptation experiments need.

Everything anatomical is defined in millimetres in a brain-centred frame and
drawn from random fields whose coefficients do not depend on the voxel grid,
so the same seed gives the same anatomy in every preset (``"brats"`` at 1 mm,
``"small"`` at 2 mm, ``"tiny"`` at 4 mm); only the per-voxel texture noise and
the MR noise are resolution-dependent.

Axes are ``(z, y, x)`` = inferior->superior, posterior->anterior,
left->right, as in :mod:`bigl.io`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import numpy as np
from scipy import ndimage

from bigl import io
from bigl.errors import BiglError
from bigl.io import SEQUENCES

logger = logging.getLogger(__name__)


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
_TISSUE_TO_LABEL = np.array([0, 0, 0, 0, 0, 0, 2, 1, 1, 4], dtype=np.uint8)

# Mean intensity of each tissue (rows: Tissue order) per sequence, relative to
# that sequence's white matter. Values follow the usual appearance at 1.5-3 T:
# T1 WM > GM > CSF with subtle hypo-intense edema and a GM-like rim; T1ce the
# same with a very bright rim; T2 CSF brightest, GM > WM, edema and necrosis
# bright; FLAIR CSF suppressed, edema brightest.
_TISSUE_MEANS: dict[str, tuple[float, ...]] = {
    #          bg    CSF   GM    WM    deepGM vessel edema necro NET   ET
    "t1":    (0.0, 0.30, 0.66, 1.00, 0.86, 0.45, 0.82, 0.38, 0.62, 0.70),
    "t1ce":  (0.0, 0.32, 0.70, 1.00, 0.88, 1.25, 0.84, 0.40, 0.66, 1.75),
    "t2":    (0.0, 2.60, 1.45, 1.00, 1.15, 0.90, 2.00, 2.30, 1.70, 1.50),
    "flair": (0.0, 0.35, 1.30, 1.00, 1.10, 0.70, 1.80, 1.10, 1.55, 1.45),
}

_PRESETS: dict[str, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    "brats": ((155, 240, 240), (1.0, 1.0, 1.0)),
    "small": ((72, 100, 84), (2.0, 2.0, 2.0)),
    "tiny": ((36, 50, 42), (4.0, 4.0, 4.0)),
}

# Half-size (mm) of the box on which random-field coefficients are drawn. Fixed
# so coefficient arrays (and so the anatomy) do not depend on the preset.
_FIELD_HALF_BOX = (100.0, 140.0, 140.0)


SAMPLE_DIR = Path(__file__).resolve().parents[2] / "sample_data"
"""The repository's bundled sample cases, made by ``write_dataset(SAMPLE_DIR, 6, seed=0)`` (source checkout only)."""


@dataclass
class PhantomConfig:
    """Grid and appearance parameters of a phantom case.

    Intensity parameters are relative to white matter (= 1 before the
    per-volume scale). Ranges ``(lo, hi)`` are sampled per case.
    """

    shape: tuple[int, int, int] = (72, 100, 84)  # (z, y, x) voxels
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)  # mm (z, y, x)
    noise: float = 0.03  # Rician noise sigma (x WM mean), x U(0.7, 1.3) per sequence
    bias: float = 0.12  # log-amplitude (sd) of the smooth multiplicative bias field
    bias_scale_mm: float = 70.0  # correlation length of the bias field
    jitter: float = 0.10  # per-case relative jitter of every tissue mean, U(-j, j)
    texture: float = 0.035  # relative amplitude of healthy-tissue texture
    tumour_texture: float = 0.10  # relative amplitude of tumour heterogeneity
    blur_voxels: float = 0.5  # Gaussian sigma (voxels) for partial volume
    intensity_scale: tuple[float, float] = (200.0, 3000.0)  # log-uniform per volume
    wt_volume_ml: tuple[float, float] = (10.0, 120.0)  # target whole-tumour volume, log-uniform
    p_no_necrosis: float = 0.15  # solid enhancing core
    p_no_enhancement: float = 0.08  # non-enhancing core (no label 4)
    p_partial_rim: float = 0.35  # enhancing rim with gaps (non-enhancing there)
    p_two_lobes: float = 0.25
    mass_effect: float = 0.3  # max fraction by which tissue near the tumour is pushed out

    @classmethod
    def preset(cls, name: str) -> PhantomConfig:
        """``"brats"`` (1 mm, 155x240x240), ``"small"`` (2 mm, 72x100x84) or ``"tiny"`` (4 mm, 36x50x42)."""
        if name not in _PRESETS:
            raise BiglError(f"unknown phantom preset {name!r}; use one of: {', '.join(_PRESETS)}.")
        shape, spacing = _PRESETS[name]
        return cls(shape=shape, spacing=spacing)

    def validate(self) -> PhantomConfig:
        """Return self, or raise :class:`BiglError` naming the bad field."""
        if len(self.shape) != 3 or any(int(n) != n or n < 8 for n in self.shape):
            raise BiglError(f"phantom shape {self.shape} must be three integers >= 8 (z, y, x).")
        if len(self.spacing) != 3 or any(not s > 0 for s in self.spacing):
            raise BiglError(f"phantom spacing {self.spacing} must be three positive mm values (z, y, x).")
        lo, hi = self.intensity_scale
        if not 0 < lo <= hi or hi * 10 > 32767:
            raise BiglError(
                f"intensity_scale {self.intensity_scale} must satisfy 0 < lo <= hi <= 3276 so images fit int16."
            )
        lo, hi = self.wt_volume_ml
        if not 0 < lo <= hi:
            raise BiglError(f"wt_volume_ml {self.wt_volume_ml} must satisfy 0 < lo <= hi.")
        for name in ("noise", "bias", "jitter", "texture", "tumour_texture", "blur_voxels", "mass_effect"):
            if getattr(self, name) < 0:
                raise BiglError(f"phantom config field {name} must be >= 0, got {getattr(self, name)}.")
        if self.jitter >= 0.5 or self.mass_effect > 0.5:
            raise BiglError("phantom jitter must be < 0.5 and mass_effect <= 0.5.")
        probs = ("p_no_necrosis", "p_no_enhancement", "p_partial_rim", "p_two_lobes")
        if any(not 0 <= getattr(self, n) <= 1 for n in probs) or self.p_no_necrosis + self.p_no_enhancement > 1:
            raise BiglError(f"phantom probabilities {', '.join(probs)} must lie in [0, 1], "
                            "and p_no_necrosis + p_no_enhancement must not exceed 1.")
        return self


@dataclass
class PhantomCase:
    """One synthetic case.

    ``images[key]`` is ``(z, y, x)`` float32 holding integers in int16 range,
    exactly 0 outside the brain; ``seg`` is ``uint8`` in ``{0, 1, 2, 4}``;
    ``tissues`` the :class:`Tissue` code of every voxel (ground truth for
    contrast checks); ``info`` the drawn case parameters.
    """

    images: dict[str, np.ndarray]
    seg: np.ndarray
    spacing: tuple[float, float, float]
    tissues: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def brain_mask(self) -> np.ndarray:
        return self.tissues > 0


# --------------------------------------------------------------------------- random fields


def _bspline_weights(coords: np.ndarray, origin: float, step: float, n: int) -> np.ndarray:
    """Cubic B-spline weights ``(len(coords), n)``, rows scaled to unit sum of squares.

    With unit-variance coefficients the field then has unit variance
    everywhere, independent of where a point falls between knots.
    """
    u = (coords[:, None] - origin) / step - np.arange(n)[None, :]
    t = np.abs(u)
    w = np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
    return w.astype(np.float32)


class _Field:
    """Smooth Gaussian random field: random coefficients on a fixed mm lattice, cubic B-spline basis.

    Evaluated on rectilinear grids by three small matrix products (separable),
    so a 1 mm BraTS grid costs well under a second.
    """

    def __init__(self, rng: np.random.Generator, step_mm: float, half_box: tuple[float, float, float]):
        self.step = float(step_mm)
        self.n = tuple(int(np.ceil(2 * h / step_mm)) + 5 for h in half_box)
        self.origin = tuple(-h - 2 * step_mm for h in half_box)
        self.coef = rng.standard_normal(self.n, dtype=np.float32)

    def __call__(self, zc: np.ndarray, yc: np.ndarray, xc: np.ndarray) -> np.ndarray:
        ws, sl = [], []
        for c, o, n in zip((zc, yc, xc), self.origin, self.n):
            w = _bspline_weights(np.asarray(c, dtype=np.float64), o, self.step, n)
            nz = np.flatnonzero(w.any(axis=0))
            lo, hi = (nz[0], nz[-1] + 1) if nz.size else (0, 1)
            ws.append(w[:, lo:hi])
            sl.append(slice(lo, hi))
        wz, wy, wx = ws
        c = self.coef[tuple(sl)]  # (a, b, c)
        t = c @ wx.T  # (a, b, X)
        t = np.matmul(wy, t)  # (a, Y, X)
        a = t.shape[0]
        out = (wz @ t.reshape(a, -1)).reshape(len(zc), len(yc), len(xc))  # (Z, Y, X)
        return out


# --------------------------------------------------------------------------- geometry helpers


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _capsule_distance(z, y, x, a, b, scale) -> np.ndarray:
    """Distance (mm, after scaling axes by ``scale``) from points to segment ``a``-``b``, and the fraction along it."""
    pz, py, px = (z - a[0]) * scale[0], (y - a[1]) * scale[1], (x - a[2]) * scale[2]
    d = (np.asarray(b) - np.asarray(a)) * np.asarray(scale)
    dd = float(d @ d)
    t = np.clip((pz * d[0] + py * d[1] + px * d[2]) / dd, 0.0, 1.0)
    return np.sqrt((pz - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (px - t * d[2]) ** 2), t


def _box(centre_mm, half_mm, axes) -> tuple[slice, ...]:
    """Voxel slices covering ``centre +- half`` (mm) on the grid whose axis coordinates are ``axes``."""
    out = []
    for c, h, ax in zip(centre_mm, half_mm, axes):
        lo = int(np.searchsorted(ax, c - h))
        hi = int(np.searchsorted(ax, c + h, side="right"))
        out.append(slice(max(lo, 0), min(max(hi, lo + 1), len(ax))))
    return tuple(out)


# --------------------------------------------------------------------------- anatomy


# Lateral ventricle centre line (z, y, x) in mm for the right side (x > 0) and
# radius per point: frontal horn tip, body, atrium, occipital horn; plus the
# temporal horn branching from the atrium.
_VENTRICLE_MAIN = ((12.0, 30.0, 5.0), (16.0, 8.0, 5.5), (14.0, -16.0, 10.0), (10.0, -28.0, 15.0), (7.0, -42.0, 14.0))
_VENTRICLE_MAIN_R = (3.0, 4.5, 4.5, 6.0, 3.0)
_VENTRICLE_TEMPORAL = ((10.0, -28.0, 15.0), (-4.0, -24.0, 24.0), (-16.0, -4.0, 27.0))
_VENTRICLE_TEMPORAL_R = (5.0, 2.5, 2.0)


def _anatomy(rng: np.random.Generator, cfg: PhantomConfig, axes, half_box, info: dict) -> np.ndarray:
    """Tissue code volume of the healthy brain, ``(z, y, x)`` uint8."""
    zc, yc, xc = axes
    Z, Y, X = zc[:, None, None], yc[None, :, None], xc[None, None, :]
    shape = tuple(cfg.shape)

    # --- outer shape: an egg-shaped ellipsoid, flatter below, smoothly deformed.
    size = float(np.exp(rng.uniform(-0.06, 0.06)))
    az, ay, ax = (s * size * float(np.exp(rng.uniform(-0.04, 0.04))) for s in (63.0, 84.0, 66.0))
    disp = [_Field(rng, 40.0, half_box) for _ in range(3)]  # clipped below: no extreme bulges
    bumps = _Field(rng, 12.0, half_box)
    disp_amp = 3.0
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

    spacing = np.asarray(cfg.spacing)
    depth = ndimage.distance_transform_edt(mask, sampling=spacing).astype(np.float32)  # mm from surface

    # --- cortex: pial surfaces are the outer surface, the interhemispheric
    # fissure and sulci. Sulci are zero-sets of a folding field sampled at the
    # point's radial projection towards the surface, so they run roughly
    # perpendicular to it (as real sulci do), down to a random fundus depth.
    fold_field = _Field(rng, 6.0, half_box)
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
    sulc_depth = 17.0 + 5.0 * _Field(rng, 25.0, half_box)(zc, yc, xc)
    thick = 2.7 + 0.5 * _Field(rng, 20.0, half_box)(zc, yc, xc)
    sulc_gm = np.where(depth < sulc_depth + 0.8 * thick, sulc_dist, np.inf)  # GM wraps the fundus
    sulc_dist = np.where(depth < sulc_depth, sulc_dist, np.inf)
    del sulc_depth
    midline = 1.5 * _Field(rng, 50.0, half_box)(zc, yc, xc)
    fiss_dist = np.abs(xx - midline)
    del midline
    cc_top = 20.0 - 12.0 * np.clip(yy / 38.0, -1.2, 1.2) ** 2  # corpus callosum arch
    fissure_on = (zz > cc_top) | (np.abs(yy) > 40.0)
    fiss_dist = np.where(fissure_on, fiss_dist, np.inf)
    del cc_top, fissure_on
    csf_surf = 1.1 + 0.4 * _Field(rng, 20.0, half_box)(zc, yc, xc)
    # Cortex = within `thick` mm of a CSF/GM interface (outer CSF layer, sulcal
    # CSF sheet, fissure); the sulcal GM also wraps around the fundus.
    sulc_half, fiss_half = 0.7, 1.2
    pial = np.minimum(np.minimum(depth - csf_surf, sulc_gm - sulc_half), fiss_dist - fiss_half)
    tissues = np.full(shape, Tissue.WM, dtype=np.uint8)
    tissues[pial < thick] = Tissue.GM
    tissues[(depth < csf_surf) | (sulc_dist < sulc_half) | (fiss_dist < fiss_half)] = Tissue.CSF
    del pial, thick, sulc_dist, sulc_gm, fiss_dist, csf_surf

    # --- deep grey matter (thalami, basal ganglia) and ventricles, near the centre only.
    vsize = float(np.exp(rng.uniform(-0.35, 0.5)))  # ventricle size varies a lot
    vdisp = [_Field(rng, 15.0, half_box) for _ in range(3)]
    deep_jit = rng.uniform(-3, 3, size=(4, 3))
    vent_jit = rng.uniform(-3, 3, size=(2, len(_VENTRICLE_MAIN) + len(_VENTRICLE_TEMPORAL), 3))
    box = _box((0.0, -5.0, 0.0), (45.0, 60.0, 45.0), axes)
    bz, by, bx = zc[box[0]], yc[box[1]], xc[box[2]]
    sub = tissues[box]
    subdepth = depth[box]
    zz_b = zz[box] + 1.5 * vdisp[0](bz, by, bx)
    yy_b = yy[box] + 1.5 * vdisp[1](bz, by, bx)
    xx_b = xx[box] + 1.5 * vdisp[2](bz, by, bx)
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
        radii = [r * vsize for r in _VENTRICLE_MAIN_R + _VENTRICLE_TEMPORAL_R]
        n_main = len(_VENTRICLE_MAIN)
        for i in range(len(pts) - 1):
            if i == n_main - 1:
                continue  # end of main line; temporal horn starts at the atrium
            ra, rb = radii[i], radii[i + 1]
            d, t = _capsule_distance(zz_b, yy_b, xx_b, pts[i], pts[i + 1], (1.0, 1.0, 1.6))
            vent |= d < ra + (rb - ra) * t
        atrium = pts[3]
        choroid |= (zz_b - atrium[0]) ** 2 + (yy_b - atrium[1]) ** 2 + (xx_b - atrium[2]) ** 2 < (2.5 * vsize) ** 2
    d3, _ = _capsule_distance(zz_b, yy_b, xx_b, (2.0, 8.0, 0.0), (2.0, -14.0, 0.0), (1.0, 1.0, 3.0))
    vent |= d3 < 3.0 * min(vsize, 1.3)  # third ventricle, a thin midline slit
    vent &= subdepth > 8.0
    sub[vent] = Tissue.CSF
    sub[vent & choroid] = Tissue.VESSEL
    tissues[box] = sub
    info["ventricle_scale"] = vsize

    # --- cortical veins: bits of sulcal / surface CSF that enhance faintly in t1ce.
    veins = _Field(rng, 5.0, half_box)(zc, yc, xc) > 1.9
    tissues[veins & (tissues == Tissue.CSF) & (depth < 15.0)] = Tissue.VESSEL
    tissues[~mask] = Tissue.BACKGROUND
    return tissues


# --------------------------------------------------------------------------- tumour


def _place_tumour(rng: np.random.Generator, cfg: PhantomConfig, axes, half_box,
                  tissues: np.ndarray, info: dict) -> None:
    """Draw a glioma and paint it (with mass effect) into ``tissues`` in place."""
    zc, yc, xc = axes
    az, ay, ax = info["brain_axes_mm"]
    lo, hi = cfg.wt_volume_ml
    wt_ml = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    r_wt = (3 * wt_ml * 1000 / (4 * np.pi)) ** (1 / 3)  # mm
    r_core = r_wt * rng.uniform(0.5, 0.85)
    # Centre: uniform in the inner part of the brain ellipsoid, off the midline,
    # leaving room for the core inside the brain.
    for _ in range(1000):
        u = rng.uniform(-1, 1, 3)
        c = u * np.array([az * 0.7, ay, ax])
        room = np.array([az * (0.72 if c[0] < 0 else 1.0), ay, ax]) - r_core - 12.0
        if np.sum((c / np.maximum(room, 1.0)) ** 2) < 1 and abs(c[2]) > 10.0:
            break
    else:  # practically unreachable; a safe deep white-matter spot
        c = np.array([15.0, 0.0, 25.0])
    rot = _random_rotation(rng)
    elong = np.exp(rng.uniform(-0.2, 0.2, 3))
    elong /= np.prod(elong) ** (1 / 3)
    kind = rng.choice(["ring", "solid", "nonenhancing"],
                      p=[1 - cfg.p_no_necrosis - cfg.p_no_enhancement, cfg.p_no_necrosis, cfg.p_no_enhancement])
    partial = bool(rng.uniform() < cfg.p_partial_rim)
    two_lobes = bool(rng.uniform() < cfg.p_two_lobes)
    lobe_dir = rng.standard_normal(3)
    lobe_dir /= np.linalg.norm(lobe_dir)
    c2 = c + lobe_dir * r_core * rng.uniform(0.7, 1.0)
    r2 = r_core * rng.uniform(0.5, 0.8)
    if two_lobes:  # keep the whole tumour near the drawn volume: shrink both lobes
        f = (1.0 + 0.7 * (r2 / r_core) ** 3) ** (-1 / 3)
        r_wt, r_core, r2 = r_wt * f, r_core * f, r2 * f
        c2 = c + (c2 - c) * f
    rim_mm = rng.uniform(2.0, 5.0)
    gap_thr = rng.uniform(-0.6, 0.4) if partial else -np.inf
    core_noise = _Field(rng, max(6.0, 0.5 * r_core), half_box)
    rim_noise = _Field(rng, 7.0, half_box)
    gap_noise = _Field(rng, 9.0, half_box)
    edema_noise = _Field(rng, 9.0, half_box)
    edema_noise2 = _Field(rng, 20.0, half_box)
    k_mass = cfg.mass_effect * rng.uniform(0.5, 1.0) * min(1.0, r_wt / 25.0)
    info.update(tumour_centre_mm=tuple(float(v) for v in c), wt_target_ml=wt_ml, core_kind=str(kind),
                partial_rim=partial, two_lobes=two_lobes)

    reach = 1.6 * 1.25 * r_wt + r_core + 5.0  # max edema envelope x elongation, plus the second lobe's offset
    box = _box(c, (reach,) * 3, axes)
    bz, by, bx = zc[box[0]], yc[box[1]], xc[box[2]]
    Z, Y, X = bz[:, None, None], by[None, :, None], bx[None, None, :]
    sub = tissues[box]
    inside = sub > 0

    # Mass effect: tissue at distance r from the centre comes from r * (1 - s(r)).
    if k_mass > 0:
        rr = np.sqrt((Z - c[0]) ** 2 + (Y - c[1]) ** 2 + (X - c[2]) ** 2)
        shrink = 1.0 - k_mass * np.exp(-0.5 * (rr / r_wt) ** 2)
        sp = np.asarray(cfg.spacing)
        src = [((c[i] + (g - c[i]) * shrink) - ax0[0]) / sp[i]
               for i, (g, ax0) in enumerate(zip((Z, Y, X), (bz, by, bx)))]
        src = [np.broadcast_to(s, sub.shape) for s in src]
        warped = ndimage.map_coordinates(sub, src, order=0, mode="nearest")
        sub = np.where(inside & (warped > 0), warped, sub)

    # Core: noise-perturbed ellipsoid (plus an optional second lobe).
    p = np.stack(np.broadcast_arrays(Z - c[0], Y - c[1], X - c[2]), axis=-1).astype(np.float32)  # (z, y, x, 3)
    q = p @ rot.astype(np.float32)  # coordinates in the tumour frame
    del p
    pert = 1.0 + 0.18 * (core_noise(bz, by, bx) - core_noise(*([v] for v in c)))
    rho = np.sqrt(((q / (elong * r_core)) ** 2).sum(-1)) / pert
    if two_lobes:
        rho2 = np.sqrt((Z - c2[0]) ** 2 + (Y - c2[1]) ** 2 + (X - c2[2]) ** 2) / r2 / pert
        rho = np.minimum(rho, rho2)
    depth_ok = ndimage.binary_erosion(inside, iterations=1)
    core = (rho < 1.0) & depth_ok
    rim_frac = rim_mm * (1.0 + 0.4 * rim_noise(bz, by, bx)) / r_core
    rim = core & (rho > 1.0 - np.clip(rim_frac, 0.03, 0.6))
    gaps = gap_noise(bz, by, bx) < gap_thr

    # Edema: a larger, strongly perturbed envelope; it spreads in white matter,
    # less into cortex and never into CSF.
    # Noise relative to its value at the centre, so the size stays near the drawn volume.
    e1, e2 = (f(*([v] for v in c)) for f in (edema_noise, edema_noise2))
    env = np.clip(1.0 + 0.28 * (edema_noise(bz, by, bx) - e1) + 0.12 * (edema_noise2(bz, by, bx) - e2), 0.4, 1.6)
    rho_e = np.sqrt(((q / (elong * r_wt)) ** 2).sum(-1)) / env
    if two_lobes:
        rho_e = np.minimum(rho_e, np.sqrt((Z - c2[0]) ** 2 + (Y - c2[1]) ** 2 + (X - c2[2]) ** 2)
                           / (r2 * r_wt / r_core) / env)
    edema = (((rho_e < 1.0) & np.isin(sub, (Tissue.WM, Tissue.DEEP_GM)))
             | ((rho_e < 0.7) & (sub == Tissue.GM))) & inside
    sub[edema] = Tissue.EDEMA

    if kind == "ring":
        sub[core] = Tissue.NECROSIS
        sub[rim] = Tissue.ENHANCING
        sub[rim & gaps] = Tissue.NET
    elif kind == "solid":
        sub[core] = Tissue.ENHANCING
        sub[core & (gap_noise(bz, by, bx) < -1.3)] = Tissue.NET
    else:
        sub[core] = Tissue.NET
        sub[core & (rho < 0.5)] = Tissue.NECROSIS
    sub[~inside] = Tissue.BACKGROUND
    tissues[box] = sub


# --------------------------------------------------------------------------- imaging


def _render(rng: np.random.Generator, cfg: PhantomConfig, axes, half_box, tissues: np.ndarray,
            info: dict) -> dict[str, np.ndarray]:
    """MR images of a tissue map: jittered means, texture, blur, bias, Rician noise, scale."""
    zc, yc, xc = axes
    # Coefficient draws first (grid-independent), then per-voxel noise.
    texture = _Field(rng, 2.5, half_box)
    hetero = _Field(rng, 4.0, half_box)
    bias = {s: _Field(rng, cfg.bias_scale_mm, half_box) for s in SEQUENCES}
    jit = {s: 1.0 + rng.uniform(-cfg.jitter, cfg.jitter, len(Tissue)) for s in SEQUENCES}
    noise_rel = {s: cfg.noise * rng.uniform(0.7, 1.3) for s in SEQUENCES}
    lo, hi = cfg.intensity_scale
    scales = {s: float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) for s in SEQUENCES}
    noise_rng = np.random.default_rng(rng.integers(2**63))

    mask = tissues > 0
    # Texture amplitude per tissue: healthy tissue and edema fairly smooth, the
    # tumour core heterogeneous (two fields so core texture is coarser).
    amp = np.full(len(Tissue), cfg.texture, np.float32)
    amp[Tissue.EDEMA] = 0.5 * (cfg.texture + cfg.tumour_texture)
    core_amp = np.zeros(len(Tissue), np.float32)
    core_amp[[Tissue.NECROSIS, Tissue.NET, Tissue.ENHANCING]] = cfg.tumour_texture
    tex = texture(zc, yc, xc) * amp[tissues]
    tex += hetero(zc, yc, xc) * core_amp[tissues]
    sigma = cfg.blur_voxels

    images = {}
    for s in SEQUENCES:
        means = (np.asarray(_TISSUE_MEANS[s]) * jit[s]).astype(np.float32)
        img = means[tissues] * (1.0 + tex)
        if sigma > 0:
            img = ndimage.gaussian_filter(img, sigma, mode="constant")
        img *= np.exp(cfg.bias * bias[s](zc, yc, xc))
        sd = noise_rel[s]
        re = img + sd * noise_rng.standard_normal(img.shape, dtype=np.float32)
        im = sd * noise_rng.standard_normal(img.shape, dtype=np.float32)
        img = np.sqrt(re * re + im * im)  # Rician magnitude
        img = np.rint(img * scales[s])
        img = np.clip(img, 1, 32767)  # inside the brain never 0, so the mask survives
        img[~mask] = 0
        images[s] = img.astype(np.float32)
    info["intensity_scale"] = scales
    return images


# --------------------------------------------------------------------------- public API


def _resolve_config(config: PhantomConfig | str) -> PhantomConfig:
    if isinstance(config, str):
        return PhantomConfig.preset(config)
    if isinstance(config, PhantomConfig):
        return config.validate()
    raise BiglError(f"phantom config must be a preset name or a PhantomConfig, got {type(config).__name__}.")


def _check_seed(seed, what: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BiglError(f"phantom {what} must be a non-negative integer, got {seed!r}.")
    return int(seed)


def make_case(seed: int, config: PhantomConfig | str = "small") -> PhantomCase:
    """Generate one synthetic case; the same ``seed`` and config give identical arrays.

    The anatomy and tumour depend only on ``seed``, not on the preset's grid,
    so ``make_case(s, "brats")`` and ``make_case(s, "small")`` show the same
    brain at 1 mm and 2 mm.
    """
    seed = _check_seed(seed)
    cfg = _resolve_config(config)
    shape = tuple(int(n) for n in cfg.shape)
    spacing = tuple(float(s) for s in cfg.spacing)
    ss_anat, ss_tum, ss_img = np.random.SeedSequence(seed).spawn(3)
    rng_anat = np.random.default_rng(ss_anat)
    # Brain centre relative to the field-of-view centre; the brain's bounding
    # box is roughly centred (its base is flatter than its top).
    offset = rng_anat.uniform(-3, 3, 3) + np.array([-9.0, 0.0, 0.0])
    axes = tuple(((np.arange(n) - (n - 1) / 2) * sp - off).astype(np.float64)
                 for n, sp, off in zip(shape, spacing, offset))
    half_box = tuple(max(h, float(np.abs(a).max()) + 10.0) for h, a in zip(_FIELD_HALF_BOX, axes))
    info: dict = {"seed": seed, "shape": shape, "spacing": spacing}
    tissues = _anatomy(rng_anat, cfg, axes, half_box, info)
    _place_tumour(np.random.default_rng(ss_tum), cfg, axes, half_box, tissues, info)
    images = _render(np.random.default_rng(ss_img), cfg, axes, half_box, tissues, info)
    seg = _TISSUE_TO_LABEL[tissues]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    info["wt_ml"] = float((seg > 0).sum() * voxel_ml)
    info["tc_ml"] = float(np.isin(seg, (1, 4)).sum() * voxel_ml)
    info["et_ml"] = float((seg == 4).sum() * voxel_ml)
    return PhantomCase(images=images, seg=seg, spacing=spacing, tissues=tissues, info=info)


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` in a dataset made with ``seed`` (stable, distinct per index)."""
    return int(np.random.SeedSequence([_check_seed(seed), _check_seed(index, "case index")]).generate_state(1)[0])


def write_dataset(
    out_dir: str | os.PathLike,
    n_cases: int,
    seed: int = 0,
    preset: str | PhantomConfig = "small",
    *,
    prefix: str = "Phantom",
    overwrite: bool = False,
) -> list[Path]:
    """Write ``n_cases`` cases as BraTS 2019-2021 folders ``<out_dir>/<prefix>_<seed>_<NNN>/``.

    Each folder holds ``<id>_t1.nii.gz``, ``_t1ce``, ``_t2``, ``_flair`` and
    ``_seg``; case ``i`` uses :func:`case_seed` ``(seed, i)``. Refuses to write
    into an existing case folder unless ``overwrite``. Returns the case folders.
    """
    seed = _check_seed(seed)
    if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)) or n_cases < 1:
        raise BiglError(f"n_cases must be a positive integer, got {n_cases!r}.")
    if not prefix or any(ch in prefix for ch in "/\\_") or prefix.strip() != prefix:
        raise BiglError(f"case prefix {prefix!r} must be non-empty without '/', '\\', '_' or edge spaces.")
    cfg = _resolve_config(preset)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BiglError(f"{out} exists and is not a folder; pick a folder path for --out.")
    ids = [f"{prefix}_{seed}_{i:03d}" for i in range(n_cases)]
    if not overwrite:
        taken = [out / cid for cid in ids if (out / cid).exists()]
        if taken:
            raise BiglError(
                f"{taken[0]} already exists ({len(taken)} of {n_cases} case folders do); "
                "pass --overwrite (overwrite=True) or pick another --out folder or --seed."
            )
    folders = []
    for i, cid in enumerate(ids):
        case = make_case(case_seed(seed, i), cfg)
        folder = out / cid
        for key in SEQUENCES:
            io.save_nifti(case.images[key].astype(np.int16), folder / f"{cid}_{key}.nii.gz", case.spacing,
                          overwrite=overwrite)
        io.save_nifti(case.seg, folder / f"{cid}_seg.nii.gz", case.spacing, overwrite=overwrite)
        logger.info("wrote %s (WT %.1f ml, core %s)", folder, case.info["wt_ml"], case.info["core_kind"])
        folders.append(folder)
    return folders


__all__ = ["SEQUENCES", "PhantomCase", "PhantomConfig", "Tissue", "case_seed", "make_case", "write_dataset"]
