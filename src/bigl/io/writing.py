"""Writing arrays as NIfTI: on a read volume's exact grid (:func:`write_like`, :func:`write_many`), or new
files with a RAS+ affine (:func:`save_nifti`). Every write is atomic."""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt_mod

from bigl._fs import atomic_path, check_distinct, check_output
from bigl.errors import BiglError
from bigl.io.reading import _strip_nifti_suffix
from bigl.io.volume import Volume

logger = logging.getLogger(__name__)


def _ras_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """Affine of a file stored (x, y, z) in RAS+ with the given (z, y, x) spacing."""
    sz, sy, sx = (float(s) for s in spacing)
    return np.diag([sx, sy, sz, 1.0])


def _check_spacing(spacing, where: str) -> tuple[float, float, float]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise BiglError(f"{where}: voxel spacing {spacing} is invalid; give three positive sizes in mm (z, y, x).")
    return sp  # type: ignore[return-value]


def _output_dtype(data: np.ndarray) -> np.dtype:
    """bool -> uint8; integers keep their type (64-bit shrunk to the smallest that fits); floats -> float32."""
    if data.dtype == np.bool_:
        return np.dtype(np.uint8)
    if np.issubdtype(data.dtype, np.integer):
        if data.dtype.itemsize < 8:
            return data.dtype
        lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
        for candidate in (np.uint8, np.int16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= lo and hi <= info.max:
                return np.dtype(candidate)
        raise BiglError(f"integer values {lo}..{hi} do not fit a 32-bit NIfTI; rescale or write as float.")
    return np.dtype(np.float32)


NIFTI_OUTPUT = (".nii.gz", ".nii")  # suffixes check_output accepts for a NIfTI output


def write_many(
    items: list[tuple[np.ndarray, str | os.PathLike]],
    reference: Volume,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Write several arrays on ``reference``'s grid (see :func:`write_like`), all or none.

    Every path is checked and every image built before the first byte is
    written; all files are written to temporary files and renamed into place
    together, so a failure leaves none of them (``bigl segment --out a
    --attention b``: a bad ``b`` never leaves ``a`` behind).
    """
    paths = [check_output(p, suffix=NIFTI_OUTPUT, overwrite=overwrite, what="NIfTI output") for _, p in items]
    check_distinct(paths)
    images = [_nifti_like(data, reference, path) for (data, _), path in zip(items, paths)]
    try:
        with ExitStack() as stack:
            for img, path in zip(images, paths):
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = stack.enter_context(atomic_path(path, path.name[len(_strip_nifti_suffix(path.name)):]))
                nib.save(img, tmp)  # the suffix keeps .nii vs .nii.gz so nibabel compresses the same way
    except OSError as exc:
        raise BiglError(f"{', '.join(map(str, paths))} could not be written ({exc}); "
                        "check free space and permissions.") from exc
    logger.debug("wrote %s", paths)
    return paths


def write_like(
    data: np.ndarray,
    reference: Volume,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``data`` on ``reference``'s grid, in the reference file's own orientation.

    ``data`` is ``(z, y, x)`` like ``reference.data``, or ``(C, z, y, x)``
    (e.g. class probabilities), written as a 4D NIfTI with channels last. The
    file gets exactly the reference file's affine, shape and storage order.
    bool and uint8 are written as ``uint8``, other integers keep their type
    (int64 shrinks to the smallest that fits), floats become ``float32``. The write is
    atomic and refuses to replace an existing file unless ``overwrite=True``.
    """
    return write_many([(data, path)], reference, overwrite=overwrite)[0]


def _nifti_like(data: np.ndarray, reference: Volume, path: Path) -> nib.Nifti1Image:
    data = np.asarray(data)
    grid = reference.data.shape
    if data.shape == grid:
        channels_last = data
    elif data.ndim == 4 and data.shape[1:] == grid:
        channels_last = np.moveaxis(data, 0, -1)  # (z, y, x, C)
    else:
        ref = reference.path or "the reference volume"
        raise BiglError(
            f"{path}: array of shape {data.shape} does not fit the grid {grid} of {ref}; "
            "write data computed on that volume (z, y, x) or (C, z, y, x)."
        )
    dtype = _output_dtype(data)
    back = _invert_ornt(reference._to_canonical)
    file_data = np.ascontiguousarray(ornt_mod.apply_orientation(channels_last, back)).astype(dtype, copy=False)

    header = reference.header.copy() if reference.header is not None else None
    img = nib.Nifti1Image(file_data, reference.affine, header=header)
    img.set_data_dtype(dtype)
    img.header["cal_min"] = 0
    img.header["cal_max"] = 0
    if header is None:
        img.header.set_xyzt_units("mm", "sec")
        img.set_qform(reference.affine, code=1)
        img.set_sform(reference.affine, code=1)
    return img


def _invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """Transform undoing ``apply_orientation(., ornt)``."""
    inv = np.empty_like(ornt)
    for src_axis, (dst_axis, flip) in enumerate(ornt):
        inv[int(dst_axis)] = (src_axis, flip)
    return inv


def volume_from_array(data: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Volume:
    """An in-memory :class:`Volume` for a ``(z, y, x)`` array (no file behind it).

    Its affine is the one :func:`save_nifti` writes: the file stores the array
    as ``(x, y, z)`` with a diagonal RAS+ affine built from ``spacing``.
    """
    data = np.asarray(data)
    if data.ndim != 3:
        raise BiglError(f"expected a 3D (z, y, x) array, got shape {data.shape}; pass one volume.")
    sp = _check_spacing(spacing, "volume_from_array")
    return Volume(data=data, spacing=sp, affine=_ras_affine(sp), header=None, path=None)


def save_nifti(
    data: np.ndarray,
    path: str | os.PathLike,
    spacing: tuple[float, float, float],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a new NIfTI from a ``(z, y, x)`` array with a RAS+ affine built from ``spacing``.

    :func:`read_nifti` of the result gives ``data`` back (as float32/uint8).
    """
    return write_like(data, volume_from_array(data, spacing), path, overwrite=overwrite)
