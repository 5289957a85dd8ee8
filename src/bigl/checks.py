"""Checks of an input volume that warn before segmenting: grid geometry and skull stripping.

bigl's models are trained on BraTS-like volumes: skull-stripped (zero outside
the brain, which :func:`bigl.preprocess.brain_mask` relies on), about 1 mm
isotropic and axis-aligned. Other input still runs, but the user is told, in
one line naming the file, what is different and what to run first.

Thresholds (documented in ``docs/reliability.md``):

* anisotropy: largest / smallest voxel size above :data:`MAX_ANISOTROPY`;
* obliquity: voxel axes more than :data:`MAX_OBLIQUE_DEG` degrees off the
  scanner axes (:func:`nibabel.affines.obliquity`);
* not skull-stripped: more than :data:`MAX_BORDER_NONZERO` of the voxels on
  the volume's six faces are non-zero (a noisy or filled background), or the
  non-zero region is larger than :data:`MAX_BRAIN_ML` (an adult brain is
  1.1-1.7 l; a head with scalp and skull is 3-5 l), or more than
  :data:`MAX_DARK_SHELL` of the voxels 2-12 mm under the outer surface are
  near zero (below 8 % of the 99th percentile): the skull, which gives no MR
  signal, between scalp and brain. A skull-stripped brain has cortex there.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
from nibabel.affines import obliquity
from scipy import ndimage

from bigl.errors import InputWarning
from bigl.io import Volume
from bigl.preprocess import bounding_box

MAX_ANISOTROPY = 3.0
MAX_OBLIQUE_DEG = 5.0
MAX_BORDER_NONZERO = 0.5
MAX_BRAIN_ML = 2400.0
MAX_DARK_SHELL = 0.25
_SHELL_MM = (2.0, 12.0)

STRIP_TOOLS = ("HD-BET (`hd-bet -i in.nii.gz -o out.nii.gz`), SynthStrip (`mri_synthstrip -i in.nii.gz "
               "-o out.nii.gz`) or FSL BET (`bet in.nii.gz out.nii.gz`)")


def _name(volume: Volume | np.ndarray) -> str:
    return str(volume.path) if isinstance(volume, Volume) and volume.path else "the input volume"


def geometry_problems(volume: Volume) -> list[str]:
    """Messages for an anisotropic or oblique grid (empty when the grid is BraTS-like)."""
    problems = []
    sp = np.asarray(volume.spacing, dtype=float)
    if sp.max() / sp.min() > MAX_ANISOTROPY:
        problems.append(
            f"{_name(volume)} has anisotropic voxels ({', '.join(f'{s:g}' for s in sp)} mm, z y x); bigl models "
            "are trained on ~1 mm isotropic volumes, so expect poorer results. Resample it to 1 mm isotropic "
            "first (e.g. `mri_convert -vs 1 1 1 in.nii.gz out.nii.gz` or SimpleITK/ANTs)")
    angle = float(np.degrees(np.max(obliquity(volume.affine))))
    if angle > MAX_OBLIQUE_DEG:
        problems.append(
            f"{_name(volume)} is oblique (voxel axes {angle:.0f} degrees off the scanner axes); bigl cuts axial "
            "slices along the nearest voxel axis without resampling, so its slices are tilted. Resample it to an "
            "axis-aligned grid first (as BraTS does by registering to the SRI-24 atlas, e.g. with ANTs)")
    return problems


def skull_problem(volume: Volume | np.ndarray) -> str | None:
    """A message when the volume looks like a whole head rather than a skull-stripped brain, else None."""
    data = volume.data if isinstance(volume, Volume) else np.asarray(volume)
    nonzero = data != 0
    faces = [nonzero[i].ravel() for i in (0, -1)] + [nonzero[:, i].ravel() for i in (0, -1)] + \
            [nonzero[:, :, i].ravel() for i in (0, -1)]
    border = float(np.concatenate(faces).mean())
    reason = None
    if border > MAX_BORDER_NONZERO:
        reason = f"{100 * border:.0f} % of the voxels on its outer faces are non-zero: the background is not zero"
    elif isinstance(volume, Volume):
        ml = float(nonzero.sum()) * float(np.prod(volume.spacing)) / 1000.0
        if ml > MAX_BRAIN_ML:
            reason = (f"its non-zero region is {ml:.0f} ml, larger than a brain (1100-1700 ml): scalp and skull "
                      "seem to be included")
        elif (dark := _dark_shell(data, nonzero, volume.spacing)) > MAX_DARK_SHELL:
            reason = (f"{100 * dark:.0f} % of the voxels {_SHELL_MM[0]:g}-{_SHELL_MM[1]:g} mm under its outer "
                      "surface are near zero, like a skull between scalp and brain")
    if reason is None:
        return None
    return (f"{_name(volume)} does not look skull-stripped ({reason}). bigl expects brain-extracted volumes as "
            f"in BraTS (zero outside the brain) and takes every non-zero voxel for brain; run a brain "
            f"extraction first, e.g. {STRIP_TOOLS}")


def _dark_shell(data: np.ndarray, nonzero: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Fraction of near-zero voxels in the band 2-12 mm inside the non-zero region's surface."""
    step = 2 if nonzero.size > 4_000_000 else 1  # a coarser grid keeps the distance transform ~0.1 s
    coarse = nonzero[::step, ::step, ::step]
    if not coarse.any():
        return 0.0
    # only the non-zero box (plus a zero ring) matters: the fill and the distances are the same there, 2x sooner
    box = bounding_box(coarse, margin=1)
    mask = ndimage.binary_fill_holes(coarse[box])
    sub = data[::step, ::step, ::step][box]
    depth = ndimage.distance_transform_edt(mask, sampling=[s * step for s in spacing])
    band = (depth > _SHELL_MM[0]) & (depth <= _SHELL_MM[1])
    if not band.any():
        return 0.0
    ref = float(np.percentile(sub[mask], 99))
    return float((np.abs(sub[band]) < 0.08 * ref).mean())


def warn_about_input(volume: Volume | np.ndarray | Mapping[str, Volume | np.ndarray]) -> list[str]:
    """Warn (:class:`~bigl.errors.InputWarning`) about each problem of the input volume(s); return the messages."""
    volumes = list(volume.values()) if isinstance(volume, Mapping) else [volume]
    messages = []
    for v in volumes:
        if isinstance(v, Volume):
            messages += geometry_problems(v)
        if np.asarray(v.data if isinstance(v, Volume) else v).ndim == 3:
            messages += [m for m in [skull_problem(v)] if m]
    for m in messages:
        warnings.warn(m, InputWarning, stacklevel=3)
    return messages
