"""Attention panel: where the network looks when it labels the voxel under a point.

Tick "query attention at a point": a points layer appears; for the point placed
or moved there, :func:`bigl.infer.attention_query` (in a worker) gives that
voxel's row of the position-attention matrix, shown in the attention layer's
slice. Only the newest point is computed; stale requests are dropped
(:class:`napari_bigl._controller.LatestOnly`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np
from bigl.errors import BiglError
from bigl.infer import attention_query
from napari.layers import Layer
from qtpy.QtWidgets import QCheckBox, QVBoxLayout, QWidget

from napari_bigl import _controller as ctl
from napari_bigl._jobs import guarded, report
from napari_bigl._results import QUERY_LAYER, ROLE_KEY, QueryView, attention_limits, attention_name

if TYPE_CHECKING:
    from napari_bigl._widget import SegmentWidget


class AttentionPanel(QWidget):
    def __init__(self, host: SegmentWidget) -> None:
        super().__init__()
        self.host = host
        self._queries = ctl.LatestOnly()
        self._layer: Layer | None = None                  # the "attention query" points layer
        self._zyx: tuple[int, int, int] | None = None
        self._view: QueryView | None = None
        self.query_check = QCheckBox("query attention at a point")
        self.query_check.setToolTip("click to place a point, drag it: the attention layer shows where the network "
                                    "looks when it labels that voxel")
        self.query_check.toggled.connect(self._toggle)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.query_check)

    def _attention(self) -> Layer | None:
        res = self.host.result
        return None if res is None else self.host.layer(attention_name(res.image.name))

    def layers_changed(self) -> None:
        if self._layer is not None and not self.host.has_layer(self._layer):
            self.query_check.setChecked(False)     # the user deleted the query points: query mode off

    def result_changed(self) -> None:
        """A new segmentation is on screen: query mode, if on, restarts on its attention summary."""
        if self._view is not None:
            self._view, self._zyx = QueryView(self.host.result.attention), None
            self._on_points()

    @guarded("Attention query")
    def _toggle(self, on: bool) -> None:
        res = self.host.result
        if on:
            if self._attention() is None:
                self.query_check.setChecked(False)
                raise BiglError("segment the image first: the attention query needs its attention layer")
            image = res.image
            pts = self.host.viewer.add_points(ndim=3, name=QUERY_LAYER, scale=image.scale, translate=image.translate,
                                              size=3, face_color="cyan", border_color="white",
                                              metadata={ROLE_KEY: "query"})
            pts.mode = "add"
            pts.events.data.connect(self._on_points)       # placed, moved by code, drag released
            pts.events.set_data.connect(self._on_points)   # redrawn while dragged
            self._layer, self._zyx, self._view = pts, None, QueryView(res.attention)
            return
        self._queries.reset()
        pts, self._layer, self._view = self._layer, None, None
        if pts is not None and self.host.has_layer(pts):
            self.host.viewer.layers.remove(pts)
        att = self._attention()
        if att is not None:
            att.data = res.attention
            att.contrast_limits = attention_limits(res.attention)

    @guarded("Attention query")
    def _on_points(self, event: Any = None) -> None:
        pts, res = self._layer, self.host.result
        if pts is None or res is None or len(pts.data) == 0:
            return
        if getattr(event, "action", None) in ("adding", "changing", "removing"):
            return  # sent before the change
        indices = getattr(event, "data_indices", None) or tuple(sorted(pts.selected_data)) or (-1,)
        zyx = ctl.point_voxel(pts, indices[-1], res.image.layer, res.attention.shape)
        if zyx is None or zyx == self._zyx:
            return  # outside the volume, or a redraw without a move
        self._zyx = zyx
        request = self._queries.submit(zyx)
        if request is not None:
            self._start(request)

    def _start(self, request: ctl.QueryRequest) -> None:
        res = self.host.result
        self.host.jobs.run(query_map, res.bundle, res.volume, request.zyx, device=self.host.device(), connect={
            "returned": functools.partial(self._returned, request),
            "errored": functools.partial(report, action="Attention query"),
            "finished": self._finished})

    def _returned(self, request: ctl.QueryRequest, result: tuple[np.ndarray, tuple[float, float]]) -> None:
        att, view = self._attention(), self._view
        if att is None or view is None or not self._queries.is_latest(request):
            return  # query mode is off, or a newer point is waiting
        row, limits = result
        att.data = view.show(request.zyx[0], row)
        att.contrast_limits = limits

    def _finished(self) -> None:
        request = self._queries.done()
        if request is not None:
            self._start(request)


def query_map(bundle: Any, volume: Any, zyx: tuple[int, int, int], *, device: str
              ) -> tuple[np.ndarray, tuple[float, float]]:
    """Worker side of a query: the attention row of voxel ``zyx`` and its display window."""
    row = attention_query(bundle, volume, *zyx, device=device)
    return row, attention_limits(row)
