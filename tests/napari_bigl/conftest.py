"""Fixtures for the plugin tests: phantom case folders on disk, in any orientation.

Files are written here with nibabel directly (not with ``bigl.io``), from the
phantom's canonical ``(z, y, x)`` = (S, A, R) arrays, so the tests check the
plugin's reading and writing against an independent truth.

The Qt tests use napari's ``make_napari_viewer`` fixture (napari's pytest
plugin) under the X server that pytest-xvfb starts for the session.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from bigl.phantom import PhantomCase, make_case
from nibabel import orientations as ornt

PLUGIN = "napari-bigl"
WIDGET = "BiGL Segment"
SEQUENCES = ("t1", "t1ce", "t2", "flair")
SUFFIXES = {
    "brats2021": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "brats2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}
SPACING = (4.0, 3.0, 2.5)  # (z, y, x) mm written into the files (anisotropic on purpose)
ORIGIN = np.array([-78.0, -95.0, -60.0])  # RAS mm of voxel (0, 0, 0) of the canonical array


@pytest.fixture(scope="session")
def phantom() -> PhantomCase:
    """One tiny phantom case (4 mm voxels), all four labels present."""
    case = make_case(0, "tiny")
    assert set(np.unique(case.seg)) == {0, 1, 2, 4}
    return case


def canonical_affine(spacing=SPACING) -> np.ndarray:
    """Index (z, y, x) of the canonical array -> RAS mm."""
    sz, sy, sx = spacing
    aff = np.zeros((4, 4))
    aff[0, 2], aff[1, 1], aff[2, 0] = sx, sy, sz  # R from x, A from y, S from z
    aff[:3, 3] = ORIGIN
    aff[3, 3] = 1.0
    return aff


def to_file(canonical: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """(file array, file affine) storing ``canonical`` with voxel axes along ``axcodes``.

    Same world position for every voxel whatever the codes: ``"RAS"`` is the
    usual NIfTI storage, ``"LPS"`` DICOM-like, ``"PIL"`` a permuted one.
    """
    transform = ornt.ornt_transform(ornt.axcodes2ornt("SAR"), ornt.axcodes2ornt(tuple(axcodes)))
    data = ornt.apply_orientation(canonical, transform)
    affine = canonical_affine() @ ornt.inv_ornt_aff(transform, canonical.shape)
    return np.ascontiguousarray(data), affine


def save(path: Path, canonical: np.ndarray, axcodes: str, dtype) -> Path:
    data, affine = to_file(canonical, axcodes)
    img = nib.Nifti1Image(data.astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


@pytest.fixture
def write_case(tmp_path: Path, phantom: PhantomCase) -> Callable[..., Path]:
    """``write_case(case_id="Case_001", axcodes="RAS", naming="brats2021", sequences=..., seg=True)``."""

    def _write(case_id: str = "Case_001", axcodes: str = "RAS", naming: str = "brats2021",
               sequences: tuple[str, ...] = SEQUENCES, seg: bool = True) -> Path:
        folder = tmp_path / f"{case_id}_{axcodes}"
        names = SUFFIXES[naming]
        for key in sequences:
            save(folder / f"{case_id}{names[key]}.nii.gz", phantom.images[key], axcodes, np.int16)
        if seg:
            labels = phantom.seg.copy()
            if naming == "brats2023":
                labels[labels == 4] = 3  # BraTS 2023 stores ET as 3
            save(folder / f"{case_id}{names['seg']}.nii.gz", labels, axcodes, np.uint8)
        return folder

    return _write


@pytest.fixture
def nifti() -> SimpleNamespace:
    """The file helpers of this conftest (``to_file``, ``save``) for tests to call."""
    return SimpleNamespace(to_file=to_file, save=save, canonical_affine=canonical_affine, spacing=SPACING)


@pytest.fixture
def notifications():
    """A function returning ``[(severity, message), ...]`` dispatched since the test began."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)
    return lambda: [(str(n.severity), str(n.message)) for n in notification_manager.records[start:]]


@pytest.fixture(autouse=True)
def _own_settings(tmp_path_factory):
    """The widget's remembered choices (QSettings) go to a fresh folder, never the user's config."""
    from qtpy.QtCore import QSettings

    folder = tmp_path_factory.mktemp("settings")
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(folder))
    yield folder


@pytest.fixture(scope="session")
def multi_bundle_path(tiny_dataset, tmp_path_factory) -> Path:
    """A t1 + t2 bundle (two input channels) trained for two steps: plumbing only."""
    from bigl.models.segmenter import SegmenterConfig
    from bigl.train import TrainConfig, train

    out = tmp_path_factory.mktemp("multi_bundle") / "tiny_t1_t2.safetensors"
    cfg = TrainConfig(steps=2, batch_size=4, val_every=3, segmenter=SegmenterConfig(widths=(8, 16, 32)))
    return train(tiny_dataset, ["t1", "t2"], out, cfg, device="cpu").best_path


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def widget(viewer, tiny_bundle_path):
    """The BiGL Segment widget docked in ``viewer``, on the tiny test bundle and the CPU."""
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    w.model_edit.setText(str(tiny_bundle_path))
    w.device_combo.setCurrentText("cpu")
    return w
