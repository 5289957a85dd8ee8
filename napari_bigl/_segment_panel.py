"""Segment panel: the Segment button, the region volumes, label colours and legend, uncertainty, 3D view.

Segment -> :func:`napari_bigl._results.segment_for_display` in a worker
(:func:`bigl.infer.segment_volume` plus every layer tuple, contrast limits and
colormaps included), then one layer per event-loop turn: "<image> attention",
"<image> BiGL labels" and, when ticked, "<image> uncertainty".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bigl.checkpoint import Bundle
from napari.layers import Labels
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QLabel, QVBoxLayout, QWidget

from napari_bigl import _controller as ctl
from napari_bigl._jobs import guarded
from napari_bigl._layers import DEFAULT_PALETTE, PALETTES, VOLUME_KEY, label_colormap, legend
from napari_bigl._results import (QUERY_LAYER, ImageRef, Shown, attention_name, format_volumes, labels_name,
                                  segment_for_display, uncertainty_layer, uncertainty_name)
from napari_bigl._ui import button, row

if TYPE_CHECKING:
    from napari_bigl._widget import SegmentWidget


def legend_html(palette: str) -> str:
    """The legend line: a coloured square and the name of each tumour label."""
    def swatch(rgba: tuple[float, ...]) -> str:
        r, g, b = (round(255 * c) for c in rgba[:3])
        return f'<span style="color: rgb({r},{g},{b}); font-size: large;">■</span>'
    return "&nbsp;&nbsp;".join(f"{swatch(rgba)}&nbsp;{name}" for name, rgba in legend(palette))


class SegmentPanel(QWidget):
    def __init__(self, host: SegmentWidget) -> None:
        super().__init__()
        self.host = host
        self._hidden_for_3d: list[Any] = []
        self.segment_button = button("Segment", self.segment, "segment the image with the model")
        self.volumes_label = QLabel("WT –   TC –   ET –")
        self.palette_combo = QComboBox(toolTip="label colours: BraTS (as in the BiGL paper) or colour-blind safe")
        self.palette_combo.addItems(list(PALETTES))
        self.palette_combo.currentTextChanged.connect(self._on_palette)
        self.legend_label = QLabel(legend_html(DEFAULT_PALETTE))
        self.uncertainty_check = QCheckBox("uncertainty layer")
        self.uncertainty_check.setToolTip("per-voxel normalised entropy of the class probabilities: "
                                          "0 = certain, 1 = all classes equally likely")
        self.uncertainty_check.toggled.connect(self._toggle_uncertainty)
        self.view3d_button = button("3D view", lambda: self.show_3d(self.host.viewer.dims.ndisplay == 2),
                                    "show the labels with the image in napari's 3D view (click again for 2D)")
        form = QFormLayout()
        form.addRow("colours", self.palette_combo)
        form.addRow("", self.legend_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.segment_button)
        layout.addWidget(self.volumes_label)
        layout.addLayout(form)
        layout.addWidget(row(self.uncertainty_check, self.view3d_button))

    def set_busy(self, busy: bool) -> None:
        self.segment_button.setEnabled(not busy)

    def palette(self) -> str:
        return self.palette_combo.currentText()

    # ------------------------------------------------------------------ segment
    @guarded("Segment")
    def segment(self) -> None:
        """Segment the selected image with the current model (in a worker thread)."""
        host = self.host
        if host.is_busy():
            return
        layer, volume, sequences = host.inputs()
        image, device = ImageRef.of(layer), host.device()
        palette, with_uncertainty = self.palette(), self.uncertainty_check.isChecked()

        def run(bundle: Bundle) -> None:
            ctl.check_model_inputs(bundle, sequences)
            for message in ctl.sequence_warnings(bundle, sequences[0]) if len(sequences) == 1 else ():
                show_warning(message)                                 # here: a notification every time

            def work(cancel: ctl.CancelFlag) -> Shown:
                return segment_for_display(bundle, volume, image, sequences, device=device, palette=palette,
                                           with_uncertainty=with_uncertainty, progress=host.jobs.progress.emit,
                                           cancel=cancel)

            host.jobs.start("segment", work, self.show)

        host.with_bundle("Segment", run)

    def show(self, shown: Shown) -> Iterator[None]:
        """Put a segmentation on screen, one layer per event-loop turn (napari's cost per layer is fixed)."""
        host = self.host
        if not host.has_layer(shown.image.layer):
            show_warning(f"'{shown.image.name}' was removed while it was being segmented; its results were not "
                         "added. Open the image again and press Segment.")
            return
        for i, layer_data in enumerate(shown.layers):
            if i:
                yield
            if not host.has_layer(shown.image.layer):
                return
            host.put_layer(layer_data)
        if not self.uncertainty_check.isChecked():
            self._remove(uncertainty_name(shown.image.name))    # an older one would no longer match
        host.result = shown
        self.volumes_label.setText(format_volumes(shown.volumes_ml))
        host.attention_panel.result_changed()

    def _remove(self, name: str) -> None:
        layer = self.host.layer(name)
        if layer is not None:
            self.host.viewer.layers.remove(layer)

    @guarded("Uncertainty layer")
    def _toggle_uncertainty(self, on: bool) -> None:
        res = self.host.result
        if res is None or not self.host.has_layer(res.image.layer):
            return              # shown with the next segmentation
        if on:
            self.host.put_layer(uncertainty_layer(res.image, res.uncertainty))
        else:
            self._remove(uncertainty_name(res.image.name))

    # ------------------------------------------------------------------ colours
    def _on_palette(self, palette: str) -> None:
        """Recolour every BraTS labels layer of the plugin (read or segmented) and the legend."""
        self.legend_label.setText(legend_html(palette))
        for layer in self.host.viewer.layers:
            if isinstance(layer, Labels) and VOLUME_KEY in (layer.metadata or {}):
                layer.colormap = label_colormap(palette)

    # ------------------------------------------------------------------ 3D
    @guarded("3D view")
    def show_3d(self, on: bool = True) -> None:
        """Show the segmented image and its labels in napari's 3D view (heat maps hidden meanwhile), or go back."""
        viewer = self.host.viewer
        self.view3d_button.setText("2D view" if on else "3D view")
        if not on:
            for layer in self._hidden_for_3d:
                if self.host.has_layer(layer):
                    layer.visible = True
            self._hidden_for_3d = []
            viewer.dims.ndisplay = 2
            return
        res = self.host.result
        if res is not None and self.host.has_layer(res.image.layer):
            name = res.image.name
            overlays = [self.host.layer(n) for n in (attention_name(name), uncertainty_name(name), QUERY_LAYER)]
            self._hidden_for_3d = [lyr for lyr in overlays if lyr is not None and lyr.visible]
            for layer in self._hidden_for_3d:
                layer.visible = False
            for layer in (res.image.layer, self.host.layer(labels_name(name))):
                if layer is not None:
                    layer.visible = True
        viewer.dims.ndisplay = 3

