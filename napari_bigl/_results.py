"""Results -> napari layer data, prepared in the worker thread so the GUI thread only adds or updates layers.

Qt-free. napari blocks its event loop for whatever a layer needs that it was
not given: the contrast limits of an image (a min/max over the whole volume),
a copy, a colormap. So every layer tuple here carries its contrast limits and
colormap, and is built next to the computation (:func:`segment_for_display`,
in the worker), from an :class:`ImageRef` snapshot of the image layer taken in
the GUI thread when the button was pressed. What is left for the GUI thread is
napari's own cost of adding a layer (docs/plugin.md, "Responsiveness").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from bigl.checkpoint import Bundle
from bigl.infer import Inputs, Segmentation, segment_volume, uncertainty
from bigl.progress import CancelFn, ProgressFn

from napari_bigl._layers import DEFAULT_PALETTE, LayerDataTuple, label_colormap, labels_layer_data, layer_volume

ROLE_KEY = "bigl_role"              # metadata marking layers the widget made (not offered as inputs)
QUERY_LAYER = "attention query"
ATTENTION_COLORMAP = "inferno"
ATTENTION_OPACITY = 0.6
UNCERTAINTY_COLORMAP = "magma"
UNCERTAINTY_LIMITS = (0.0, 1.0)     # normalised entropy: 0 certain, 1 all classes equally likely


def labels_name(image_name: str) -> str:
    return f"{image_name} BiGL labels"


def attention_name(image_name: str) -> str:
    return f"{image_name} attention"


def translated_name(image_name: str) -> str:
    return f"{image_name} x_t→s"


def uncertainty_name(image_name: str) -> str:
    return f"{image_name} uncertainty"


@dataclass(frozen=True)
class ImageRef:
    """What a result layer needs of its image layer, read once in the GUI thread (workers never touch layers)."""

    layer: Any                       # the napari layer itself: compared by identity, not read in workers
    name: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    metadata: Mapping[str, Any]

    @classmethod
    def of(cls, layer: Any) -> ImageRef:
        return cls(layer, layer.name, tuple(layer.scale), tuple(layer.translate), dict(layer.metadata or {}))


def _placed(layer_data: LayerDataTuple, image: ImageRef, role: str) -> LayerDataTuple:
    """Put a result layer exactly over ``image`` (its scale and translate), tagged with its role."""
    data, kwargs, kind = layer_data
    kwargs = {**kwargs, "scale": image.scale, "translate": image.translate,
              "metadata": {**kwargs.get("metadata", {}), ROLE_KEY: role}}
    return data, kwargs, kind


def labels_layer(image: ImageRef, labels: np.ndarray, palette: str = DEFAULT_PALETTE) -> LayerDataTuple:
    """Coloured labels over ``image``; ``metadata["bigl_volume"]`` keeps the image's file grid for saving."""
    data, kwargs, kind = labels_layer_data(layer_volume(labels, image.metadata, image.scale),
                                           labels_name(image.name))
    return _placed((data, {**kwargs, "colormap": label_colormap(palette)}, kind), image, "labels")


def attention_layer(image: ImageRef, attention: np.ndarray) -> LayerDataTuple:
    """The attention volume as an additive heat map over ``image``."""
    kwargs = {"name": attention_name(image.name), "colormap": ATTENTION_COLORMAP, "blending": "additive",
              "opacity": ATTENTION_OPACITY, "contrast_limits": attention_limits(attention)}
    return _placed((attention, kwargs, "image"), image, "attention")


def uncertainty_layer(image: ImageRef, values: np.ndarray) -> LayerDataTuple:
    """Per-voxel uncertainty (normalised entropy, :func:`bigl.infer.uncertainty`) as an additive heat map."""
    kwargs = {"name": uncertainty_name(image.name), "colormap": UNCERTAINTY_COLORMAP, "blending": "additive",
              "opacity": 0.8, "contrast_limits": UNCERTAINTY_LIMITS}
    return _placed((values, kwargs, "image"), image, "uncertainty")


def translated_layer(image: ImageRef, translated: np.ndarray) -> LayerDataTuple:
    """x_t→s (normalised intensity) in grey over ``image``, windowed by :func:`normalised_limits`.

    Normalised intensity is a z-score inside the brain and 0 outside, i.e. the
    background equals the brain's mean and would show mid-grey: it is shown at
    the window's lower end (black) instead, as in the paper's figures.
    """
    lo, hi = normalised_limits(translated)
    shown = np.where(translated != 0, translated, np.float32(lo)).astype(np.float32, copy=False)
    kwargs = {"name": translated_name(image.name), "colormap": "gray", "contrast_limits": (lo, hi)}
    return _placed((shown, kwargs, "image"), image, "translated")


def normalised_limits(data: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)) -> tuple[float, float]:
    """Display window of a normalised (z-scored, 0 outside the brain) volume: percentiles of the brain voxels.

    A window from the extremes (or one that counts the zero background) lets a
    few outliers of a translator's linear output squash the brain into a band
    of near-white; the 1st-99th percentiles of the brain show its contrast.
    """
    sample = data[::2, ::2, ::2] if data.ndim == 3 else data
    brain = sample[sample != 0]
    if not brain.size:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(brain, percentiles))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def attention_limits(attention: np.ndarray) -> tuple[float, float]:
    """Display window of an attention map: 0 (no attention) to its 99.5th percentile inside the brain.

    Percentiles of a strided subsample of a volume: a few ms, but still computed in the worker.
    """
    sample = attention[::2, ::2, ::2] if attention.ndim == 3 else attention
    values = sample[sample > 0]
    hi = float(np.percentile(values, 99.5)) if values.size else 1.0
    return 0.0, hi if hi > 0 else 1.0


def format_volumes(volumes_ml: Mapping[str, float]) -> str:
    return "   ".join(f"{k} {v:.1f} ml" for k, v in volumes_ml.items())


@dataclass
class Shown:
    """A segmentation ready for the screen: layer tuples in the order they are added, and what later steps reuse."""

    image: ImageRef
    volume: Inputs                    # one Volume, or {sequence: Volume} for a multi-sequence model
    bundle: Bundle
    sequences: tuple[str, ...]        # what was segmented: the image's sequence, or each input of a multi-sequence model
    attention: np.ndarray             # (z, y, x) summary; the attention query starts from it
    uncertainty: np.ndarray           # (z, y, x) normalised entropy
    volumes_ml: dict[str, float]
    layers: list[LayerDataTuple] = field(default_factory=list)


def shown(image: ImageRef, volume: Inputs, bundle: Bundle, sequences: tuple[str, ...], seg: Segmentation, *,
          palette: str, with_uncertainty: bool) -> Shown:
    """Layer tuples of a segmentation (attention, labels, and uncertainty when asked), built off the GUI thread."""
    unc = uncertainty(seg.probabilities)
    layers = [attention_layer(image, seg.attention), labels_layer(image, seg.labels, palette)]
    if with_uncertainty:
        layers.append(uncertainty_layer(image, unc))
    return Shown(image, volume, bundle, tuple(sequences), seg.attention, unc, dict(seg.volumes_ml), layers)


def segment_for_display(bundle: Bundle, volume: Inputs, image: ImageRef, sequences: tuple[str, ...], *, device: str,
                        palette: str, with_uncertainty: bool, progress: ProgressFn | None = None,
                        cancel: CancelFn | None = None) -> Shown:
    """:func:`bigl.infer.segment_volume`, then :func:`shown`: the whole of a Segment press but adding the layers."""
    seg = segment_volume(bundle, volume, device=device, progress=progress, cancel=cancel)
    return shown(image, volume, bundle, sequences, seg, palette=palette, with_uncertainty=with_uncertainty)


class QueryView:
    """The attention layer's data in query mode: the summary, with the queried slice replaced by the query map."""

    def __init__(self, summary: np.ndarray) -> None:
        self.summary = summary
        self.data = summary.copy()
        self._z: int | None = None

    def show(self, z: int, row: np.ndarray) -> np.ndarray:
        if self._z is not None:
            self.data[self._z] = self.summary[self._z]
        self.data[z] = row
        self._z = z
        return self.data
