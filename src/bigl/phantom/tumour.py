"""Tumours of a phantom brain: one to three gliomas (or none), with necrosis, enhancement patterns,
edema along white matter and mass effect, painted into a tissue map.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bigl.phantom.anatomy import Tissue
from bigl.phantom.fields import Field, box, random_rotation



def place_tumours(rng: np.random.Generator, cfg, axes, half_box, tissues: np.ndarray, info: dict) -> None:
    """Draw 0-3 gliomas (0 for a healthy case) and paint them, with mass effect, into ``tissues`` in place.

    The total whole-tumour volume is drawn log-uniformly from ``cfg.wt_volume_ml``;
    with several lesions the first takes the largest share.
    """
    lo, hi = cfg.wt_volume_ml
    total = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    healthy = bool(rng.uniform() < cfg.p_healthy)
    n = 0 if healthy else int(rng.choice([1, 2, 3], p=cfg.p_lesions))
    shares = np.sort(rng.dirichlet(np.full(n, 2.0)))[::-1] if n else np.zeros(0)
    info.update(healthy=healthy, n_lesions=n, lesions=[])
    for k, share in enumerate(shares):
        lesion: dict = {}
        _place_lesion(rng, cfg, axes, half_box, tissues, info, max(total * share, lo / 2), lesion)
        info["lesions"].append(lesion)
    if n:
        info.update(tumour_centre_mm=info["lesions"][0]["centre_mm"], wt_target_ml=total,
                    core_kind=info["lesions"][0]["core_kind"])
    else:
        info.update(tumour_centre_mm=None, wt_target_ml=0.0, core_kind="none")


def _place_lesion(rng: np.random.Generator, cfg, axes, half_box, tissues: np.ndarray, info: dict,
                  wt_ml: float, lesion: dict) -> None:
    """Draw one glioma of about ``wt_ml`` whole-tumour volume and paint it into ``tissues`` in place."""
    zc, yc, xc = axes
    az, ay, ax = info["brain_axes_mm"]
    r_wt = (3 * wt_ml * 1000 / (4 * np.pi)) ** (1 / 3)  # mm
    r_core = r_wt * rng.uniform(0.5, 0.85)
    # Centre: uniform in the inner part of the brain ellipsoid, off the midline,
    # leaving room for the core inside the brain.
    for _ in range(1000):
        u = rng.uniform(-1, 1, 3)
        c = u * np.array([az * 0.7, ay, ax])
        room = np.array([az * (0.72 if c[0] < 0 else 1.0), ay, ax]) - r_core - 12.0
        if np.sum((c / np.maximum(room, 1.0)) ** 2) < 1 and abs(c[2]) > 8.0:
            break
    else:  # practically unreachable; a safe deep white-matter spot
        c = np.array([15.0, 0.0, 25.0])
    rot = random_rotation(rng)
    elong = np.exp(rng.uniform(-0.2, 0.2, 3))
    elong /= np.prod(elong) ** (1 / 3)
    kind = rng.choice(["ring", "solid", "patchy", "nonenhancing"],
                      p=[1 - cfg.p_no_necrosis - cfg.p_no_enhancement - cfg.p_patchy, cfg.p_no_necrosis,
                         cfg.p_patchy, cfg.p_no_enhancement])
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
    core_noise = Field(rng, max(6.0, 0.5 * r_core), half_box)
    rim_noise = Field(rng, 7.0, half_box)
    gap_noise = Field(rng, 9.0, half_box)
    edema_noise = Field(rng, 9.0, half_box)
    edema_noise2 = Field(rng, 20.0, half_box)
    k_mass = cfg.mass_effect * rng.uniform(0.5, 1.0) * min(1.0, r_wt / 25.0)
    lesion.update(centre_mm=tuple(float(v) for v in c), wt_target_ml=wt_ml, core_kind=str(kind),
                  partial_rim=partial, two_lobes=two_lobes)

    reach = 1.6 * 1.25 * r_wt + r_core + 5.0  # max edema envelope x elongation, plus the second lobe's offset
    sl = box(c, (reach,) * 3, axes)
    bz, by, bx = zc[sl[0]], yc[sl[1]], xc[sl[2]]
    Z, Y, X = bz[:, None, None], by[None, :, None], bx[None, None, :]
    sub = tissues[sl]
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
    elif kind == "patchy":  # low-grade looking core with scattered enhancing foci
        sub[core] = Tissue.NET
        sub[core & (rho < 0.4)] = Tissue.NECROSIS
        sub[core & (gap_noise(bz, by, bx) > 0.9)] = Tissue.ENHANCING
    else:
        sub[core] = Tissue.NET
        sub[core & (rho < 0.5)] = Tissue.NECROSIS
    sub[~inside] = Tissue.BACKGROUND
    tissues[sl] = sub
