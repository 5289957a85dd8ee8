"""The widget's panels in a real viewer: sequences of a multi-sequence model, uncertainty, colours, 3D, report,
remembered choices, and the rough edges.

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
from bigl.checkpoint import DEMO_BUNDLE, load_bundle
from bigl.infer import segment_volume, uncertainty
from bigl.progress import Cancelled
from napari.layers import Labels

from napari_bigl import _controller as ctl
from napari_bigl import _results
from napari_bigl._ahead import is_placeholder
from napari_bigl._layers import PALETTES
from napari_bigl._ui import MODEL_KEY, SOURCE_KEY, remember, settings

from .test_widget import PLUGIN, WIDGET, open_case, shown_results, tiny_adapt_config, wait_idle

pytestmark = pytest.mark.gui



def segmented(viewer, widget, qtbot, write_case, sequence="t1"):
    image = open_case(viewer, widget, write_case(), sequence)
    widget.segment()
    wait_idle(qtbot, widget)
    return image


def messages(notifications, severity):
    return [m for s, m in notifications() if s == severity]


# --------------------------------------------------------------------------- all sequences


def test_multi_sequence_model_reads_every_open_sequence(viewer, widget, qtbot, write_case, multi_bundle_path,
                                                        notifications):
    """One list per sequence the model reads, pre-filled by reader metadata or name, editable; one grid or a message."""
    open_case(viewer, widget, write_case(), "t2")
    widget.model_edit.setText(str(multi_bundle_path))
    widget.model_edit.editingFinished.emit()
    panel = widget.sequences_panel
    chosen = lambda: {s: c.currentText() for s, c in panel.combos.items()}  # noqa: E731
    assert not panel.isHidden() and widget.sequence_combo.isHidden()
    assert chosen() == {"t1": "Case_001 t1", "t2": "Case_001 t2"} and panel.note.text() == ""

    widget.segment()
    wait_idle(qtbot, widget)
    expected = segment_volume(load_bundle(multi_bundle_path),
                              {s: viewer.layers[f"Case_001 {s}"].metadata["bigl_volume"] for s in ("t1", "t2")},
                              device="cpu")
    np.testing.assert_array_equal(viewer.layers["Case_001 t2 BiGL labels"].data, expected.labels)
    assert widget.result.sequences == ("t1", "t2") and not messages(notifications, "error")

    # layers without reader metadata match by name, the selected image's case first
    shape = viewer.layers["Case_001 t1"].data.shape
    other = tuple(n + 2 for n in shape)
    for name in ("patient T1w", "patient T2w"):
        viewer.add_image(np.zeros(other, np.float32), name=name)
    widget.image_combo.setCurrentText("patient T2w")
    assert chosen() == {"t1": "patient T1w", "t2": "patient T2w"}

    # the user's choice is kept; layers on different grids are named, with what to co-register them with
    panel.combos["t1"].setCurrentText("Case_001 t1")
    panel.combos["t1"].activated.emit(panel.combos["t1"].currentIndex())
    viewer.add_image(np.zeros((3, 4, 4), np.float32), name="unrelated")          # layers change: choice stays
    assert chosen()["t1"] == "Case_001 t1"
    assert "do not share one voxel grid" in panel.note.text() and "co-register" in panel.note.text()
    widget.segment()
    wait_idle(qtbot, widget)
    assert any("do not share one voxel grid" in m for m in messages(notifications, "error"))
    assert "patient T2w BiGL labels" not in shown_results(viewer) and not widget.is_busy()

    panel.combos["t1"].setCurrentText("")
    panel.combos["t1"].activated.emit(panel.combos["t1"].currentIndex())
    assert "no image layer is chosen for t1" in panel.note.text()

    widget.adapt()                                    # adapting is for single-sequence models: said, not tried
    assert any("single-sequence model" in m for m in messages(notifications, "error"))
    assert not widget.is_busy()


# --------------------------------------------------------------------------- result layers made ahead of time


def test_result_layers_are_made_hidden_when_the_image_is_chosen_and_filled_in_place(viewer, widget, qtbot,
                                                                                   write_case):
    open_case(viewer, widget, write_case(), "t1")
    selected = viewer.layers.selection.active
    qtbot.waitUntil(lambda: not widget.ahead.pending(), timeout=120_000)
    made = {n: viewer.layers[n] for n in ("Case_001 t1 attention", "Case_001 t1 BiGL labels")}
    assert all(is_placeholder(lyr) and not lyr.visible and not lyr.data.any() for lyr in made.values())
    assert "Case_001 t1 x_t→s" not in viewer.layers                   # the model reads t1: nothing to adapt
    assert viewer.layers.selection.active is selected                  # placeholders never take the selection
    widget.segment()
    wait_idle(qtbot, widget)
    for name, layer in made.items():                                   # the same layers, filled and shown
        assert viewer.layers[name] is layer and layer.visible and not is_placeholder(layer)
    assert made["Case_001 t1 attention"].data.max() > 0

    widget.image_combo.setCurrentText("Case_001 t2")                   # the t1 model does not read t2: Adapt next
    qtbot.waitUntil(lambda: not widget.ahead.pending(), timeout=120_000)
    assert is_placeholder(viewer.layers["Case_001 t2 x_t→s"])
    viewer.layers.remove("Case_001 t2")                                # unused placeholders go with their image
    qtbot.waitUntil(lambda: not widget.ahead.pending(), timeout=120_000)
    assert not [n for n in viewer.layers if n.name.startswith("Case_001 t2 ")]
    assert all(viewer.layers[n] is lyr for n, lyr in made.items())     # results are kept


def test_translated_image_is_windowed_on_the_brain_and_its_background_is_black():
    rng = np.random.default_rng(0)
    x = np.zeros((8, 20, 20), np.float32)
    x[1:7, 4:16, 4:16] = rng.normal(0.0, 1.0, (6, 12, 12))               # z-scores inside the "brain"
    x[2:4, 6:8, 6:8] = -40.0                                              # a few outliers of G_t→s's linear output
    data, kwargs, _ = _results.translated_layer(_results.ImageRef(None, "img", (1, 1, 1), (0, 0, 0), {}), x)
    lo, hi = kwargs["contrast_limits"]
    assert -3.5 < lo < -1.0 and 1.0 < hi < 3.5                           # not (-40, max): the brain keeps its contrast
    np.testing.assert_array_equal(data[x != 0], x[x != 0])                # x_t→s itself, untouched
    assert (data[x == 0] == np.float32(lo)).all()                         # background at the window's black end


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
    assert not [n for n in shown_results(viewer) if n.startswith("Case_001 t1 ")]
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
    assert not calls and "Case_001 t1 BiGL labels" not in shown_results(viewer)
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
    assert "Case_001 t2 x_t→s" not in shown_results(viewer)
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
