"""Sample data "BiGL phantom case": bundled case folder if present, else generated."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bigl.io import SEQUENCES
from bigl.phantom import case_seed, make_case, write_dataset

from napari_bigl import _sample_data

PLUGIN = "napari-bigl"
KEY = "phantom_case"


def _check_case_layers(layers, case_id: str) -> None:
    assert [layer.name for layer in layers] == [f"{case_id} {s}" for s in SEQUENCES] + [f"{case_id} seg"]
    assert [type(layer).__name__ for layer in layers] == ["Image"] * 4 + ["Labels"]
    assert [layer.visible for layer in layers] == [True, False, False, False, True]
    shape = layers[0].data.shape
    for layer in layers:
        assert layer.data.shape == shape
        assert layer.metadata["bigl_volume"].data is layer.data
    assert [layer.metadata["sequence"] for layer in layers[:4]] == list(SEQUENCES)
    labels = layers[-1]
    assert set(np.unique(labels.data)) == {0, 1, 2, 4}
    np.testing.assert_allclose(labels.colormap.map(4), (1.0, 0.0, 0.0, 1.0))


@pytest.mark.gui
def test_sample_generated_when_no_bundled_case(make_napari_viewer, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(_sample_data, "SAMPLE_DIR", tmp_path / "not_there")
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, KEY)
    _check_case_layers(layers, "Phantom_seed0")
    truth = make_case(case_seed(0, 0), "small")
    np.testing.assert_array_equal(layers[-1].data, truth.seg)
    np.testing.assert_array_equal(layers[0].data, truth.images["t1"])
    np.testing.assert_allclose(layers[0].scale, truth.spacing)
    assert layers[0].metadata["source_path"] is None


@pytest.mark.gui
def test_sample_reads_first_bundled_case(make_napari_viewer, tmp_path: Path, monkeypatch) -> None:
    sample_dir = tmp_path / "sample_data"
    folders = write_dataset(sample_dir, n_cases=2, seed=0, preset="tiny")
    (sample_dir / "demo_model").mkdir()  # other things in sample_data/ are ignored
    monkeypatch.setattr(_sample_data, "SAMPLE_DIR", sample_dir)
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, KEY)
    case_id = folders[0].name
    _check_case_layers(layers, case_id)
    assert layers[-1].metadata["source_path"] == str(folders[0] / f"{case_id}_seg.nii.gz")
    np.testing.assert_allclose(layers[0].scale, (4.0, 4.0, 4.0))


@pytest.mark.gui
def test_generated_sample_labels_save_as_nifti(make_napari_viewer, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(_sample_data, "SAMPLE_DIR", tmp_path / "not_there")
    viewer = make_napari_viewer()
    labels = viewer.open_sample(PLUGIN, KEY)[-1]
    viewer.layers.selection.active = labels
    out = tmp_path / "phantom_seg.nii.gz"
    assert viewer.layers.save(str(out), selected=True, plugin=PLUGIN) == [str(out)]
    img = nib.load(str(out))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(np.asarray(img.dataobj), labels.data.transpose(2, 1, 0))


def test_repository_sample_dir_is_used_when_present() -> None:
    # An editable install finds <repo>/sample_data; the layers then come from files.
    assert _sample_data.SAMPLE_DIR == Path(__file__).resolve().parents[2] / "sample_data"
    layers = _sample_data.bundled_case_layers()
    assert layers is not None, "sample_data/ holds no case (regenerate it: see sample_data/README.md)"
    assert all(kwargs["metadata"]["source_path"] for _, kwargs, _ in layers)
