"""Adapt panel: "Adapt to this modality" (BiGL, no labels of the open series) and "Save adapted model…".

:func:`napari_bigl._controller.adapt_to_image` runs in a worker and previews
the labels every N alignment steps. The adapted model then becomes the
widget's model, the translated image x_t→s is shown, and Save writes it (never
silently replacing a file). The source model is never modified. Cancel before
the adaptation has finished restores the labels; Cancel after it (during the
final segmentation) keeps the adapted model.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from bigl.adapt import AdaptConfig, TranslatorTrainConfig
from bigl.checkpoint import Bundle, save_bundle
from bigl.errors import BiglError
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QFileDialog, QFormLayout, QGroupBox, QLineEdit, QVBoxLayout

from napari_bigl import _controller as ctl
from napari_bigl._ahead import PLACEHOLDER_KEY, is_placeholder
from napari_bigl._jobs import guarded
from napari_bigl._layers import LayerDataTuple
from napari_bigl._results import ImageRef, labels_name
from napari_bigl._ui import MODEL_KEY, SOURCE_KEY, button, remember, remembered, row, spin

if TYPE_CHECKING:
    from napari_bigl._widget import SegmentWidget


class AdaptPanel(QGroupBox):
    preview = Signal(object)      # (ImageRef, step, labels layer tuple), emitted from the worker

    def __init__(self, host: SegmentWidget) -> None:
        super().__init__("Adapt to this modality (BiGL, no labels needed)")
        self.host = host
        self.preview.connect(self._on_preview)
        self.source_edit = QLineEdit(remembered(SOURCE_KEY, str(ctl.default_source_dir()), Path.is_dir))
        self.source_edit.setToolTip("labelled cases (BraTS layout) of the sequence the model was trained on")
        self.steps_spin = spin(1, ctl.ADAPT_STEPS, "alignment steps (stage 2)")
        self.translator_spin = spin(0, ctl.TRANSLATOR_STEPS, "translator steps (stage 1)")
        self.preview_spin = spin(1, ctl.PREVIEW_EVERY, "update the labels every N alignment steps")
        self.adapt_button = button("Adapt to this modality", self.adapt,
                                   "adapt the model to the image's sequence, without labels (BiGL)")
        self.save_button = button("Save adapted model…", self.save_adapted,
                                  "write the adapted model to a .safetensors file")
        self.save_button.setEnabled(False)
        form = QFormLayout()
        form.addRow("source data", row(self.source_edit, button("…", self._browse_source,
                                                                "choose the labelled source cases")))
        form.addRow("alignment steps", self.steps_spin)
        form.addRow("translator steps", self.translator_spin)
        form.addRow("preview every", self.preview_spin)
        box = QVBoxLayout(self)
        box.addLayout(form)
        box.addWidget(self.adapt_button)
        box.addWidget(self.save_button)

    def set_busy(self, busy: bool) -> None:
        self.adapt_button.setEnabled(not busy)
        self.save_button.setEnabled(not busy and self.host.adapted is not None)

    def _browse_source(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Labelled source cases", self.source_edit.text())
        if path:
            self.source_edit.setText(path)

    def adapt_config(self) -> AdaptConfig:
        """The adaptation settings from the panel's fields (bigl's defaults otherwise)."""
        return AdaptConfig(steps=self.steps_spin.value(),
                           translator=TranslatorTrainConfig(steps=self.translator_spin.value()))

    @guarded("Adapt")
    def adapt(self) -> None:
        """Adapt the current model to the selected image's sequence (BiGL, in a worker thread)."""
        host = self.host
        if host.is_busy():
            return
        layer, volume, sequences = host.inputs()
        if len(sequences) > 1:
            raise BiglError(f"Adapt to this modality adapts a single-sequence model to the image's sequence; this "
                            f"model already reads {', '.join(sequences)}. Choose a single-sequence model (e.g. the "
                            "bundled T1 model) to adapt it to a sequence it was not trained on")
        image, target = ImageRef.of(layer), sequences[0]
        source_dir = Path(self.source_edit.text().strip() or ctl.default_source_dir())
        config, every, device = self.adapt_config(), self.preview_spin.value(), host.device()
        segment = host.segment_panel
        palette, with_uncertainty = segment.palette(), segment.uncertainty_check.isChecked()

        def run(bundle: Bundle) -> None:
            ctl.check_model_inputs(bundle, sequences)
            ctl.source_sequence(bundle, target)                  # fail now, not in the worker
            remember(SOURCE_KEY, source_dir)
            labels = host.layer(labels_name(layer.name))
            before = None if labels is None or is_placeholder(labels) else np.array(labels.data, copy=True)
            model_path = host.model_path()
            progress = host.jobs.progress.emit

            def work(cancel: ctl.CancelFlag) -> ctl.Adapted:
                return ctl.adapt_to_image(
                    bundle, source_dir, volume, image, target, config, device=device, cancel=cancel,
                    progress=progress, preview_every=every, palette=palette, with_uncertainty=with_uncertainty,
                    preview=lambda step, data: self.preview.emit((image, step, data)))

            host.jobs.start("adapt", work, functools.partial(self._done, layer, before, model_path),
                            failed=functools.partial(self._restore_labels, layer, before), keep_if_cancelled=True)

        host.with_bundle("Adapt", run)

    def _on_preview(self, payload: tuple[ImageRef, int, LayerDataTuple]) -> None:
        image, step, data = payload
        job = self.host.jobs.job
        if job is None or job.name != "adapt" or job.cancel() or not self.host.has_layer(image.layer):
            return
        self.host.jobs.progress_bar.setToolTip(f"labels previewed at step {step}")
        self.host.put_layer(data)

    def _restore_labels(self, image: Image, before: np.ndarray | None) -> None:
        labels = self.host.layer(labels_name(image.name))
        if labels is not None and before is None:     # filled by a preview only: empty and hidden again
            labels.visible = False
            labels.data = np.zeros_like(labels.data)
            labels.metadata[PLACEHOLDER_KEY] = True
        elif labels is not None:
            labels.data = before

    def _done(self, image: Image, before: np.ndarray | None, model_path: str, out: ctl.Adapted) -> Iterator[None]:
        host = self.host
        if host.model_path() != model_path:
            show_warning(f"The model was changed to {host.model_path()} during the adaptation; the adapted model "
                         f"(from {Path(model_path).name}) replaces it. Save it, or choose the model again.")
        host.adapted = out.bundle                # the model first: whatever happens to the layers, it is kept
        host.update_model_info()
        self.save_button.setEnabled(True)
        seqs, took = ", ".join(out.bundle.sequences), ctl.format_seconds(out.seconds)
        if out.shown is None:
            self._restore_labels(image, before)
            show_info(f"Adapted the model to {seqs} in {took}; it is now the widget's model (keep it with 'Save "
                      "adapted model…'). The final segmentation was cancelled: press Segment to see its labels.")
            return
        if not host.has_layer(image):
            show_warning(f"Adapted the model to {seqs} in {took}; it is now the widget's model. '{image.name}' was "
                         "removed meanwhile, so no layers were added for it.")
            return
        yield from host.segment_panel.show(out.shown)
        if out.translated is not None and host.has_layer(image):
            yield
            host.put_layer(out.translated, above=image)     # under the attention and labels overlays
        show_info(f"Adapted the model to {seqs} in {took}; it is now the widget's model. Keep it with "
                  "'Save adapted model…'.")

    @guarded("Save adapted model")
    def save_adapted(self, path: str | os.PathLike | None = None, *, overwrite: bool = False) -> Path | None:
        """Write the adapted model; without ``path``, ask with a file dialog (which confirms replacing a file).

        Given a path, an existing file is replaced only with ``overwrite=True``.
        """
        adapted = self.host.adapted
        if adapted is None:
            raise BiglError("there is no adapted model to save; press 'Adapt to this modality' first")
        if path is None:
            suggestion = Path.cwd() / f"model_{adapted.source_sequence}_to_{'_'.join(adapted.sequences)}.safetensors"
            chosen, _ = QFileDialog.getSaveFileName(self, "Save adapted model", str(suggestion),
                                                    "BiGL model bundle (*.safetensors)")
            if not chosen:
                return None
            path, overwrite = ctl.dialog_save_path(chosen)
        saved = save_bundle(adapted, path, overwrite=overwrite)
        remember(MODEL_KEY, saved)
        self.host.update_model_info()
        show_info(f"Saved the adapted model to {saved}")
        return saved
