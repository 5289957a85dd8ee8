"""MR appearance of a phantom tissue map: contrast tables, texture, partial volume, acquisition resolution,
bias field, ghosting, Rician noise and intensity scale.

Two contrast modes per case: *realistic* (per-sequence tissue tables below, each
mean jittered per case) and *random* (every tissue's mean drawn uniformly, as
SynthSeg draws a per-label Gaussian mixture), for contrast-agnostic training.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bigl.io import SEQUENCES
from bigl.phantom.anatomy import Tissue
from bigl.phantom.fields import Field

# Mean intensity of each tissue (rows: Tissue order) per sequence, relative to
# that sequence's white matter: T1 WM > GM > edema > CSF with a GM-like rim; T1ce
# the same with a very bright rim; T2 CSF brightest, GM > WM, edema and necrosis
# bright; FLAIR CSF suppressed, edema brightest. From the signal equations on 3 T
# relaxation times (bigl.phantom.relaxation prints them; the vessel column set by
# hand): T2 a TSE, T1 and T1ce an MPRAGE, FLAIR a milder version of its signal
# (docs/phantom.md). The per-case jitter scales the log-contrasts from there.
TISSUE_MEANS: dict[str, tuple[float, ...]] = {
    #          bg    CSF   GM    WM    deepGM vessel edema necro NET   ET
    "t1":    (0.0, 0.19, 0.67, 1.00, 0.80, 0.45, 0.49, 0.27, 0.57, 0.61),
    "t1ce":  (0.0, 0.19, 0.67, 1.00, 0.80, 1.25, 0.49, 0.27, 0.57, 1.75),
    "t2":    (0.0, 4.20, 1.75, 1.00, 1.20, 0.90, 2.85, 3.70, 2.45, 2.20),
    "flair": (0.0, 0.35, 1.30, 1.00, 1.10, 0.70, 1.80, 1.10, 1.55, 1.45),
}
# The other kind of T1 scan: a 2D spin echo (TR 500 / TE 12 ms; relaxation.py), the same tissue order with
# every log-contrast 0.40-0.52 of the MPRAGE's (vessel column as above). PhantomConfig.t1_spin_echo moves a
# case's T1 and T1ce this way in log-contrast: table = mprage ** (1 - w) * spin_echo ** w.
SPIN_ECHO_MEANS: dict[str, tuple[float, ...]] = {
    "t1":    (0.0, 0.45, 0.85, 1.00, 0.89, 0.45, 0.74, 0.54, 0.80, 0.82),
    "t1ce":  (0.0, 0.45, 0.85, 1.00, 0.89, 1.25, 0.74, 0.54, 0.80, 1.75),
}
# The engine's first T1 / T1ce columns (until 2026-11-30): grey matter, deep grey and CSF near the MPRAGE's, but
# edema brighter than grey matter, as no T1-weighted scan shows it (docs/phantom.md). Not a physics table; kept for
# training a model that does not rest on one T1 contrast (PhantomConfig.p_t1_bright_edema).
BRIGHT_EDEMA_MEANS: dict[str, tuple[float, ...]] = {
    "t1":    (0.0, 0.30, 0.66, 1.00, 0.86, 0.45, 0.82, 0.38, 0.62, 0.70),
    "t1ce":  (0.0, 0.32, 0.70, 1.00, 0.88, 1.25, 0.84, 0.40, 0.66, 1.75),
}


def _table(s: str, spin_echo: float = 0.0, bright_edema: bool = False) -> np.ndarray:
    table = np.maximum(np.asarray(BRIGHT_EDEMA_MEANS[s] if bright_edema and s in BRIGHT_EDEMA_MEANS
                                  else TISSUE_MEANS[s]), 1e-3)
    if spin_echo and s in SPIN_ECHO_MEANS:
        table = table ** (1.0 - spin_echo) * np.maximum(np.asarray(SPIN_ECHO_MEANS[s]), 1e-3) ** spin_echo
    return table


def _uniform(rng: np.random.Generator, lohi: tuple[float, float]) -> float:
    return float(rng.uniform(*lohi))


def _acquire(img: np.ndarray, spacing, acquired_mm: tuple[float, float, float]) -> np.ndarray:
    """Simulate an acquisition at ``acquired_mm`` voxels delivered on the ``spacing`` grid.

    The slice profile is a Gaussian of FWHM = acquired size; the image is then
    sampled at the acquired resolution and interpolated back (trilinear), as a
    scanner or a BraTS-style resampling to a finer grid delivers it.
    """
    factors = [max(a / s, 1.0) for a, s in zip(acquired_mm, spacing)]
    if all(f <= 1.05 for f in factors):
        return img
    sigma = [np.sqrt(max(f * f - 1.0, 0.0)) / 2.355 for f in factors]
    low = ndimage.zoom(ndimage.gaussian_filter(img, sigma), [1 / f for f in factors], order=1)
    back = ndimage.zoom(low, [n / m for n, m in zip(img.shape, low.shape)], order=1)
    out = np.zeros_like(img)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(img.shape, back.shape))
    out[sl] = back[sl]
    return out


def render(rng: np.random.Generator, cfg, axes, half_box, tissues: np.ndarray, info: dict) -> dict[str, np.ndarray]:
    """MR images of a tissue map, one per sequence, float32 holding int16-range integers, 0 outside the brain."""
    zc, yc, xc = axes
    n_t = len(Tissue)
    # Coefficient draws first (grid-independent), then per-voxel noise.
    texture = Field(rng, 2.5, half_box)
    hetero = Field(rng, 4.0, half_box)
    bias = {s: Field(rng, cfg.bias_scale_mm, half_box) for s in SEQUENCES}
    random_contrast = bool(rng.uniform() < cfg.p_random_contrast)
    drawn, amps, expo = {}, {}, {}
    for s in SEQUENCES:
        if random_contrast:
            drawn[s] = rng.uniform(0.05, 1.0, n_t)
            amp = rng.uniform(0.0, 2.5 * cfg.texture, n_t)
        else:
            # Scale every tissue's log-contrast to white matter: by a factor shared by the sequence's tissues
            # (how strongly this scan weights T1 or T2: the tissue order stays that of the physics) and a small
            # factor of each tissue's own. No contrast flips sign: m0 ** exp(g + U(-t, t)); the tables are
            # raised to it below, once the T1 protocol is drawn.
            g = rng.uniform(-cfg.jitter, cfg.jitter)
            expo[s] = np.exp(g + rng.uniform(-cfg.tissue_jitter, cfg.tissue_jitter, n_t))
            amp = np.full(n_t, cfg.texture)
            amp[Tissue.EDEMA] = 0.5 * (cfg.texture + cfg.tumour_texture)
        amps[s] = amp.astype(np.float32)
    noise_rel = {s: _uniform(rng, cfg.noise) for s in SEQUENCES}
    bias_amp = {s: _uniform(rng, (0.0, cfg.bias)) for s in SEQUENCES}
    blur = {s: _uniform(rng, cfg.blur_voxels) for s in SEQUENCES}
    spacing = np.asarray(cfg.spacing, dtype=np.float64)
    acquired = {}
    for s in SEQUENCES:
        a = spacing.copy()
        if rng.uniform() < cfg.p_low_resolution:  # thick slices along one axis, or a coarse in-plane matrix
            axis = int(rng.integers(3))
            a[axis] = max(a[axis], _uniform(rng, cfg.slice_thickness_mm))
            a[[k for k in range(3) if k != axis]] *= rng.uniform(1.0, 1.5)
        acquired[s] = tuple(float(v) for v in a)
    ghost = {s: (_uniform(rng, (0.03, 0.12)) if rng.uniform() < cfg.p_ghosting else 0.0, int(rng.integers(1, 3)))
             for s in SEQUENCES}
    lo, hi = cfg.intensity_scale
    scales = {s: float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) for s in SEQUENCES}
    noise_rng = np.random.default_rng(rng.integers(2**63))
    # Drawn last, and only when asked for: every other draw of a seed's case stays as it was.
    spin_echo = float(rng.uniform(*cfg.t1_spin_echo)) if cfg.t1_spin_echo[1] > 0 and not random_contrast else 0.0
    p = cfg.p_t1_bright_edema
    bright_edema = not random_contrast and (p >= 1 or (p > 0 and bool(rng.uniform() < p)))
    means = {}
    for s in SEQUENCES:
        m = drawn[s] if random_contrast else _table(s, spin_echo, bright_edema) ** expo[s]
        m[Tissue.BACKGROUND] = 0.0
        means[s] = m.astype(np.float32)

    mask = tissues > 0
    core_amp = np.zeros(n_t, np.float32)
    core_amp[[Tissue.NECROSIS, Tissue.NET, Tissue.ENHANCING]] = cfg.tumour_texture
    tex_field = texture(zc, yc, xc)
    het = hetero(zc, yc, xc) * core_amp[tissues]

    images = {}
    for s in SEQUENCES:
        img = means[s][tissues] * (1.0 + tex_field * amps[s][tissues] + het)
        if blur[s] > 0:  # partial volume
            img = ndimage.gaussian_filter(img, blur[s], mode="constant")
        img = _acquire(img, spacing, acquired[s])
        img *= np.exp(bias_amp[s] * bias[s](zc, yc, xc))
        amp, axis = ghost[s]
        if amp:  # N/2 ghost along the phase-encoding axis
            img = img + amp * np.roll(img, img.shape[axis] // 2, axis=axis)
        sd = noise_rel[s]
        re = img + sd * noise_rng.standard_normal(img.shape, dtype=np.float32)
        im = sd * noise_rng.standard_normal(img.shape, dtype=np.float32)
        img = np.sqrt(re * re + im * im)  # Rician magnitude
        img = np.rint(img * scales[s])
        img = np.clip(img, 1, 32767)  # inside the brain never 0, so the mask survives
        img[~mask] = 0
        images[s] = img.astype(np.float32)
    info.update(intensity_scale=scales, random_contrast=random_contrast, t1_spin_echo=spin_echo,
                t1_bright_edema=bright_edema, acquired_mm=acquired,
                noise=noise_rel, ghosting={s: g[0] for s, g in ghost.items()})
    return images
