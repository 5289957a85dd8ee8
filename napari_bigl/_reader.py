"""napari reader: a BraTS case folder or one NIfTI volume -> layers.

A **case folder** (BraTS 2019-2021 ``<id>_t1 _t1ce _t2 _flair _seg`` or 2023+
``<id>-t1n -t1c -t2w -t2f -seg``) gives one image layer per present sequence,
named ``"<id> <seq>"``, in the order t1, t1ce, t2, flair, and the segmentation
(if present) as a labels layer ``"<id> seg"`` on top, in the BraTS colours.
Only the first sequence and the labels are visible: a reader sees one anatomy
with the tumour overlay, not four opaque volumes stacked on each other, and the
other sequences are one eye-click away. Because the visible sequence is the
lowest layer, switching another sequence on shows that sequence at once.

A **single file** ``*.nii``/``*.nii.gz`` gives an image layer, or a labels layer
when its name ends in ``_seg``/``-seg``.

``napari_get_reader`` claims only what it reads: anything else (other ``.gz``
files, folders without BraTS-named NIfTI files, lists of paths) gets None, so
napari can try other readers. A problem with a file that *is* ours (corrupt,
mixed naming, grids that do not match) is shown as a napari error
notification with bigl's message, not as a traceback.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from bigl.errors import BiglError
from bigl.io import (
    Case,
    find_case,
    load_images,
    load_labels,
    read_nifti,
    sequence_from_name,
)

from napari_bigl._layers import LayerDataTuple, image_layer_data, labels_layer_data

logger = logging.getLogger(__name__)

ReaderFunction = Callable[[str], list[LayerDataTuple]]

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
# BraTS 2023+ segmentations store enhancing tumour as 3; bigl's convention is 4.
_BRATS2023_LABEL_MAP = {3: 4}


def _nifti_stem(name: str) -> str | None:
    low = name.lower()
    for suffix in _NIFTI_SUFFIXES:
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _is_seg_name(name: str) -> bool:
    stem = _nifti_stem(name)
    return stem is not None and stem.lower().endswith(("_seg", "-seg"))


def _looks_like_case_folder(path: Path) -> bool:
    """True if ``path`` holds a NIfTI file named like an MR sequence or a segmentation."""
    try:
        entries = list(path.iterdir())
    except OSError:
        return False
    return any(
        entry.is_file() and _nifti_stem(entry.name) is not None
        and (_is_seg_name(entry.name) or sequence_from_name(entry.name) is not None)
        for entry in entries
    )


def napari_get_reader(path: str | list[str]) -> ReaderFunction | None:
    """Return a reader for a BraTS case folder or a ``.nii``/``.nii.gz`` file, else None."""
    if not isinstance(path, (str, os.PathLike)):
        return None  # a stack of paths: not ours (each file opens on its own)
    p = Path(path)
    if p.is_dir():
        return read_case_folder if _looks_like_case_folder(p) else None
    if p.is_file() and _nifti_stem(p.name) is not None:
        return read_nifti_file
    return None


def _notify(exc: BiglError) -> list[LayerDataTuple]:
    # Imported here: the module must import without a running Qt application.
    from napari.utils.notifications import show_error

    show_error(str(exc))
    # napari's "read fine, nothing to add" sentinel: no second, generic error.
    return [(None,)]  # type: ignore[list-item]


def case_layers(case: Case) -> list[LayerDataTuple]:
    """Layer data for every sequence of ``case`` plus its segmentation (see module doc)."""
    images = load_images(case) if case.sequences else {}
    layers = [image_layer_data(vol, f"{case.case_id} {key}", key, visible=(i == 0))
              for i, (key, vol) in enumerate(images.items())]
    if case.has_labels:
        layers.append(labels_layer_data(load_labels(case), f"{case.case_id} seg"))
    return layers


def read_case_folder(path: str) -> list[LayerDataTuple]:
    """Read a BraTS case folder: one image layer per sequence, the seg as labels."""
    try:
        return case_layers(find_case(path))
    except BiglError as exc:
        return _notify(exc)


def _read_labels_file(path: Path):
    """A segmentation file, with its case's label convention when it sits in a case folder."""
    try:
        case = find_case(path.parent)
    except BiglError:
        case = None
    seg = case.files.get("seg") if case is not None else None
    if seg is not None and seg.resolve() == path.resolve():
        return load_labels(case)  # also checks it lies on the images' grid
    label_map = _BRATS2023_LABEL_MAP if _nifti_stem(path.name).lower().endswith("-seg") else None
    return read_nifti(path, label=True, label_map=label_map)


def read_nifti_file(path: str) -> list[LayerDataTuple]:
    """Read one NIfTI file: labels if named ``*_seg``/``*-seg``, else an image."""
    p = Path(path)
    name = _nifti_stem(p.name) or p.name
    try:
        if _is_seg_name(p.name):
            return [labels_layer_data(_read_labels_file(p), name)]
        return [image_layer_data(read_nifti(p), name, sequence_from_name(p.name))]
    except BiglError as exc:
        return _notify(exc)
