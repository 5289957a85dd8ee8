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

Modules: :mod:`~bigl.io.volume` (:class:`Volume`, the convention above, sequence keys and label values),
:mod:`~bigl.io.reading` (:func:`read_nifti` with its header and voxel checks), :mod:`~bigl.io.writing`
(:func:`write_like` and friends, back on the input grid), :mod:`~bigl.io.cases` (BraTS case folders and
datasets), :mod:`~bigl.io.names` (sequence names, the ``bigl segment`` input).
"""

from bigl.io.cases import (
    CAVITY_CHOICES,
    Case,
    find_case,
    list_cases,
    load_images,
    load_labels,
)
from bigl.io.names import read_input, sequence_from_name
from bigl.io.reading import MAX_VOXELS, header_spacing, read_nifti
from bigl.io.volume import LABEL_VALUES, SEQUENCES, Volume
from bigl.io.writing import (
    NIFTI_OUTPUT,
    save_nifti,
    volume_from_array,
    write_like,
    write_many,
)

__all__ = [
    "CAVITY_CHOICES",
    "LABEL_VALUES",
    "MAX_VOXELS",
    "NIFTI_OUTPUT",
    "SEQUENCES",
    "Case",
    "Volume",
    "find_case",
    "header_spacing",
    "list_cases",
    "load_images",
    "load_labels",
    "read_input",
    "read_nifti",
    "save_nifti",
    "sequence_from_name",
    "volume_from_array",
    "write_like",
    "write_many",
]
