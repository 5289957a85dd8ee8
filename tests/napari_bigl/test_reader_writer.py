"""Manifest, reader and writer of napari-bigl, through a real napari viewer.

Files are written with nibabel in RAS, LPS and a permuted orientation
(conftest); whatever the storage, the layers must hold the canonical
``(z, y, x)`` arrays and a saved labels layer must land on the source file's
grid voxel for voxel.
"""

from __future__ import annotations

import gzip
import importlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bigl.io import SEQUENCES

from napari_bigl._reader import napari_get_reader

PLUGIN = "napari-bigl"
ORIENTATIONS = ("RAS", "LPS", "PIL")

# BraTS colours of the paper's figures.
YELLOW, GREEN, RED = (1.0, 0.9, 0.0, 1.0), (0.0, 0.8, 0.0, 1.0), (1.0, 0.0, 0.0, 1.0)


# --------------------------------------------------------------------------- manifest


def test_manifest_is_registered_and_every_command_imports() -> None:
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest(PLUGIN)
    contrib = manifest.contributions
    assert [r.command for r in contrib.readers] == [f"{PLUGIN}.get_reader"]
    assert contrib.readers[0].accepts_directories
    assert set(contrib.readers[0].filename_patterns) == {"*.nii", "*.nii.gz"}
    assert [w.layer_types for w in contrib.writers] == [["labels"]]
    assert [s.display_name for s in contrib.sample_data] == ["BiGL phantom case"]
    for command in contrib.commands:  # no python_name may point at a missing module
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.id


def test_napari_bigl_import_has_no_qt_side_effects() -> None:
    import subprocess
    import sys

    code = ("import sys, napari_bigl, napari_bigl._reader, napari_bigl._writer, "
            "napari_bigl._sample_data\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt6', 'PyQt5', "
            "'PySide6')))")  # vispy.color (no Qt) is fine
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- which paths are ours


def test_reader_claims_case_folders_and_nifti_files(write_case) -> None:
    folder = write_case()
    assert napari_get_reader(str(folder)) is not None
    assert napari_get_reader(folder) is not None  # a Path works too
    assert napari_get_reader(str(folder / "Case_001_t1.nii.gz")) is not None
    assert napari_get_reader(str(folder / "Case_001_seg.nii.gz")) is not None


def test_reader_returns_none_for_what_it_does_not_read(tmp_path: Path, write_case, nifti) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    archive = tmp_path / "table.csv.gz"
    archive.write_bytes(gzip.compress(b"a,b\n1,2\n"))
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    others = tmp_path / "other_files"
    others.mkdir()
    (others / "readme.md").write_text("x")
    (others / "volume.tif").write_bytes(b"II*\x00")
    unnamed = tmp_path / "unnamed_nifti"  # NIfTI files, but not named like a sequence
    nifti.save(unnamed / "brain.nii.gz", np.ones((4, 5, 6)), "RAS", np.int16)
    folder = write_case()
    for path in (text, archive, empty, others, unnamed, tmp_path / "missing.nii.gz"):
        assert napari_get_reader(str(path)) is None, path
    assert napari_get_reader([str(folder / "Case_001_t1.nii.gz"),
                              str(folder / "Case_001_t2.nii.gz")]) is None


# --------------------------------------------------------------------------- reading


@pytest.mark.gui
@pytest.mark.parametrize("axcodes", ORIENTATIONS)
def test_open_case_folder(make_napari_viewer, write_case, phantom, nifti, axcodes: str) -> None:
    folder = write_case(axcodes=axcodes)
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin=PLUGIN)

    names = [layer.name for layer in layers]
    assert names == [f"Case_001 {s}" for s in SEQUENCES] + ["Case_001 seg"]
    assert [layer.name for layer in viewer.layers] == names  # seg on top
    assert [type(layer).__name__ for layer in layers] == ["Image"] * 4 + ["Labels"]
    assert [layer.visible for layer in layers] == [True, False, False, False, True]
    for layer, key in zip(layers, (*SEQUENCES, None)):
        np.testing.assert_allclose(layer.scale, nifti.spacing)  # (z, y, x) whatever the file order
        meta = layer.metadata
        volume = meta["bigl_volume"]
        assert volume.data is layer.data  # the metadata shares the array, no copy
        assert meta["source_path"] == str(volume.path)
        expected = phantom.seg if key is None else phantom.images[key]
        np.testing.assert_array_equal(layer.data, expected)  # canonical (z, y, x) whatever the file
        if key is not None:
            assert meta["sequence"] == key
            assert Path(meta["source_path"]).name == f"Case_001_{key}.nii.gz"
            lo, hi = layer.contrast_limits
            assert lo == 0 and 0 < hi <= expected.max()
    labels = layers[-1]
    assert labels.data.dtype == np.uint8
    for value, colour in ((1, YELLOW), (2, GREEN), (4, RED)):
        np.testing.assert_allclose(labels.colormap.map(value), colour)
    assert labels.colormap.map(0)[3] == 0  # background transparent
    assert labels.colormap.map(3)[3] == 1  # a stray label is drawn, not hidden
    assert labels.get_status((20.0, 80.0, 80.0))  # hover text works (features table)


@pytest.mark.gui
def test_open_brats2023_case_maps_et_to_4(make_napari_viewer, write_case, phantom) -> None:
    folder = write_case(case_id="BraTS-GLI-00001-000", naming="brats2023")
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin=PLUGIN)
    assert [layer.name for layer in layers][-1] == "BraTS-GLI-00001-000 seg"
    np.testing.assert_array_equal(layers[-1].data, phantom.seg)  # 3 in the file -> 4
    assert [layer.metadata.get("sequence") for layer in layers[:4]] == list(SEQUENCES)


@pytest.mark.gui
def test_open_case_without_seg_or_with_some_sequences(make_napari_viewer, write_case) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open(str(write_case(sequences=("t2", "flair"), seg=False)), plugin=PLUGIN)
    assert [layer.name for layer in layers] == ["Case_001 t2", "Case_001 flair"]
    assert [layer.visible for layer in layers] == [True, False]


@pytest.mark.gui
@pytest.mark.parametrize("axcodes", ("RAS", "LPS"))
def test_open_single_files(make_napari_viewer, write_case, phantom, axcodes: str) -> None:
    folder = write_case(axcodes=axcodes)
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(folder / "Case_001_flair.nii.gz"), plugin=PLUGIN)
    (labels,) = viewer.open(str(folder / "Case_001_seg.nii.gz"), plugin=PLUGIN)
    assert (type(image).__name__, image.name, image.metadata["sequence"]) == ("Image", "Case_001_flair",
                                                                              "flair")
    assert (type(labels).__name__, labels.name) == ("Labels", "Case_001_seg")
    np.testing.assert_array_equal(image.data, phantom.images["flair"])
    np.testing.assert_array_equal(labels.data, phantom.seg)
    np.testing.assert_allclose(labels.colormap.map(4), RED)


@pytest.mark.gui
def test_unreadable_case_is_a_notification_not_a_traceback(make_napari_viewer, write_case,
                                                           notifications) -> None:
    folder = write_case()
    (folder / "Case_001_t2.nii.gz").write_bytes(gzip.compress(b"not a nifti header"))
    viewer = make_napari_viewer()
    assert viewer.open(str(folder), plugin=PLUGIN) == []
    errors = [m for severity, m in notifications() if severity == "error"]
    assert len(errors) == 1 and "Case_001_t2.nii.gz" in errors[0]


# --------------------------------------------------------------------------- writing


def _opened_labels(viewer, folder: Path):
    layers = viewer.open(str(folder), plugin=PLUGIN)
    labels = layers[-1]
    viewer.layers.selection.active = labels  # the GUI's "Save selected layer"
    return labels


@pytest.mark.gui
@pytest.mark.parametrize("axcodes", ORIENTATIONS)
def test_saved_labels_land_on_the_source_grid(make_napari_viewer, write_case, tmp_path: Path,
                                              axcodes: str) -> None:
    folder = write_case(axcodes=axcodes)
    source = nib.load(str(folder / "Case_001_seg.nii.gz"))
    viewer = make_napari_viewer()
    labels = _opened_labels(viewer, folder)
    # Paint one voxel at the superior-anterior-right corner of the canonical array.
    assert labels.data[-1, -1, -1] == 0
    labels.data[-1, -1, -1] = 4

    out = tmp_path / "edited_seg.nii.gz"
    assert viewer.layers.save(str(out), selected=True, plugin=PLUGIN) == [str(out)]

    written = nib.load(str(out))
    assert written.shape == source.shape
    np.testing.assert_array_equal(written.affine, source.affine)
    np.testing.assert_array_equal(nib.aff2axcodes(written.affine), tuple(axcodes))
    w, s = np.asarray(written.dataobj), np.asarray(source.dataobj)
    assert w.dtype == np.uint8
    changed = np.argwhere(w != s)
    assert len(changed) == 1 and w[tuple(changed[0])] == 4
    # The painted voxel is the most right, anterior and superior corner in world space.
    corners = np.array([[i, j, k] for i in (0, w.shape[0] - 1) for j in (0, w.shape[1] - 1)
                        for k in (0, w.shape[2] - 1)], dtype=float)
    world = nib.affines.apply_affine(written.affine, corners)
    np.testing.assert_allclose(nib.affines.apply_affine(written.affine, changed[0]), world.max(axis=0))


@pytest.mark.gui
def test_saved_labels_round_trip_unchanged(make_napari_viewer, write_case, tmp_path: Path) -> None:
    folder = write_case(axcodes="LPS")
    viewer = make_napari_viewer()
    _opened_labels(viewer, folder)
    out = tmp_path / "copy_seg.nii"  # uncompressed works too
    # No plugin named, as from File > Save Selected Layer: the extension picks this writer.
    assert viewer.layers.save(str(out), selected=True) == [str(out)]
    source = nib.load(str(folder / "Case_001_seg.nii.gz"))
    written = nib.load(str(out))
    np.testing.assert_array_equal(written.affine, source.affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(source.dataobj))
    # napari's builtin reader also claims *.nii (via imageio + itk), so name the plugin; the GUI asks.
    (reread,) = viewer.open(str(out), plugin=PLUGIN)
    assert type(reread).__name__ == "Labels"


@pytest.mark.gui
def test_save_without_extension_gets_nii_gz(make_napari_viewer, write_case, tmp_path: Path,
                                            phantom) -> None:
    viewer = make_napari_viewer()
    _opened_labels(viewer, write_case())
    (path,) = viewer.layers.save(str(tmp_path / "result"), selected=True, plugin=PLUGIN)
    assert path.endswith("result.nii.gz")
    assert nib.load(path).shape == phantom.seg.shape[::-1]  # RAS file: (x, y, z)


@pytest.mark.gui
def test_save_labels_without_grid_warns_and_uses_scale(make_napari_viewer, tmp_path: Path,
                                                       notifications) -> None:
    viewer = make_napari_viewer()
    data = np.zeros((5, 6, 7), dtype=np.int32)
    data[1, 2, 3] = 2
    viewer.add_labels(data, name="drawn", scale=(3.0, 2.0, 1.0))
    out = tmp_path / "drawn.nii.gz"
    assert viewer.layers.save(str(out), selected=True, plugin=PLUGIN) == [str(out)]
    img = nib.load(str(out))
    np.testing.assert_allclose(img.affine, np.diag([1.0, 2.0, 3.0, 1.0]))  # x, y, z in RAS+
    np.testing.assert_array_equal(np.asarray(img.dataobj), data.transpose(2, 1, 0))
    warnings = [m for severity, m in notifications() if severity == "warning"]
    assert any("original image grid is unknown" in m for m in warnings)


@pytest.mark.gui
def test_save_replaces_an_existing_file_but_never_the_scan(make_napari_viewer, write_case, phantom,
                                                            tmp_path: Path, notifications) -> None:
    folder = write_case()
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin=PLUGIN)
    out = tmp_path / "seg_out.nii.gz"
    out.write_bytes(b"old")
    viewer.layers.selection.active = layers[-1]
    assert viewer.layers.save(str(out), selected=True, plugin=PLUGIN) == [str(out)]
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), phantom.seg.transpose(2, 1, 0))

    # A labels layer made on the t1 grid (what the widget does) saved over the t1 file.
    t1 = layers[0]
    t1_path = folder / "Case_001_t1.nii.gz"
    before = t1_path.read_bytes()
    made = viewer.add_labels(np.zeros(t1.data.shape, np.uint8), scale=t1.scale,
                             metadata={"bigl_volume": t1.metadata["bigl_volume"]})
    viewer.layers.selection.active = made
    with pytest.warns(UserWarning, match="did not return any written paths"):
        assert viewer.layers.save(str(t1_path), selected=True, plugin=PLUGIN) == []
    assert t1_path.read_bytes() == before
    errors = [m for severity, m in notifications() if severity == "error"]
    assert len(errors) == 1 and "refusing to replace the scan" in errors[0]


@pytest.mark.gui
def test_save_labels_off_grid_is_a_notification(make_napari_viewer, write_case, tmp_path: Path,
                                                notifications) -> None:
    viewer = make_napari_viewer()
    labels = _opened_labels(viewer, write_case())
    volume = labels.metadata["bigl_volume"]
    cropped = viewer.add_labels(labels.data[:, :10], metadata={"bigl_volume": volume})
    viewer.layers.selection.active = cropped
    out = tmp_path / "cropped.nii.gz"
    with pytest.warns(UserWarning):
        assert viewer.layers.save(str(out), selected=True, plugin=PLUGIN) == []
    assert not out.exists()
    errors = [m for severity, m in notifications() if severity == "error"]
    assert len(errors) == 1 and "does not fit the grid" in errors[0]


def test_to_file_helper_keeps_world_positions(phantom, nifti) -> None:
    # Guards the fixture itself: the same world point holds the same label in RAS and LPS files.
    ras, ras_aff = nifti.to_file(phantom.seg, "RAS")
    lps, lps_aff = nifti.to_file(phantom.seg, "LPS")
    assert nib.aff2axcodes(ras_aff) == ("R", "A", "S") and nib.aff2axcodes(lps_aff) == ("L", "P", "S")
    ijk = np.array([10, 20, 15])
    world = nib.affines.apply_affine(ras_aff, ijk)
    lps_ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(lps_aff), world)).astype(int)
    assert ras[tuple(ijk)] == lps[tuple(lps_ijk)]


# --------------------------------------------------------------------------- rendering


@pytest.mark.gui
def test_labels_render_in_brats_colours_on_a_real_display(make_napari_viewer, write_case,
                                                          phantom) -> None:
    import os

    from qtpy.QtGui import QGuiApplication

    assert os.environ.get("DISPLAY") and QGuiApplication.platformName() == "xcb"  # Xvfb, not offscreen
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(write_case()), plugin=PLUGIN)
    # The axial slice with the most of the rarest label, so all three colours show.
    counts = [min(int((s == v).sum()) for v in (1, 2, 4)) for s in phantom.seg]
    viewer.dims.set_current_step(0, int(np.argmax(counts)))
    layers[-1].opacity = 1.0  # pure label colours, no blending with the anatomy
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    r, g, b = shot[..., 0], shot[..., 1], shot[..., 2]
    red = (r > 200) & (g < 60) & (b < 60)
    green = (g > 150) & (r < 60) & (b < 60)
    yellow = (r > 200) & (g > 170) & (b < 60)
    assert red.sum() > 20 and green.sum() > 20 and yellow.sum() > 20, (red.sum(), green.sum(),
                                                                        yellow.sum())
    # The tumour is drawn over the brain: the canvas also shows grey anatomy.
    grey = (abs(r - g) < 8) & (abs(g - b) < 8) & (r > 40)
    assert grey.sum() > 1000


def test_layer_volume_keeps_the_file_grid_only_when_shapes_match(write_case) -> None:
    from napari_bigl._layers import layer_volume
    from napari_bigl._reader import read_case_folder

    data, kwargs, _ = read_case_folder(str(write_case(axcodes="LPS")))[-1]
    result = np.zeros_like(data)
    vol = layer_volume(result, kwargs["metadata"], kwargs["scale"])
    ref = kwargs["metadata"]["bigl_volume"]
    assert vol.data is result and vol.path == ref.path
    np.testing.assert_array_equal(vol.affine, ref.affine)
    other = layer_volume(result[:5], kwargs["metadata"], (3.0, 2.0, 1.0))
    assert other.path is None and other.spacing == (3.0, 2.0, 1.0)
    np.testing.assert_array_equal(other.affine, np.diag([1.0, 2.0, 3.0, 1.0]))
