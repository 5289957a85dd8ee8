"""The "BiGL Segment" dock widget: the shared inputs, the model, and one panel per action.

- inputs (here): image layer, its MR sequence, the model bundle, the device;
  the model file and the adaptation source folder are remembered between
  sessions (Qt settings);
- :class:`~napari_bigl._sequences_panel.SequencesPanel`: for a multi-sequence
  model, the image layer of each sequence it reads;
- :class:`~napari_bigl._segment_panel.SegmentPanel`: Segment, volumes, palette
  and legend, uncertainty layer, 3D view;
- :class:`~napari_bigl._attention_panel.AttentionPanel`: attention at a point;
- :class:`~napari_bigl._adapt_panel.AdaptPanel`: Adapt to this modality, Save adapted model;
- :class:`~napari_bigl._report_panel.ReportPanel`: Export report.

Each button is one call into :mod:`bigl`, run by :class:`~napari_bigl._jobs.JobBar`
in a worker thread with a progress bar and Cancel. Errors become napari
notifications, never tracebacks or a frozen viewer. Qt-free logic lives in
:mod:`napari_bigl._controller` and :mod:`napari_bigl._results`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigl.checkpoint import DEMO_BUNDLE, Bundle, load_bundle
from bigl.io import SEQUENCES, Volume
from napari.layers import Image, Labels, Layer
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QComboBox, QFileDialog, QFormLayout, QLabel, QLineEdit, QVBoxLayout, QWidget

from napari_bigl import _controller as ctl
from napari_bigl._adapt_panel import AdaptPanel
from napari_bigl._ahead import PLACEHOLDER_KEY, AheadLayers, is_placeholder
from napari_bigl._attention_panel import AttentionPanel
from napari_bigl._jobs import JobBar, report
from napari_bigl._layers import LayerDataTuple
from napari_bigl._report_panel import ReportPanel
from napari_bigl._results import ROLE_KEY, Shown
from napari_bigl._segment_panel import SegmentPanel
from napari_bigl._sequences_panel import SequencesPanel
from napari_bigl._ui import MODEL_KEY, button, remember, remembered, row

if TYPE_CHECKING:
    import napari

_LAYER_TYPES = {"image": Image, "labels": Labels}
def _preload() -> None:
    """Import, off the GUI thread, what napari first needs for a labels layer with features (pandas: ~0.3 s)."""
    import pandas  # noqa: F401


class SegmentWidget(QWidget):
    """Dock widget: image, sequence, model, device -> Segment / attention / Adapt / Report."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.jobs = JobBar(self)
        self.result: Shown | None = None                 # the last segmentation on screen
        self._cached: tuple[Any, Bundle] | None = None   # (file key, bundle) of the model file
        self.adapted: Bundle | None = None               # the adapted model; the current one when set
        self.ahead = AheadLayers(self)                   # the chosen image's result layers, made ahead of time
        self._build()
        self.reset_choices()
        self.destroyed.connect(self.jobs.cancel_all)     # closing the dock stops running work at its next step
        threading.Thread(target=_preload, daemon=True).start()

    def _build(self) -> None:
        self.image_combo = QComboBox()
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.sequence_combo = QComboBox()
        self.sequence_combo.addItems(["", *SEQUENCES])
        self.sequence_combo.setToolTip("MR sequence of the image (guessed from its name; correct it if wrong)")
        self.sequence_combo.currentTextChanged.connect(lambda *_: self.ahead.image_chosen())
        self.model_edit = QLineEdit(remembered(MODEL_KEY, str(DEMO_BUNDLE), Path.is_file))
        self.model_edit.setToolTip("model bundle (*.safetensors); default: the demo T1 model")
        self.model_edit.textEdited.connect(self._on_model_edited)
        self.model_edit.editingFinished.connect(self.update_model_info)
        self.model_browse = button("…", self._browse_model, "choose a model bundle")
        self.model_info = QLabel(wordWrap=True)
        self.device_combo = QComboBox()
        self.device_combo.addItems(ctl.DEVICES)
        self.device_combo.currentTextChanged.connect(self._update_device_note)
        self.device_note = QLabel(wordWrap=True)
        form = QFormLayout()
        self.sequences_panel = SequencesPanel(self)
        form.addRow("image", self.image_combo)
        form.addRow("sequence", self.sequence_combo)
        form.addRow(self.sequences_panel)
        form.addRow("model", row(self.model_edit, self.model_browse))
        form.addRow("", self.model_info)
        form.addRow("device", self.device_combo)
        form.addRow("", self.device_note)
        self._sequence_label = form.labelForField(self.sequence_combo)

        self.segment_panel = SegmentPanel(self)
        self.attention_panel = AttentionPanel(self)
        self.adapt_panel = AdaptPanel(self)
        self.report_panel = ReportPanel(self)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        for part in (self.segment_panel, self.jobs, self.attention_panel, self.adapt_panel, self.report_panel):
            layout.addWidget(part)
        layout.addStretch(1)
        self.jobs.busy_changed.connect(self._set_busy)
        self._update_device_note()
        self.update_model_info()

    # ------------------------------------------------------------------ scripting API (docs/plugin.md)
    def segment(self) -> None:
        self.segment_panel.segment()

    def adapt(self) -> None:
        self.adapt_panel.adapt()

    def save_adapted(self, path: str | os.PathLike | None = None, *, overwrite: bool = False) -> Path | None:
        return self.adapt_panel.save_adapted(path, overwrite=overwrite)

    def export_report(self, path: str | os.PathLike | None = None, *, overwrite: bool = False) -> Path | None:
        return self.report_panel.export_report(path, overwrite=overwrite)

    def show_3d(self, on: bool = True) -> None:
        self.segment_panel.show_3d(on)

    def cancel(self) -> None:
        self.jobs.cancel()

    def is_busy(self) -> bool:
        return self.jobs.is_busy()

    # ------------------------------------------------------------------ inputs
    def reset_choices(self, *_: Any) -> None:
        """Refill the image list from the viewer (napari calls this whenever the layers change)."""
        current = self.image_combo.currentText()
        names = [lyr.name for lyr in self.input_layers()]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        if self.image_combo.currentText() != current:
            self._on_image_changed()
        else:
            self.sequences_panel.refill()
        self.attention_panel.layers_changed()

    def input_layers(self) -> list[Image]:
        """The image layers offered as inputs: every image layer but those the widget made."""
        return [lyr for lyr in self.viewer.layers if isinstance(lyr, Image) and ROLE_KEY not in (lyr.metadata or {})]

    def image_layer(self) -> Image | None:
        return self.layer(self.image_combo.currentText())

    def _on_image_changed(self, *_: Any) -> None:
        self.sequence_combo.setCurrentText(ctl.guess_sequence(self.image_layer()) or "")
        self.sequences_panel.refill(rematch=True)
        self.ahead.image_chosen()

    def adapt_plausible(self) -> bool:
        """Whether the model (single-sequence) does not read the chosen image's sequence: Adapt is what comes next."""
        needed = self.needed_sequences()
        return len(needed) == 1 and self.sequence_combo.currentText() not in ("", *needed)

    def inputs(self) -> tuple[Image, Volume | dict[str, Volume], tuple[str, ...]]:
        """(the image layer results go over, what the model reads, its sequences); a BiglError for bad inputs.

        A single-sequence model reads the image layer (its sequence from the
        "sequence" list); a multi-sequence one reads ``{sequence: Volume}`` from
        the sequences panel, all on one grid.
        """
        layer = self.image_layer()
        if self.sequences_panel.is_multi():
            ctl.image_input(layer)
            return layer, self.sequences_panel.volumes(), self.sequences_panel.needed
        volume = ctl.image_input(layer)
        return layer, volume, (ctl.require_sequence(self.sequence_combo.currentText() or None, layer.name),)

    def device(self) -> str:
        return self.device_combo.currentText()

    def _update_device_note(self, *_: Any) -> None:
        self.device_note.setText(ctl.device_note(self.device()))

    def _set_busy(self, busy: bool) -> None:
        # the model cannot change under a running job (an adaptation would silently replace the new choice)
        self.model_edit.setReadOnly(busy)
        self.model_browse.setEnabled(not busy)
        for panel in (self.segment_panel, self.adapt_panel, self.report_panel):
            panel.set_busy(busy)

    # ------------------------------------------------------------------ model
    def model_path(self) -> str:
        return self.model_edit.text().strip() or str(DEMO_BUNDLE)

    def _on_model_edited(self, *_: Any) -> None:
        if self.adapted is not None and self.adapted.path is None:
            show_warning("The unsaved adapted model is no longer used: the model file you chose replaces it.")
        self.adapted = None
        self.adapt_panel.set_busy(self.is_busy())

    def update_model_info(self) -> None:
        if self.adapted is not None:
            b = self.adapted
            where = f"saved as {b.path.name}" if b.path is not None else "in memory, not saved"
            self.model_info.setText(f"adapted {b.source_sequence} → {', '.join(b.sequences)} ({where})")
        else:
            self.model_info.setText(ctl.model_note(self.model_path()))
        self.model_info.setToolTip(self.model_info.text())
        self.sequences_panel.set_needed(self.needed_sequences())
        multi = self.sequences_panel.is_multi()
        for w in (self.sequence_combo, self._sequence_label):     # one sequence list per input instead
            w.setVisible(not multi)
        self.ahead.image_chosen()

    def needed_sequences(self) -> tuple[str, ...]:
        """The sequences the current model reads (from the file's document when it is not loaded yet)."""
        bundle = self.current_bundle()
        return tuple(bundle.sequences) if bundle is not None else ctl.model_sequences(self.model_path())

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a BiGL model bundle", str(Path(self.model_path()).parent),
                                              "BiGL model bundle (*.safetensors)")
        if path:
            self.model_edit.setText(path)
            self._on_model_edited()
            self.update_model_info()

    def current_bundle(self) -> Bundle | None:
        """The model the next action uses, if in memory: the adapted one, else the loaded model file."""
        if self.adapted is not None:
            return self.adapted
        if self._cached is not None and self._cached[0] == ctl.file_key(self.model_path()):
            return self._cached[1]
        return None

    def with_bundle(self, action: str, then: Callable[[Bundle], None]) -> None:
        """Call ``then(bundle)`` now, or once the model file is loaded (in a worker); errors are notifications.

        Cancel while the file is loading stops there: ``then`` never runs.
        """
        def call(bundle: Bundle) -> None:
            try:
                then(bundle)
            except Exception as exc:  # noqa: BLE001
                report(exc, action)

        bundle = self.current_bundle()
        if bundle is not None:
            call(bundle)
            return
        key = ctl.file_key(self.model_path())

        def loaded(b: Bundle) -> None:
            self._cached = (key, b)
            remember(MODEL_KEY, key[0])
            if tuple(b.sequences) != self.sequences_panel.needed:
                self.update_model_info()      # the file changed since it was read: its inputs too
            call(b)

        self.jobs.start(action.lower(), lambda cancel: load_bundle(key[0]), loaded, progress_bar=False)

    # ------------------------------------------------------------------ layers
    def layer(self, name: str) -> Layer | None:
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def put_layer(self, layer_data: LayerDataTuple, *, above: Layer | None = None) -> Layer:
        """Add a result layer (just ``above`` a layer, else on top), or update the one of that name.

        An update keeps the user's display settings; a layer made ahead of time
        (:mod:`napari_bigl._ahead`) is filled and shown. Inserting at the right
        place costs napari one step; adding on top and then moving it costs two.
        """
        data, kwargs, kind = layer_data
        layer = self.layer(kwargs["name"])
        if layer is None or not isinstance(layer, _LAYER_TYPES[kind]):
            new = Layer.create(data, kwargs, kind)
            if above is None:
                return self.viewer.add_layer(new)
            self.viewer.layers.insert(self.viewer.layers.index(above) + 1, new)
            return new
        placeholder = is_placeholder(layer)
        if "contrast_limits" in kwargs:
            layer.contrast_limits = kwargs["contrast_limits"]
        layer.data = data
        layer.metadata.update(kwargs.get("metadata", {}))
        if placeholder:
            layer.metadata.pop(PLACEHOLDER_KEY, None)
            layer.visible = kwargs.get("visible", True)
        return layer

    def has_layer(self, layer: Layer) -> bool:
        """Whether ``layer`` (the object, not a layer of that name) is still in the viewer."""
        return layer in self.viewer.layers
