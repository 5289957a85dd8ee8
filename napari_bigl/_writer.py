"""napari writer: a labels layer -> a NIfTI file on the grid of the volume it came from.

The layer's ``metadata["bigl_volume"]`` (set by the reader, the sample data and
the widget; see :mod:`napari_bigl._layers`) names the original file's affine,
header and storage orientation, and :func:`bigl.io.write_like` writes the labels
back on exactly that grid: a clinician's edited segmentation overlays the scan
in any other viewer. A layer without that metadata (drawn on an image from
another reader) is written with a diagonal RAS+ affine from the layer's scale
(:func:`bigl.io.save_nifti`) and a warning that the original grid is unknown.

Overwriting: napari's save dialog has already asked before replacing a file,
and a script calling ``viewer.layers.save(path)`` asks for ``path`` explicitly,
so the writer replaces an existing file at ``path`` (atomically: a failed write
leaves the old file intact). The one refusal: labels are never written over the
MR image they were made from, which would destroy the scan. Code that must not
replace files calls :func:`bigl.io.write_like`, whose default refuses.

Problems (a shape that does not fit the grid, a 2D layer, an unwritable path)
are shown as napari error notifications and nothing is written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from bigl.errors import BiglError
from bigl.io import LABEL_VALUES, save_nifti, write_like

from napari_bigl._layers import reference_volume

logger = logging.getLogger(__name__)


def _labels_array(data: Any, attributes: dict[str, Any]) -> np.ndarray:
    if attributes.get("multiscale"):
        data = data[0]  # full resolution
    return np.asarray(data)


def _write(path: Path, data: np.ndarray, attributes: dict[str, Any]) -> Path:
    if not np.issubdtype(data.dtype, np.integer) and data.dtype != np.bool_:
        raise BiglError(f"{path}: labels must be integers, got {data.dtype}.")
    reference = reference_volume(attributes.get("metadata"))
    if reference is None:
        scale = np.asarray(attributes.get("scale", np.ones(data.ndim)), dtype=float)[-data.ndim:]
        spacing = tuple(abs(float(s)) for s in scale)
        written = save_nifti(data, path, spacing, overwrite=True)
        _warn(f"{attributes.get('name', 'labels')}: the original image grid is unknown (the layer was "
              f"not opened with napari-bigl), so {written.name} has a plain RAS+ affine with spacing "
              f"{spacing} mm and may not overlay the scan in other viewers. Open the case with the "
              "napari-bigl reader to keep its grid.")
        return written
    if (reference.path is not None and path.exists()
            and path.resolve() == Path(reference.path).resolve()
            and not np.issubdtype(reference.data.dtype, np.integer)):
        raise BiglError(f"{path} is the MR image these labels were made from; refusing to replace the "
                        "scan with labels. Save under another name, e.g. <case>_seg.nii.gz.")
    return write_like(data, reference, path, overwrite=True)


def _warn(message: str) -> None:
    from napari.utils.notifications import show_warning

    logger.warning(message)
    show_warning(message)


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: save one labels layer as ``.nii.gz``/``.nii``; returns the paths written."""
    target = Path(path)
    try:
        array = _labels_array(data, attributes)
        written = _write(target, array, attributes)
    except BiglError as exc:
        from napari.utils.notifications import show_error

        show_error(str(exc))
        return []
    extra = sorted(set(np.unique(array).tolist()) - set(LABEL_VALUES))
    if extra:
        _warn(f"{written.name}: label values {extra} are not BraTS labels {LABEL_VALUES} "
              "(0 background, 1 NCR/NET, 2 edema, 4 enhancing tumour); bigl will refuse this file "
              "as a segmentation until they are relabelled.")
    logger.info("wrote %s", written)
    return [str(written)]
