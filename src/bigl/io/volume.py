"""The in-memory volume: :class:`Volume` in the ``(z, y, x)`` RAS+ convention of :mod:`bigl.io`, the
sequence keys and the BraTS label values."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt_mod

SEQUENCES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
LABEL_VALUES: tuple[int, ...] = (0, 1, 2, 4)

# Target orientation of the in-memory array: axis 0 -> S, axis 1 -> A, axis 2 -> R.
_CANONICAL_ORNT = ornt_mod.axcodes2ornt(("S", "A", "R"))


@dataclass
class Volume:
    """One 3D volume in the ``(z, y, x)`` RAS+ convention of :mod:`bigl.io`.

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

