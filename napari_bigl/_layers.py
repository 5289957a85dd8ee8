"""`bigl.io.Volume` <-> napari layers: the one place the plugin turns volumes into layers.

Every layer the plugin makes (reader, sample data, widget) carries the same
metadata, so any later step can find the file grid a layer lives on:

``metadata["bigl_volume"]``
    The :class:`bigl.io.Volume` the layer was made from. Its ``data`` *is* the
    layer's array (the same object, never a copy), so storing it costs no memory;
    its ``affine``/``header``/``path`` describe the original file, which is what
    :func:`bigl.io.write_like` needs to write a result back on that exact grid.
``metadata["sequence"]``
    The sequence key (``"t1"``, ``"t1ce"``, ``"t2"``, ``"flair"``) of an image
    layer, or None when unknown; absent on labels layers.
``metadata["source_path"]``
    The file the layer was read from, as a string, or None (generated data).

Arrays are the ``(z, y, x)`` RAS+ arrays of :mod:`bigl.io`; ``scale`` is the
voxel spacing in mm, so napari's world coordinates are millimetres and
sequences, labels and results overlay exactly.

Labels use fixed BraTS colours by default, the ones of the BiGL paper's
figures: edema (ED, 2) green, necrotic/non-enhancing core (NCR/NET, 1) yellow,
enhancing tumour (ET, 4) red. Red and green are what colour-blind readers
confuse most, so :data:`PALETTES` also offers a colour-blind-safe set from the
Okabe-Ito palette (edema blue, core yellow, enhancing vermillion: they differ
in lightness as well as hue). Any other value (e.g. a brush set to 3) is drawn
magenta so a stray label is never invisible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from bigl.io import LABEL_VALUES, Volume, volume_from_array
from napari.utils.colormaps import DirectLabelColormap

VOLUME_KEY = "bigl_volume"
SEQUENCE_KEY = "sequence"
SOURCE_KEY = "source_path"

LayerDataTuple = tuple[np.ndarray, dict[str, Any], str]

# RGBA per BraTS label value; None = any value not listed.
LABEL_COLORS: dict[int | None, tuple[float, float, float, float]] = {
    None: (1.0, 0.0, 1.0, 1.0),  # unexpected label: magenta, never hidden
    0: (0.0, 0.0, 0.0, 0.0),  # background: transparent
    1: (1.0, 0.9, 0.0, 1.0),  # NCR/NET: yellow
    2: (0.0, 0.8, 0.0, 1.0),  # edema: green
    4: (1.0, 0.0, 0.0, 1.0),  # enhancing tumour: red
}
LABEL_NAMES: dict[int, str] = {0: "background", 1: "NCR/NET", 2: "edema", 4: "enhancing tumour"}
LABELS_OPACITY = 0.6  # anatomy stays readable under the overlay
DEFAULT_PALETTE = "BraTS"
PALETTES: dict[str, dict[int | None, tuple[float, float, float, float]]] = {
    DEFAULT_PALETTE: LABEL_COLORS,
    "colour-blind safe": {
        **LABEL_COLORS,
        1: (0xF0 / 255, 0xE4 / 255, 0x42 / 255, 1.0),  # NCR/NET: Okabe-Ito yellow
        2: (0x00 / 255, 0x72 / 255, 0xB2 / 255, 1.0),  # edema: Okabe-Ito blue
        4: (0xD5 / 255, 0x5E / 255, 0x00 / 255, 1.0),  # enhancing tumour: Okabe-Ito vermillion
    },
}


def label_colormap(palette: str = DEFAULT_PALETTE) -> DirectLabelColormap:
    """A palette's label colours as a napari colormap (a fresh object per layer)."""
    return DirectLabelColormap(color_dict=dict(PALETTES[palette]))


def legend(palette: str = DEFAULT_PALETTE) -> list[tuple[str, tuple[float, float, float, float]]]:
    """``[(name, rgba), ...]`` of the tumour labels in a palette, in BraTS order (NCR/NET, edema, ET)."""
    return [(LABEL_NAMES[v], PALETTES[palette][v]) for v in (1, 2, 4)]


def _label_features() -> dict[str, list]:
    # napari looks rows up by the "index" column; the status bar then names the
    # label under the cursor ("edema") instead of showing a bare number.
    return {"index": list(LABEL_VALUES), "name": [LABEL_NAMES[v] for v in LABEL_VALUES]}


def contrast_limits(data: np.ndarray) -> tuple[float, float]:
    """Display window for an MR volume: 0.5-99.5th percentiles of the non-zero voxels.

    A few very bright voxels (vessels, fat, ET) would otherwise squash brain
    tissue into the dark end of the grey scale. Percentiles of a strided
    subsample keep this cheap on a 240x240x155 volume.
    """
    sample = np.asarray(data[::2, ::2, ::2], dtype=np.float32).ravel()
    foreground = sample[sample != 0]
    values = foreground if foreground.size else sample
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    lo = min(lo, 0.0) if float(sample.min()) >= 0 else lo  # keep background black
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def _metadata(volume: Volume, source: Any, **extra: Any) -> dict[str, Any]:
    if source is None and volume.path is not None:
        source = volume.path
    return {VOLUME_KEY: volume, SOURCE_KEY: None if source is None else str(source), **extra}


def image_layer_data(volume: Volume, name: str, sequence: str | None, *,
                     visible: bool = True, source: Any = None) -> LayerDataTuple:
    """``(data, kwargs, "image")`` for an MR volume; ``data`` is ``volume.data`` itself."""
    kwargs = {
        "name": name,
        "scale": tuple(float(s) for s in volume.spacing),
        "metadata": _metadata(volume, source, **{SEQUENCE_KEY: sequence}),
        "colormap": "gray",
        "contrast_limits": contrast_limits(volume.data),
        "visible": visible,
    }
    return volume.data, kwargs, "image"


def labels_layer_data(volume: Volume, name: str, *, visible: bool = True,
                      source: Any = None) -> LayerDataTuple:
    """``(data, kwargs, "labels")`` for a BraTS segmentation with the fixed colours."""
    kwargs = {
        "name": name,
        "scale": tuple(float(s) for s in volume.spacing),
        "metadata": _metadata(volume, source),
        "colormap": label_colormap(),
        "features": _label_features(),
        "opacity": LABELS_OPACITY,
        "visible": visible,
    }
    return volume.data, kwargs, "labels"


def reference_volume(metadata: Mapping[str, Any] | None) -> Volume | None:
    """The Volume whose file grid a layer lives on, or None (a layer made elsewhere)."""
    if not metadata:
        return None
    volume = metadata.get(VOLUME_KEY)
    return volume if isinstance(volume, Volume) else None


def layer_volume(data: Any, metadata: Mapping[str, Any] | None,
                 scale: Any = (1.0, 1.0, 1.0)) -> Volume:
    """A Volume holding ``data`` (a layer's current array) on the layer's file grid.

    Uses the grid of ``metadata["bigl_volume"]`` when it matches ``data``'s
    shape, so results written from it land on the original file; otherwise an
    in-memory grid with ``scale`` as spacing (:func:`bigl.io.volume_from_array`).
    """
    data = np.asarray(data)
    ref = reference_volume(metadata)
    if ref is not None and tuple(ref.data.shape) == data.shape:
        return dataclasses.replace(ref, data=data)
    spacing = tuple(abs(float(s)) for s in np.asarray(scale, dtype=float)[-data.ndim:])
    return volume_from_array(data, spacing)
