"""Result layers made ahead of time, so that results only update layers that already exist.

Adding any layer costs napari a fixed 50-100 ms in the GUI thread whatever its
size (the layer's Qt controls, its vispy visual and, for labels, the brush and
polygon overlays: docs/plugin.md, "Responsiveness"); updating a layer's data in
place costs a fraction of it. So when an image is chosen in the widget, its
result layers are added at once, **hidden and empty**, one per event-loop turn:
"<image> attention" and "<image> BiGL labels", and "<image> x_t→s" when the
model does not read the image's sequence (Adapt is then what the user will
press). Segment, the adaptation's previews and its end then fill them in place
and show them. Empty placeholders of an image that is no longer chosen are
removed. A placeholder is marked by ``metadata["bigl_placeholder"]``; filling it
(:meth:`napari_bigl._widget.SegmentWidget.put_layer`) drops the mark.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Layer
from qtpy.QtCore import QTimer

from napari_bigl._layers import DEFAULT_PALETTE, LayerDataTuple
from napari_bigl._results import ImageRef, attention_layer, labels_layer, translated_layer

if TYPE_CHECKING:
    from napari_bigl._widget import SegmentWidget

PLACEHOLDER_KEY = "bigl_placeholder"
DELAY_MS = 150          # after the image is chosen: flicking through the list makes nothing


def is_placeholder(layer: Any) -> bool:
    return bool((getattr(layer, "metadata", None) or {}).get(PLACEHOLDER_KEY))


def placeholders(image: ImageRef, shape: tuple[int, ...], *, translated: bool,
                 palette: str = DEFAULT_PALETTE) -> list[tuple[LayerDataTuple, bool]]:
    """``[(layer tuple, above the image), ...]``: hidden, all-zero result layers of ``image``.

    Zeros cost no memory until written (``np.zeros`` maps untouched pages) and
    nothing is computed over them: the image layers' settings come from a
    one-voxel stand-in, so making a placeholder in the GUI thread costs only napari's part.
    """
    voxel = np.zeros((1, 1, 1), np.float32)
    made = [(attention_layer(image, voxel), False), (labels_layer(image, np.zeros(shape, np.uint8), palette), False)]
    if translated:
        made.append((translated_layer(image, voxel), True))
    out = []
    for (data, kwargs, kind), above in made:
        data = data if kind == "labels" else np.zeros(shape, np.float32)
        kwargs = {**kwargs, "visible": False, "metadata": {**kwargs["metadata"], PLACEHOLDER_KEY: True}}
        out.append(((data, kwargs, kind), above))
    return out


class AheadLayers:
    """Makes the chosen image's result layers ahead of time (see module doc), one per event-loop turn."""

    def __init__(self, host: SegmentWidget) -> None:
        self.host = host
        self.queue: deque[tuple[Any, LayerDataTuple, bool]] = deque()
        # timers owned by the widget: they die with it, never firing on a closed dock
        self.timer = QTimer(host, singleShot=True, interval=DELAY_MS)
        self.timer.timeout.connect(self._plan)
        self.step_timer = QTimer(host, singleShot=True, interval=1)
        self.step_timer.timeout.connect(self._step)

    def image_chosen(self) -> None:
        """(Re)plan after the image, the model or the layers changed; the work starts after a short delay."""
        self.timer.start()

    def pending(self) -> bool:
        return self.timer.isActive() or bool(self.queue)

    def _plan(self) -> None:
        host = self.host
        layer = host.image_layer()
        self.queue.clear()
        stale = [lyr for lyr in host.viewer.layers if is_placeholder(lyr)
                 and (layer is None or lyr.metadata.get("bigl_image") != layer.name)]
        for old in stale:
            self.queue.append((None, old, False))
        if layer is not None and getattr(layer.data, "ndim", 0) == 3 and not getattr(layer, "multiscale", False):
            image = ImageRef.of(layer)
            for data, above in placeholders(image, tuple(layer.data.shape), translated=host.adapt_plausible(),
                                            palette=host.segment_panel.palette()):
                data[1]["metadata"]["bigl_image"] = layer.name
                if host.layer(data[1]["name"]) is None:
                    self.queue.append((layer, data, above))
        if self.queue:
            self.step_timer.start(0)

    def _step(self) -> None:
        """Add (or remove) one layer, then yield the event loop."""
        if not self.queue:
            return
        image, item, above = self.queue.popleft()
        host = self.host
        if image is None:
            if host.has_layer(item) and is_placeholder(item):
                host.viewer.layers.remove(item)
        elif host.has_layer(image) and host.layer(item[1]["name"]) is None:
            new = Layer.create(*item)
            layers = host.viewer.layers
            active = layers.selection.active
            layers.insert(layers.index(image) + 1 if above else len(layers), new)
            if active is not None and active in layers:
                layers.selection.active = active         # a hidden placeholder never takes the user's selection
        if self.queue:
            self.step_timer.start(1)
