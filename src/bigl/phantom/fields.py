"""Random fields and geometry helpers of the phantom engine.

Random fields are cubic B-spline fields whose coefficients sit on a fixed mm
lattice, evaluated separably on any rectilinear grid: the same seed gives the
same field on every grid.
"""

from __future__ import annotations

import numpy as np



def bspline_weights(coords: np.ndarray, origin: float, step: float, n: int) -> np.ndarray:
    """Cubic B-spline weights ``(len(coords), n)``, rows scaled to unit sum of squares.

    With unit-variance coefficients the field then has unit variance
    everywhere, independent of where a point falls between knots.
    """
    u = (coords[:, None] - origin) / step - np.arange(n)[None, :]
    t = np.abs(u)
    w = np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
    return w.astype(np.float32)


class Field:
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
            w = bspline_weights(np.asarray(c, dtype=np.float64), o, self.step, n)
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





def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def capsule_distance(z, y, x, a, b, scale) -> np.ndarray:
    """Distance (mm, after scaling axes by ``scale``) from points to segment ``a``-``b``, and the fraction along it."""
    pz, py, px = (z - a[0]) * scale[0], (y - a[1]) * scale[1], (x - a[2]) * scale[2]
    d = (np.asarray(b) - np.asarray(a)) * np.asarray(scale)
    dd = float(d @ d)
    t = np.clip((pz * d[0] + py * d[1] + px * d[2]) / dd, 0.0, 1.0)
    return np.sqrt((pz - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (px - t * d[2]) ** 2), t


def box(centre_mm, half_mm, axes) -> tuple[slice, ...]:
    """Voxel slices covering ``centre +- half`` (mm) on the grid whose axis coordinates are ``axes``."""
    out = []
    for c, h, ax in zip(centre_mm, half_mm, axes):
        lo = int(np.searchsorted(ax, c - h))
        hi = int(np.searchsorted(ax, c + h, side="right"))
        out.append(slice(max(lo, 0), min(max(hi, lo + 1), len(ax))))
    return tuple(out)



def rotation_matrix(angles_rad: np.ndarray) -> np.ndarray:
    """Rotation by ``angles`` (rad) about the z, y and x axes in turn (3x3, acting on (z, y, x) vectors)."""
    mats = []
    for axis, a in enumerate(angles_rad):
        c, s = float(np.cos(a)), float(np.sin(a))
        i, j = [k for k in range(3) if k != axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        mats.append(m)
    return mats[0] @ mats[1] @ mats[2]
