"""NIfTI reading/writing, BraTS case discovery and validation.

This is the one module that knows axis order. Everything else in ``bigl`` and
``napari_bigl`` works on the in-memory convention defined here:

* **Axis order.** A volume is a numpy array ``(z, y, x)`` in the closest
  canonical RAS+ orientation of the file's voxel grid:

  - axis 0 (``z``) runs inferior -> superior, so ``vol[k]`` is an axial slice;
  - axis 1 (``y``) runs posterior -> anterior;
  - axis 2 (``x``) runs left -> right (patient's left to patient's right).

  Files are reoriented by whole-axis permutations and flips only
  (``nibabel.orientations``), never resampled, so every voxel is kept. An
  oblique file is mapped to the canonical axes it is closest to.
* **Spacing** is in mm along ``(z, y, x)``: the column norms of the reoriented
  affine.
* **Affine.** :attr:`Volume.affine` is the *original* file's 4x4 affine and
  :attr:`Volume.header` its header; :func:`write_like` undoes the reorientation
  so a result lands on exactly the input file's grid (same affine, shape and
  storage orientation).
* **Labels** are BraTS values ``(0, 1, 2, 4)`` as ``uint8``. BraTS 2023+ files
  store enhancing tumour as 3 and are mapped to 4 on read. A network's class
  index ``i`` corresponds to label ``LABEL_VALUES[i]``.

Case naming: BraTS 2019-2021 ``<id>_t1 _t1ce _t2 _flair _seg`` and BraTS 2023+
``<id>-t1n -t1c -t2w -t2f -seg``, each ``.nii`` or ``.nii.gz``.
"""

from __future__ import annotations

import logging
import os
import re

import zlib
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt_mod

from bigl._fs import atomic_path, check_distinct, check_output
from bigl.errors import BiglError

logger = logging.getLogger(__name__)

SEQUENCES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
LABEL_VALUES: tuple[int, ...] = (0, 1, 2, 4)

# Target orientation of the in-memory array: axis 0 -> S, axis 1 -> A, axis 2 -> R.
_CANONICAL_ORNT = ornt_mod.axcodes2ornt(("S", "A", "R"))

_NIFTI_SUFFIXES = (".nii.gz", ".nii")

# File-name suffix (without extension) of each key, per naming convention.
_NAMING: dict[str, dict[str, str]] = {
    "brats2021": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "brats2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}
_LABEL_MAPS: dict[str, dict[int, int] | None] = {"brats2021": None, "brats2023": {3: 4}}
# BraTS 2024 post-treatment files use 2023 names with 4 = resection cavity (RC), not enhancing tumour.
# load_labels(cavity=...) decides: "error" (default) refuses such a file, "background" maps RC to 0.
CAVITY_CHOICES = ("error", "background")
_CAVITY = -1  # label-map target meaning "this value is a resection cavity: refuse"

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


@dataclass
class Volume:
    """One 3D volume in the module's ``(z, y, x)`` RAS+ convention.

    ``affine``/``header``/``path`` describe the original file; the private
    ``_to_canonical`` (a nibabel orientation transform) and ``_file_shape``
    let :func:`write_like` put data back on that file's grid.
    """

    data: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    header: nib.Nifti1Header | None = None
    path: Path | None = None
    _to_canonical: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    _file_shape: tuple[int, int, int] = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        # A Volume built by hand (not read from a file) gets its transform from the affine.
        if self._to_canonical is None:
            self._to_canonical = ornt_mod.ornt_transform(ornt_mod.io_orientation(self.affine), _CANONICAL_ORNT)
        if self._file_shape is None:
            shape = self.data.shape
            self._file_shape = tuple(int(shape[int(dst)]) for dst, _ in self._to_canonical)  # type: ignore[assignment]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of :attr:`data`, ``(z, y, x)``."""
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def canonical_affine(self) -> np.ndarray:
        """4x4 affine mapping ``(z, y, x)`` indices of :attr:`data` to RAS+ mm."""
        return self.affine @ ornt_mod.inv_ornt_aff(self._to_canonical, self._file_shape)


# --------------------------------------------------------------------------- helpers


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


def _ras_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """Affine of a file stored (x, y, z) in RAS+ with the given (z, y, x) spacing."""
    sz, sy, sx = (float(s) for s in spacing)
    return np.diag([sx, sy, sz, 1.0])


def _check_spacing(spacing, where: str) -> tuple[float, float, float]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise BiglError(f"{where}: voxel spacing {spacing} is invalid; give three positive sizes in mm (z, y, x).")
    return sp  # type: ignore[return-value]


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


# --------------------------------------------------------------------------- read / write


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


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One BraTS case folder: which files exist, found by name (no voxels read)."""

    case_id: str
    path: Path
    files: dict[str, Path]
    naming: str

    @property
    def sequences(self) -> tuple[str, ...]:
        """Present image sequences, in :data:`SEQUENCES` order."""
        return tuple(s for s in SEQUENCES if s in self.files)

    @property
    def has_labels(self) -> bool:
        """True if the folder holds a segmentation file."""
        return "seg" in self.files


def _expected_names(key: str) -> str:
    return f"*{_NAMING['brats2021'][key]}.nii.gz or *{_NAMING['brats2023'][key]}.nii.gz"


def _match_case_file(name: str) -> tuple[str, str, str] | None:
    """(naming, key, case_id prefix) for a BraTS file name, else None."""
    stem = _strip_nifti_suffix(name)
    if stem is None or name.startswith("."):
        return None
    low = stem.lower()
    for naming, keys in _NAMING.items():
        for key, suffix in keys.items():
            if low.endswith(suffix) and len(low) > len(suffix):
                return naming, key, stem[: -len(suffix)]
    return None


def find_case(path: str | os.PathLike) -> Case:
    """Discover a BraTS case folder's files by name (never reads voxels)."""
    path = Path(path)
    if not path.exists():
        raise BiglError(f"{path}: no such folder. Check the case path.")
    if not path.is_dir():
        raise BiglError(f"{path} is not a folder; pass a case folder (or use a .nii.gz file as --input).")
    files: dict[str, Path] = {}
    namings: dict[str, Path] = {}
    prefixes: dict[str, Path] = {}
    for entry in sorted(path.iterdir()):
        if not entry.is_file():
            continue
        match = _match_case_file(entry.name)
        if match is None:
            continue
        naming, key, prefix = match
        if key in files:
            raise BiglError(
                f"case folder {path} has two {key} files ({files[key].name} and {entry.name}); "
                "keep only one."
            )
        files[key] = entry
        namings.setdefault(naming, entry)
        prefixes.setdefault(prefix, entry)
    if not files:
        raise BiglError(
            f"{path} contains no recognised BraTS files; expected names like <id>_t1.nii.gz, "
            "<id>_t1ce, <id>_t2, <id>_flair, <id>_seg (BraTS 2019-2021) or <id>-t1n, -t1c, -t2w, "
            "-t2f, -seg (BraTS 2023+)."
        )
    if len(namings) > 1:
        a, b = namings.values()
        raise BiglError(
            f"case folder {path} mixes BraTS 2021 and 2023 naming ({a.name}, {b.name}); "
            "use one convention per case."
        )
    if len(prefixes) > 1:
        a, b = list(prefixes.values())[:2]
        raise BiglError(
            f"case folder {path} holds files of different cases ({a.name}, {b.name}); "
            "put each case in its own folder."
        )
    (naming,) = namings
    (case_id,) = prefixes
    return Case(case_id=case_id, path=path, files=files, naming=naming)


def list_cases(dataset_dir: str | os.PathLike) -> list[Case]:
    """All case folders of a BraTS training layout (a folder of case folders), sorted by id."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.exists():
        raise BiglError(f"{dataset_dir}: no such dataset folder. Check the path.")
    if not dataset_dir.is_dir():
        raise BiglError(f"{dataset_dir} is not a folder; pass a dataset folder holding one folder per case.")
    cases, unnamed = [], []
    for sub in sorted(p for p in dataset_dir.iterdir() if p.is_dir()):
        try:
            cases.append(find_case(sub))
        except BiglError as exc:
            if not any(_match_case_file(p.name) for p in sub.iterdir() if p.is_file()):
                niftis = [p for p in sub.iterdir() if p.is_file() and _strip_nifti_suffix(p.name)]
                (unnamed.append(sub) if niftis else logger.info("skipping %s: no NIfTI files", sub))
                continue
            raise exc
    if unnamed:
        # a warning, not an info line: an evaluation would otherwise count fewer cases without a word
        logger.warning(
            "%s: skipping %d folder(s) whose NIfTI files have unrecognised names (%s); rename the files "
            "<id>_t1.nii.gz, _t1ce, _t2, _flair, _seg (BraTS 2019-2021) or <id>-t1n, -t1c, -t2w, -t2f, -seg "
            "(BraTS 2023+) to include them", dataset_dir, len(unnamed),
            ", ".join(p.name for p in unnamed[:5]) + (" ..." if len(unnamed) > 5 else ""))
    if not cases:
        hint = ""
        if any(_match_case_file(p.name) for p in dataset_dir.iterdir() if p.is_file()):
            hint = " It looks like a single case folder; pass its parent folder instead."
        raise BiglError(
            f"dataset folder {dataset_dir} holds no BraTS case folders (expected one sub-folder per "
            f"case with files like <id>_t1.nii.gz or <id>-t1n.nii.gz).{hint}"
        )
    return sorted(cases, key=lambda c: c.case_id)


def load_images(case: Case, sequences: tuple[str, ...] | list[str] | None = None) -> dict[str, Volume]:
    """Read the requested sequences of a case (all present ones if None).

    All must share shape and affine (``np.allclose``, atol 1e-3).
    """
    wanted = tuple(case.sequences if sequences is None else sequences)
    if not wanted:
        raise BiglError(f"case {case.case_id} ({case.path}) has no image files; expected {', '.join(SEQUENCES)}.")
    for key in wanted:
        if key not in SEQUENCES:
            raise BiglError(f"unknown sequence {key!r}; choose from {', '.join(SEQUENCES)}.")
        if key not in case.files:
            raise BiglError(
                f"case {case.case_id} ({case.path}) has no {key} file (expected {_expected_names(key)}); "
                f"it has {', '.join(case.sequences) or 'no images'}. Pick a present sequence or add the file."
            )
    volumes: dict[str, Volume] = {}
    first: Volume | None = None
    for key in wanted:
        vol = read_nifti(case.files[key])
        if first is None:
            first = vol
        else:
            _check_same_grid(first, vol)
        volumes[key] = vol
    return volumes


def _check_same_grid(a: Volume, b: Volume) -> None:
    if a._file_shape != b._file_shape:
        raise BiglError(
            f"{b.path} has shape {b._file_shape} but {a.path} has {a._file_shape}; all sequences of a case "
            "must be co-registered on one grid. Resample/register them to the same grid first."
        )
    if not np.allclose(a.affine, b.affine, atol=1e-3):
        raise BiglError(
            f"{b.path} and {a.path} have different affines (voxel-to-world mappings); all sequences of a "
            "case must be co-registered on one grid. Resample/register them first."
        )


def load_labels(case: Case, *, cavity: str = "error") -> Volume:
    """Read the case's segmentation (BraTS 2023 ET 3 -> 4), checked against the grid of every image of the case.

    ``cavity`` says what a 4 in a BraTS 2023-named file (the BraTS 2024 resection
    cavity) becomes: ``"error"`` refuses the file, ``"background"`` maps it to 0
    so that it counts in no region.
    """
    if "seg" not in case.files:
        raise BiglError(
            f"case {case.case_id} ({case.path}) has no segmentation (expected {_expected_names('seg')}); "
            "labels are needed for training/evaluation."
        )
    if cavity not in CAVITY_CHOICES:
        raise BiglError(f"unknown resection-cavity handling {cavity!r}; choose from {', '.join(CAVITY_CHOICES)}.")
    label_map = _LABEL_MAPS[case.naming]
    if case.naming == "brats2023":
        label_map = {**(label_map or {}), 4: _CAVITY if cavity == "error" else 0}
    labels = read_nifti(case.files["seg"], label=True, label_map=label_map)
    for sequence in case.sequences:  # every image, not only the first: training may read any of them
        # Header only: nibabel does not read voxels for .shape/.affine.
        ref_path = case.files[sequence]
        try:
            ref = nib.load(str(ref_path))
            ref_shape = tuple(int(s) for s in ref.shape)
            ref_affine = np.asarray(ref.affine)
        except _LOAD_ERRORS as exc:
            raise BiglError(f"{ref_path} could not be read as NIfTI ({exc}); re-export it.") from exc
        while len(ref_shape) > 3 and ref_shape[-1] == 1:
            ref_shape = ref_shape[:-1]
        if ref_shape != labels._file_shape or not np.allclose(ref_affine, labels.affine, atol=1e-3):
            shift = (f", origins {np.linalg.norm(ref_affine[:3, 3] - labels.affine[:3, 3]):.1f} mm apart"
                     if ref_shape == labels._file_shape else "")
            raise BiglError(
                f"{labels.path} is not on the grid of {ref_path} (shape {labels._file_shape} vs {ref_shape}, "
                f"or different affines{shift}); the segmentation must match every image's grid. "
                "Register/resample the image onto the segmentation's grid, or remove the case."
            )
    return labels


# --------------------------------------------------------------------------- names / input

_FLAIR_TOKENS = {"flair", "t2f", "t2flair"}
_T1CE_TOKENS = {"t1ce", "t1c", "t1gd", "t1gad", "t1post", "t1contrast"}
_T1_TOKENS = {"t1", "t1n", "t1w", "t1native", "t1pre"}
_T2_TOKENS = {"t2", "t2w"}
_CONTRAST_WORDS = {"post", "contrast", "gd", "gad", "gadolinium", "ce", "c", "enhanced", "pc"}


def sequence_from_name(name: str) -> str | None:
    """Guess the sequence key from a file or napari layer name, or None.

    ``"BraTS19_001_t1ce.nii.gz"`` -> ``"t1ce"``, ``"x-t2f"`` -> ``"flair"``,
    ``"T2w"`` -> ``"t2"``, ``"T1 post-contrast"`` -> ``"t1ce"``, ``"t1n"`` -> ``"t1"``.
    """
    base = Path(str(name)).name
    stem = _strip_nifti_suffix(base) or base
    tokens = [t for t in re.split(r"[^a-z0-9]+", stem.lower()) if t]
    if not tokens:
        return None
    if any(t in _FLAIR_TOKENS for t in tokens):
        return "flair"
    if any(t in _T1CE_TOKENS for t in tokens):
        return "t1ce"
    if any(t in _T1_TOKENS for t in tokens) and any(t in _CONTRAST_WORDS for t in tokens):
        return "t1ce"
    for tok in reversed(tokens):  # the sequence is usually the last part of a name
        if tok in _T1_TOKENS:
            return "t1"
        if tok in _T2_TOKENS:
            return "t2"
    return None


def read_input(path: str | os.PathLike, sequence: str | None = None) -> tuple[Volume, str | None]:
    """Read the input of ``bigl segment --input PATH [--modality SEQ]``.

    A ``.nii``/``.nii.gz`` file gives ``(volume, sequence)`` with the sequence
    guessed from its name unless given (None if it cannot be guessed). A case
    folder gives the given sequence's volume, or its only sequence.
    """
    path = Path(path)
    if sequence is not None and sequence not in SEQUENCES:
        raise BiglError(f"unknown sequence {sequence!r}; choose from {', '.join(SEQUENCES)}.")
    if not path.exists():
        raise BiglError(f"{path}: no such file or folder. Check the --input path.")
    if path.is_dir():
        case = find_case(path)
        if sequence is None:
            if len(case.sequences) != 1:
                raise BiglError(
                    f"case folder {path} has several sequences ({', '.join(case.sequences) or 'none'}); "
                    "say which one to segment with --modality."
                )
            sequence = case.sequences[0]
        return load_images(case, (sequence,))[sequence], sequence
    volume = read_nifti(path)
    return volume, sequence if sequence is not None else sequence_from_name(path.name)
