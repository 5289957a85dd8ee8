"""The widget's panels in a real viewer: uncertainty, colours, 3D, report, remembered choices, and the rough edges.

Each rough edge of issue 17 has its test here: the image removed during
Segment or Adapt, Cancel while the model loads, Cancel after the adaptation
has finished, the model changed during Adapt, the reason a bundle is unusable,
and a broken sample_data folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import threading

import numpy as np
import pytest
from bigl.checkpoint import DEMO_BUNDLE
from bigl.infer import uncertainty
from bigl.progress import Cancelled
from napari.layers import Labels

from napari_bigl import _controller as ctl
from napari_bigl import _results
from napari_bigl._layers import PALETTES
from napari_bigl._ui import MODEL_KEY, SOURCE_KEY, remember, settings

from .test_widget import PLUGIN, WIDGET, open_case, tiny_adapt_config, wait_idle

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def widget(viewer, tiny_bundle_path):
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    w.model_edit.setText(str(tiny_bundle_path))
    w.device_combo.setCurrentText("cpu")
    return w


def segmented(viewer, widget, qtbot, write_case, sequence="t1"):
    image = open_case(viewer, widget, write_case(), sequence)
    widget.segment()
    wait_idle(qtbot, widget)
    return image


def messages(notifications, severity):
    return [m for s, m in notifications() if s == severity]


# --------------------------------------------------------------------------- uncertainty, colours, 3D


def test_uncertainty_layer_is_a_tick_off_by_default(viewer, widget, qtbot, write_case):
    image = segmented(viewer, widget, qtbot, write_case)
    name = "Case_001 t1 uncertainty"
    assert not widget.segment_panel.uncertainty_check.isChecked() and name not in viewer.layers
    widget.segment_panel.uncertainty_check.setChecked(True)        # shown from the stored result, no recompute
    layer = viewer.layers[name]
    assert layer.data.shape == image.data.shape and tuple(layer.contrast_limits) == (0.0, 1.0)
    widget.segment()
    wait_idle(qtbot, widget)
    seg = _results.segment_volume(widget.current_bundle(), image.metadata["bigl_volume"], device="cpu")
    np.testing.assert_allclose(viewer.layers[name].data, uncertainty(seg.probabilities), atol=1e-5)
    widget.segment_panel.uncertainty_check.setChecked(False)
    assert name not in viewer.layers


def test_palette_recolours_labels_and_the_legend(viewer, widget, qtbot, write_case):
    segmented(viewer, widget, qtbot, write_case)
    panel = widget.segment_panel
    assert panel.palette_combo.currentText() == "BraTS" and "rgb(0,204,0)" in panel.legend_label.text()  # edema
    panel.palette_combo.setCurrentText("colour-blind safe")
    for name in ("Case_001 t1 BiGL labels", "Case_001 seg"):                 # the result and the ground truth
        colour = viewer.layers[name].colormap.color_dict[2]
        np.testing.assert_allclose(colour, PALETTES["colour-blind safe"][2], atol=1e-6)
    assert "rgb(0,114,178)" in panel.legend_label.text() and "edema" in panel.legend_label.text()


def test_3d_button_shows_labels_with_the_image_and_back(viewer, widget, qtbot, write_case):
    image = segmented(viewer, widget, qtbot, write_case)
    att = viewer.layers["Case_001 t1 attention"]
    widget.segment_panel.view3d_button.click()
    assert viewer.dims.ndisplay == 3 and image.visible and viewer.layers["Case_001 t1 BiGL labels"].visible
    assert not att.visible and widget.segment_panel.view3d_button.text() == "2D view"
    qtbot.wait(100)
    assert viewer.screenshot(canvas_only=True).std() > 0                   # something is drawn under Xvfb
    widget.segment_panel.view3d_button.click()
    assert viewer.dims.ndisplay == 2 and att.visible


# --------------------------------------------------------------------------- report


def test_export_report_writes_csv_json_png_and_never_overwrites(viewer, widget, qtbot, write_case, tmp_path,
                                                               tiny_bundle_path, notifications):
    segmented(viewer, widget, qtbot, write_case)
    csv_path = widget.export_report(tmp_path / "case1")
    assert csv_path == tmp_path / "case1.csv"
    report = json.loads((tmp_path / "case1.json").read_text())
    assert report["case"] == "Case_001" and report["image_layer"] == "Case_001 t1"
    assert report["model_sha256"] == hashlib.sha256(tiny_bundle_path.read_bytes()).hexdigest()
    assert report["sequences"] == ["t1"] and set(report["volumes_ml"]) == {"WT", "TC", "ET"}
    assert widget.segment_panel.volumes_label.text().startswith(f"WT {report['volumes_ml']['WT']:.1f} ml")
    row = next(csv.DictReader(csv_path.open()))
    assert row["case"] == "Case_001" and float(row["WT_ml"]) == report["volumes_ml"]["WT"]
    assert (tmp_path / "case1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = {p: p.read_bytes() for p in tmp_path.glob("case1.*")}
    assert widget.export_report(tmp_path / "case1") is None                  # never overwritten silently
    assert "already exist" in messages(notifications, "error")[-1]
    assert {p: p.read_bytes() for p in tmp_path.glob("case1.*")} == before


def test_export_report_before_segmenting_says_so(viewer, widget, notifications, tmp_path):
    assert widget.export_report(tmp_path / "r") is None
    assert "Segment first" in messages(notifications, "error")[-1] and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- remembered choices


def test_model_and_source_folder_are_remembered(viewer, make_napari_viewer, widget, qtbot, write_case,
                                                 tiny_bundle_path, tiny_dataset):
    segmented(viewer, widget, qtbot, write_case)                          # a model that loaded is remembered
    assert settings().value(MODEL_KEY) == str(tiny_bundle_path)
    remember(SOURCE_KEY, tiny_dataset)
    _, again = make_napari_viewer().window.add_plugin_dock_widget(PLUGIN, WIDGET)   # "the next session"
    assert again.model_edit.text() == str(tiny_bundle_path)
    assert again.adapt_panel.source_edit.text() == str(tiny_dataset)
    remember(MODEL_KEY, tiny_dataset / "gone.safetensors")                 # a file that no longer exists
    _, third = make_napari_viewer().window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert third.model_edit.text() == str(DEMO_BUNDLE)


# --------------------------------------------------------------------------- rough edges


def test_image_removed_during_segment_gets_no_results(viewer, widget, qtbot, write_case, monkeypatch,
                                                       notifications):
    open_case(viewer, widget, write_case())
    gate, real = threading.Event(), _results.segment_volume
    monkeypatch.setattr(_results, "segment_volume", lambda *a, **k: (gate.wait(30), real(*a, **k))[1])
    widget.segment()
    qtbot.waitUntil(lambda: widget.jobs.job is not None and widget.jobs.job.name == "segment"
                    and widget.jobs.progress_bar.maximum() == 0, timeout=30_000)
    viewer.layers.remove("Case_001 t1")
    gate.set()
    wait_idle(qtbot, widget)
    assert not [n for n in viewer.layers.copy() if n.name.startswith("Case_001 t1 ")]
    assert any("was removed while it was being segmented" in m for m in messages(notifications, "warning"))
    assert not messages(notifications, "error")


def test_cancel_while_the_model_loads_stops_there(viewer, widget, qtbot, write_case, monkeypatch, notifications):
    open_case(viewer, widget, write_case())
    gate, calls = threading.Event(), []
    import napari_bigl._widget as W

    real_load = W.load_bundle
    monkeypatch.setattr(W, "load_bundle", lambda p: (gate.wait(30), real_load(p))[1])
    monkeypatch.setattr(_results, "segment_volume", lambda *a, **k: calls.append(1))
    widget.segment()
    assert widget.is_busy()
    widget.cancel()
    gate.set()
    wait_idle(qtbot, widget)
    assert not calls and "Case_001 t1 BiGL labels" not in viewer.layers
    assert any("cancelled" in m for m in messages(notifications, "info"))


def test_cancel_after_adaptation_finished_keeps_the_model(viewer, widget, qtbot, write_case, tiny_dataset,
                                                          monkeypatch, notifications):
    segmented(viewer, widget, qtbot, write_case, "t2")
    before = np.array(viewer.layers["Case_001 t2 BiGL labels"].data, copy=True)
    widget.adapt_panel.source_edit.setText(str(tiny_dataset))
    widget.adapt_panel.adapt_config = lambda: tiny_adapt_config(steps=2)

    def final_segment(*args, cancel, **kwargs):      # Cancel pressed during the final segmentation
        widget.jobs.job.cancel.set()
        raise Cancelled()

    monkeypatch.setattr(ctl, "segment_for_display", final_segment)
    widget.adapt()
    wait_idle(qtbot, widget, timeout=120_000)
    adapted = widget.current_bundle()
    assert adapted.sequences == ("t2",) and widget.adapt_panel.save_button.isEnabled()
    assert "adapted t1 → t2" in widget.model_info.text()
    np.testing.assert_array_equal(viewer.layers["Case_001 t2 BiGL labels"].data, before)   # previews undone
    assert any("final segmentation was cancelled" in m for m in messages(notifications, "info"))


def test_target_removed_during_adapt_keeps_the_model_without_errors(viewer, widget, qtbot, write_case,
                                                                    tiny_dataset, notifications):
    segmented(viewer, widget, qtbot, write_case, "t2")
    widget.adapt_panel.source_edit.setText(str(tiny_dataset))
    widget.adapt_panel.adapt_config = lambda: tiny_adapt_config(steps=2)
    widget.adapt()
    qtbot.waitUntil(lambda: "align" in widget.jobs.progress_bar.format(), timeout=120_000)
    viewer.layers.remove("Case_001 t2")
    wait_idle(qtbot, widget, timeout=120_000)
    assert not messages(notifications, "error"), notifications()
    assert widget.current_bundle().sequences == ("t2",) and widget.adapt_panel.save_button.isEnabled()
    assert "adapted t1 → t2" in widget.model_info.text()
    assert "Case_001 t2 x_t→s" not in viewer.layers
    assert any("was removed meanwhile" in m for m in messages(notifications, "warning"))


def test_model_cannot_change_silently_during_adapt(viewer, widget, qtbot, write_case, tiny_dataset, tmp_path,
                                                   notifications):
    segmented(viewer, widget, qtbot, write_case, "t2")
    widget.adapt_panel.source_edit.setText(str(tiny_dataset))
    widget.adapt_panel.adapt_config = lambda: tiny_adapt_config(steps=2)
    widget.adapt()
    qtbot.waitUntil(lambda: widget.jobs.job is not None and widget.jobs.job.name == "adapt", timeout=30_000)
    assert widget.model_edit.isReadOnly() and not widget.model_browse.isEnabled()   # locked while busy
    widget.model_edit.setText(str(tmp_path / "other.safetensors"))                 # a script can still do it
    wait_idle(qtbot, widget, timeout=120_000)
    assert not widget.model_edit.isReadOnly()
    assert any("was changed to" in m and "other.safetensors" in m for m in messages(notifications, "warning"))


def test_bundle_problems_say_why(viewer, widget, tmp_path):
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00not a bundle" * 10)
    widget.model_edit.setText(str(bad))
    widget.model_edit.editingFinished.emit()
    text = widget.model_info.text()
    assert text.startswith("⚠ not a readable model bundle") and "re-create" in text and str(bad) not in text
    widget.model_edit.setText(str(tmp_path / "missing.safetensors"))
    widget.model_edit.editingFinished.emit()
    assert "no such model bundle" in widget.model_info.text()


def test_broken_sample_data_is_not_replaced_by_phantoms(tmp_path):
    broken = tmp_path / "sample_data"
    (broken / "Case_1").mkdir(parents=True)
    (broken / "Case_1" / "Case_1_t1.nii.gz").write_bytes(b"not a nifti")
    assert ctl.default_source_dir(broken) == broken                      # adapting then names the broken file
    assert ctl.default_source_dir(tmp_path / "absent") == ctl.cache_dir() / ctl.PHANTOM_SOURCE_DIR_NAME


def test_labels_layers_of_the_plugin_use_the_palette(viewer, widget, qtbot, write_case):
    segmented(viewer, widget, qtbot, write_case)
    widget.segment_panel.palette_combo.setCurrentText("colour-blind safe")
    widget.segment()
    wait_idle(qtbot, widget)
    layer = viewer.layers["Case_001 t1 BiGL labels"]
    assert isinstance(layer, Labels)
    np.testing.assert_allclose(layer.colormap.color_dict[4], PALETTES["colour-blind safe"][4], atol=1e-6)
