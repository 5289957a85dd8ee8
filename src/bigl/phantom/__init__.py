"""Seeded synthetic multi-sequence brain-tumour cases in BraTS layout: the phantom engine.

A case is a skull-stripped brain (background exactly 0) with folded cortex,
white matter, deep grey nuclei, ventricles, sulcal CSF, cerebellum and
brainstem (:mod:`.anatomy`), zero to three gliomas with necrosis, enhancement
patterns, edema and mass effect (:mod:`.tumour`), seen in a rotated, off-centre
head pose, and four MR sequences ``t1, t1ce, t2, flair`` rendered with jittered
real-MR contrast tables or fully random contrast, partial volume, acquisition
resolution, bias field, ghosting and noise (:mod:`.contrast`). See
``docs/phantom.md``.

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
from pathlib import Path

import numpy as np

from bigl import io
from bigl.errors import BiglError
from bigl.io import SEQUENCES
from bigl.phantom.anatomy import TISSUE_TO_LABEL, Tissue, healthy_brain, pose
from bigl.phantom.contrast import TISSUE_MEANS, render
from bigl.phantom.tumour import place_tumours

logger = logging.getLogger(__name__)


_PRESETS: dict[str, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    "brats": ((155, 240, 240), (1.0, 1.0, 1.0)),
    "small": ((80, 112, 96), (2.0, 2.0, 2.0)),
    "tiny": ((40, 56, 48), (4.0, 4.0, 4.0)),
}

# Half-size (mm) of the box on which random-field coefficients are drawn. Fixed
# so coefficient arrays (and so the anatomy) do not depend on the preset.
_FIELD_HALF_BOX = (100.0, 140.0, 140.0)


SAMPLE_DIR = Path(__file__).resolve().parents[3] / "sample_data"
"""The repository's bundled sample cases, made by ``write_dataset(SAMPLE_DIR, 6, seed=0)`` (source checkout only)."""


@dataclass
class PhantomConfig:
    """Grid and appearance parameters of a phantom case.

    Intensity parameters are relative to white matter (= 1 before the
    per-volume scale). Ranges ``(lo, hi)`` are sampled per case (per sequence
    for the imaging ones); probabilities ``p_*`` are per case.
    """

    shape: tuple[int, int, int] = (80, 112, 96)  # (z, y, x) voxels
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)  # mm (z, y, x)
    # --- pose
    rotation_deg: float = 15.0  # head rotation about each axis, U(-r, r)
    offset_mm: float = 8.0  # off-centre placement along each axis, U(-o, o)
    # --- contrast and acquisition
    noise: tuple[float, float] = (0.005, 0.06)  # Rician noise sigma (x WM mean), from clean to noisy
    bias: float = 0.3  # max log-amplitude of the smooth multiplicative bias field, U(0, b)
    bias_scale_mm: float = 70.0  # correlation length of the bias field
    jitter: float = 0.5  # per-case, per-sequence contrast strength shared by all tissues: mean ** exp(U(-j, j))
    tissue_jitter: float = 0.15  # on top, each tissue's own log-contrast jitter: mean ** exp(g + U(-t, t))
    texture: float = 0.035  # relative amplitude of healthy-tissue texture
    tumour_texture: float = 0.10  # relative amplitude of tumour heterogeneity
    blur_voxels: tuple[float, float] = (0.3, 0.9)  # Gaussian sigma (voxels) for partial volume
    p_low_resolution: float = 0.3  # acquired with thick slices along one axis, resampled to the grid
    slice_thickness_mm: tuple[float, float] = (3.0, 6.0)
    p_ghosting: float = 0.08  # an N/2 ghost along a phase-encoding axis
    p_random_contrast: float = 0.0  # every tissue mean drawn at random (SynthSeg-style), else the real tables
    t1_spin_echo: tuple[float, float] = (0.0, 0.0)  # T1 / T1ce from MPRAGE (0) towards a spin-echo T1 (1), U(lo, hi)
    p_t1_bright_edema: float = 0.0  # T1 / T1ce with the engine's first table (edema brighter than grey matter)
    intensity_scale: tuple[float, float] = (200.0, 3000.0)  # log-uniform per volume
    # --- tumour
    wt_volume_ml: tuple[float, float] = (5.0, 250.0)  # total whole-tumour volume, log-uniform
    p_healthy: float = 0.05  # no tumour at all
    p_lesions: tuple[float, float, float] = (0.7, 0.2, 0.1)  # one, two or three lesions
    p_no_necrosis: float = 0.15  # solid enhancing core
    p_no_enhancement: float = 0.12  # non-enhancing core (no label 4), low-grade looking
    p_patchy: float = 0.10  # non-enhancing core with patchy enhancing foci
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
        for name in ("wt_volume_ml", "noise", "blur_voxels", "slice_thickness_mm", "t1_spin_echo"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi or (name == "wt_volume_ml" and lo == 0) or (name == "t1_spin_echo" and hi > 1):
                raise BiglError(f"phantom config range {name}={getattr(self, name)} must satisfy 0 <= lo <= hi "
                                "(wt_volume_ml: 0 < lo; t1_spin_echo: hi <= 1).")
        for name in ("bias", "jitter", "tissue_jitter", "texture", "tumour_texture", "mass_effect", "rotation_deg",
                     "offset_mm"):
            if getattr(self, name) < 0:
                raise BiglError(f"phantom config field {name} must be >= 0, got {getattr(self, name)}.")
        if self.jitter > 1.0 or self.tissue_jitter > 1.0 or self.mass_effect > 0.5 or self.rotation_deg > 45:
            raise BiglError("phantom jitter and tissue_jitter must be <= 1, mass_effect <= 0.5 and rotation_deg <= 45.")
        probs = ("p_no_necrosis", "p_no_enhancement", "p_patchy", "p_partial_rim", "p_two_lobes", "p_healthy",
                 "p_low_resolution", "p_ghosting", "p_random_contrast", "p_t1_bright_edema")
        if (any(not 0 <= getattr(self, n) <= 1 for n in probs)
                or self.p_no_necrosis + self.p_no_enhancement + self.p_patchy > 1):
            raise BiglError(f"phantom probabilities {', '.join(probs)} must lie in [0, 1], and "
                            "p_no_necrosis + p_no_enhancement + p_patchy must not exceed 1.")
        if len(self.p_lesions) != 3 or any(p < 0 for p in self.p_lesions) or abs(sum(self.p_lesions) - 1) > 1e-6:
            raise BiglError(f"p_lesions {self.p_lesions} must be three probabilities (1, 2, 3 lesions) summing to 1.")
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
    ss_anat, ss_tum, ss_img, ss_pose = np.random.SeedSequence(seed).spawn(4)
    rng_anat = np.random.default_rng(ss_anat)
    # Brain centre relative to the field-of-view centre; the brain's bounding
    # box is roughly centred (its base is flatter than its top).
    offset = rng_anat.uniform(-3, 3, 3) + np.array([-9.0, 0.0, 0.0])
    axes = tuple(((np.arange(n) - (n - 1) / 2) * sp - off).astype(np.float64)
                 for n, sp, off in zip(shape, spacing, offset))
    half_box = tuple(max(h, float(np.abs(a).max()) + 10.0) for h, a in zip(_FIELD_HALF_BOX, axes))
    info: dict = {"seed": seed, "shape": shape, "spacing": spacing}
    tissues = healthy_brain(rng_anat, shape, spacing, axes, half_box, info)
    place_tumours(np.random.default_rng(ss_tum), cfg, axes, half_box, tissues, info)
    tissues = pose(tissues, spacing, cfg.rotation_deg, cfg.offset_mm, np.random.default_rng(ss_pose), info)
    images = render(np.random.default_rng(ss_img), cfg, axes, half_box, tissues, info)
    seg = TISSUE_TO_LABEL[tissues]
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
        logger.info("wrote %s (WT %.1f ml, %d lesion(s), core %s)", folder, case.info["wt_ml"], case.info["n_lesions"],
                    case.info["core_kind"])
        folders.append(folder)
    return folders


__all__ = ["SEQUENCES", "TISSUE_MEANS", "PhantomCase", "PhantomConfig", "Tissue", "case_seed", "make_case",
           "write_dataset"]
