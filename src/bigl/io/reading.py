"""Reading NIfTI files into :class:`~bigl.io.volume.Volume`: path, header and voxel checks, reorientation.

Every size a header claims is checked against the file and :data:`MAX_VOXELS` before any voxel is read.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt_mod

from bigl.errors import BiglError
from bigl.io.volume import _CANONICAL_ORNT, LABEL_VALUES, Volume

_NIFTI_SUFFIXES = (".nii.gz", ".nii")

_CAVITY = -1  # label-map target meaning "this value is a resection cavity: refuse" (see load_labels)

# Documented caps, checked against the header before any voxel is read (nothing is allocated from a size a
# file merely claims). 512^3 voxels is a 0.5 mm whole-head volume; BraTS volumes have 240*240*155 = 8.9 M.
MAX_VOXELS = 512**3
# deflate cannot compress better than ~1032:1, so a .nii.gz of n bytes holds at most this many times n.
_MAX_GZIP_RATIO = 1032

# Errors nibabel / gzip / zlib raise for a file that is not a (complete) NIfTI.
_LOAD_ERRORS = (
    nib.filebasedimages.ImageFileError,
    nib.spatialimages.HeaderDataError,
    OSError,
    EOFError,
    zlib.error,
    ValueError,
    TypeError,
    IndexError,
    OverflowError,
    MemoryError,
)


def _strip_nifti_suffix(name: str) -> str | None:
    """``name`` without ``.nii``/``.nii.gz`` (case-insensitive), or None if neither."""
    low = name.lower()
    for suffix in _NIFTI_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _check_nifti_path(path: Path, what: str = "file") -> None:
    if not path.exists():
        raise BiglError(f"{path}: no such {what}. Check the path (typo? wrong folder?).")
    if path.is_dir():
        raise BiglError(f"{path} is a folder, not a NIfTI file. Pass a .nii or .nii.gz file.")
    if _strip_nifti_suffix(path.name) is None:
        raise BiglError(
            f"{path} is not a NIfTI file name (expected .nii or .nii.gz). "
            "Convert the image to NIfTI first (e.g. with dcm2niix)."
        )


def _spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    norms = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    return (float(norms[0]), float(norms[1]), float(norms[2]))


def _load_array(path: Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header, tuple[float, float]]:
    """Voxel array (file order, scaling applied, dtype as stored or float), affine, header, (slope, inter)."""
    try:
        img = nib.load(str(path))
    except _LOAD_ERRORS as exc:
        raise BiglError(
            f"{path} could not be read as NIfTI ({exc}). The file is corrupt, truncated "
            "or not a NIfTI image; re-export or re-download it."
        ) from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise BiglError(f"{path} is a {type(img).__name__}, not a NIfTI image; convert it to .nii.gz.")
    _check_header_size(img, path)
    try:
        # nibabel reads voxels lazily: truncation only shows up here.
        data = np.asanyarray(img.dataobj)
    except _LOAD_ERRORS as exc:
        raise BiglError(
            f"{path}: voxel data could not be read ({exc}). The file is probably truncated or "
            "corrupt (an interrupted copy or download); re-export or re-download it."
        ) from exc
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise BiglError(f"{path} holds {data.dtype} voxels (an RGB, complex or otherwise non-scalar image); bigl "
                        "reads one intensity per voxel: export the scan as a grayscale (scalar) NIfTI.")
    # nibabel moves the scale factor from the header into the proxy on load
    scaling = (float(getattr(img.dataobj, "slope", 1.0)), float(getattr(img.dataobj, "inter", 0.0)))
    return data, np.asarray(img.affine, dtype=np.float64), img.header, scaling


def _check_header_size(img: nib.Nifti1Image, path: Path) -> None:
    """Refuse a header whose shape is not one 3D volume, exceeds :data:`MAX_VOXELS` or exceeds what the file holds.

    Runs before any voxel is read, so a corrupt or hostile header cannot make bigl allocate memory.
    """
    try:
        shape = tuple(int(s) for s in img.shape)
        itemsize = int(img.get_data_dtype().itemsize)
        offset = int(img.header.get_data_offset())
    except _LOAD_ERRORS as exc:
        raise BiglError(f"{path} has a corrupt NIfTI header ({exc}); re-export or re-download it.") from exc
    dims = shape
    while len(dims) > 3 and dims[-1] == 1:
        dims = dims[:-1]
    if len(dims) != 3 or min(dims) < 1:
        fix = ("split the series into one 3D file per sequence" if len(dims) > 3
               else "bigl needs a 3D volume; export the whole series, not one slice")
        raise BiglError(f"{path} is a {len(dims)}D image (shape {shape}); expected one 3D volume. Fix: {fix}.")
    n_vox = int(np.prod(shape, dtype=object))
    if n_vox > MAX_VOXELS:
        raise BiglError(
            f"{path}: its header claims {shape} = {n_vox:,} voxels, more than bigl reads ({MAX_VOXELS:,}, "
            "a 0.5 mm whole-head volume). The header is corrupt, or the volume must be cropped or resampled "
            "(e.g. to 1 mm) first."
        )
    claimed = offset + n_vox * itemsize
    size = path.stat().st_size
    gz = path.name.lower().endswith(".gz")
    if claimed > (size * _MAX_GZIP_RATIO if gz else size):
        raise BiglError(
            f"{path}: its header claims {shape} voxels ({claimed:,} bytes) but the file is {size:,} bytes"
            f"{', more than gzip can expand' if gz else ''}. The file is truncated or its header is corrupt; "
            "re-export or re-download it."
        )


def _validate_grid(data: np.ndarray, affine: np.ndarray, path: Path) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1:  # (x, y, z, 1) is a 3D volume stored as 4D
        data = data[..., 0]
    if data.ndim != 3:
        kind = f"{data.ndim}D"
        fix = (
            "split the series into one 3D file per sequence"
            if data.ndim > 3
            else "bigl needs a 3D volume; export the whole series, not one slice"
        )
        raise BiglError(f"{path} is a {kind} image (shape {data.shape}); expected one 3D volume. Fix: {fix}.")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise BiglError(f"{path} has an invalid (singular or non-finite) affine; fix the header's qform/sform.")
    return data


def read_nifti(
    path: str | os.PathLike,
    *,
    label: bool = False,
    label_map: dict[int, int] | None = None,
) -> Volume:
    """Read a 3D NIfTI file into a :class:`Volume` in ``(z, y, x)`` RAS+ order.

    Images become ``float32`` and must be finite and not all zero. With
    ``label=True`` values are mapped through ``label_map`` (e.g. ``{3: 4}`` for
    BraTS 2023) and must then lie in :data:`LABEL_VALUES`; the result is
    ``uint8``. Raises :class:`BiglError` for anything a user could fix.
    """
    path = Path(path)
    _check_nifti_path(path)
    raw, affine, header, scaling = _load_array(path)
    raw = _validate_grid(raw, affine, path)

    if label:
        data = _validate_labels(raw, path, label_map)
    else:
        _check_range(raw, header, scaling, path)
        data = np.asarray(raw, dtype=np.float32)
        bad = ~np.isfinite(data)
        if bad.any():
            raise BiglError(
                f"{path} contains {int(bad.sum())} NaN/Inf voxel(s); replace them "
                "(e.g. with 0) before using this image."
            )
        if not data.any():
            raise BiglError(f"{path} is all zeros (an empty image); check that the right file was exported.")

    try:
        to_canonical = ornt_mod.ornt_transform(ornt_mod.io_orientation(affine), _CANONICAL_ORNT)
    except ValueError as exc:  # two voxel axes along one world axis: no canonical order exists
        raise BiglError(f"{path} has a degenerate affine (its voxel axes do not span three directions: {exc}); "
                        "fix the header's qform/sform.") from exc
    file_shape = tuple(int(s) for s in data.shape)
    canonical = np.ascontiguousarray(ornt_mod.apply_orientation(data, to_canonical))
    spacing = _spacing_of(affine @ ornt_mod.inv_ornt_aff(to_canonical, file_shape))
    return Volume(
        data=canonical,
        spacing=spacing,
        affine=affine,
        header=header,
        path=path,
        _to_canonical=to_canonical,
        _file_shape=file_shape,  # type: ignore[arg-type]
    )


def header_spacing(path: str | os.PathLike) -> tuple[float, float, float]:
    """Voxel spacing (z, y, x) in mm of a NIfTI file, from its header alone (no voxel is read).

    The same spacing :func:`read_nifti` gives the file's :class:`Volume`; the
    training cache uses it to choose the in-plane resolution before reading any case.
    """
    path = Path(path)
    _check_nifti_path(path)
    try:
        img = nib.load(str(path))
        affine = np.asarray(img.affine, dtype=np.float64)
        to_canonical = ornt_mod.ornt_transform(ornt_mod.io_orientation(affine), _CANONICAL_ORNT)
        shape = tuple(int(s) for s in img.shape[:3])
    except _LOAD_ERRORS as exc:
        raise BiglError(f"{path}: the NIfTI header could not be read ({exc}); re-export or re-download it.") from exc
    return _spacing_of(affine @ ornt_mod.inv_ornt_aff(to_canonical, shape))


def _check_range(raw: np.ndarray, header: nib.Nifti1Header, scaling: tuple[float, float], path: Path) -> None:
    """Blame the header's scale factor, not the voxels, when scaled integers do not fit float32."""
    limit = float(np.finfo(np.float32).max)
    if not np.issubdtype(raw.dtype, np.floating) or np.all(np.abs(raw) <= limit):
        return
    stored = header.get_data_dtype()
    if np.issubdtype(stored, np.integer):
        slope, inter = scaling
        raise BiglError(
            f"{path}: its {stored} voxels times the header's scale factor (scl_slope={slope:g}, scl_inter={inter:g}) "
            "overflow 32-bit floats; the scale factor is corrupt. Fix the header (e.g. scl_slope=1, scl_inter=0) "
            "or re-export the image."
        )
    if np.all(np.isfinite(raw)):
        raise BiglError(f"{path}: voxel values up to {float(np.abs(raw).max()):g} exceed the 32-bit float range; "
                        "rescale the image before using it.")


def _validate_labels(raw: np.ndarray, path: Path, label_map: dict[int, int] | None) -> np.ndarray:
    values = np.unique(raw)
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        odd = [float(v) for v in values if not (np.isfinite(v) and v == round(float(v)))][:5]
        raise BiglError(
            f"{path} has non-integer label values {odd}; a segmentation must hold integer "
            f"labels {LABEL_VALUES}. Did you pass an image as the label file?"
        )
    mapping = dict(label_map or {})
    cavity = [int(v) for v in values if mapping.get(int(v)) == _CAVITY]
    if cavity:
        raise BiglError(
            f"{path} uses BraTS 2023+ names (enhancing tumour = 3) but holds label {cavity[0]}: in BraTS 2024 "
            "post-treatment data that is the resection cavity, not tumour. bigl will not count it as enhancing "
            "tumour; pass --resection-cavity background (load_labels(cavity='background')) to map it to "
            "background, or relabel the file."
        )
    bad = [int(v) for v in values if mapping.get(int(v), int(v)) not in LABEL_VALUES]
    if bad:
        allowed = sorted(v for v in set(LABEL_VALUES) | set(mapping) if mapping.get(v, v) in LABEL_VALUES)
        shown = f"{bad[:10]}" if len(bad) <= 10 else f"{bad[:10]} (+{len(bad) - 10} more)"
        raise BiglError(
            f"{path} has label values {shown} outside the allowed set {allowed} "
            "(0 background, 1 NCR/NET, 2 edema, 4 enhancing tumour; BraTS 2023 files use 3 for ET). "
            "Relabel the file or check it is a BraTS segmentation."
        )
    out = np.asarray(raw).astype(np.int64)
    result = out.astype(np.uint8)
    for src, dst in mapping.items():
        if dst != _CAVITY:  # a cavity value present was refused above
            result[out == src] = dst
    return result
