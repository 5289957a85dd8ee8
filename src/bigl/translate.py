"""Whole-volume image translation with an adapted bundle's G_t→s (x_t→s = G_t→s(x_t), paper Sec. 3.2).

Shows what the adapted segmenter is given when a bundle's inference mode is
``translate``: the target-sequence volume rendered in the look of the source
sequence. Like :mod:`bigl.infer`, the volume is normalised
(:func:`bigl.preprocess.prepare`), only slices with brain are run, each
cropped to the brain's in-plane box padded to the network stride, and the
result is put back on the input grid.
"""

from __future__ import annotations

import numpy as np
import torch

from bigl.checkpoint import Bundle
from bigl.errors import BiglError
from bigl.infer import _Window, resolve_device
from bigl.io import Volume
from bigl.preprocess import prepare
from bigl.progress import CancelFn, ProgressFn, Reporter


@torch.inference_mode()
def translate_volume(bundle: Bundle, volume: Volume | np.ndarray, *, device: str | torch.device = "auto",
                     batch_size: int = 16, progress: ProgressFn | None = None,
                     cancel: CancelFn | None = None) -> np.ndarray:
    """x_t→s = G_t→s(x_t) of a raw target volume: a ``(z, y, x)`` float32 array in normalised intensity.

    Normalised intensity is the z-score inside the brain used everywhere in
    bigl (:data:`bigl.preprocess.NORMALIZATION`); outside the brain it is 0.
    Needs a bundle that carries the translator, i.e. one made by
    ``bigl adapt`` / :func:`bigl.adapt.adapt` with a translating method.
    """
    generator = bundle.translator_t2s
    if generator is None:
        where = f"{bundle.path}: " if bundle.path is not None else ""
        raise BiglError(f"{where}this model bundle has no translator G_t→s (it was not made by adaptation with "
                        "method bigl, translate, cycada or sifa); adapt it first (`bigl adapt` or 'Adapt to this "
                        "modality' in napari)")
    data = volume.data if isinstance(volume, Volume) else np.asarray(volume)
    if data.ndim != 3:
        raise BiglError(f"expected a 3D (z, y, x) volume, got shape {data.shape}; translate one 3D series at a time")
    dev = resolve_device(device)
    generator.to(dev).eval()
    vol = prepare(data)
    out = np.zeros(data.shape, dtype=np.float32)
    # The window must suit both networks: the translator here, the segmenter that reads its output.
    stride = max(bundle.segmenter.stride, generator.config.stride)
    win = _Window.for_mask(vol.mask, stride)
    report = Reporter("translate", len(win.z), progress, cancel)
    for start in range(0, len(win.z), batch_size):
        report(start)
        idx = win.z[start:start + batch_size]
        x = win.slices(vol.image, idx).to(dev)                       # (B, 1, H, W)
        fake = generator(x, (x != 0).float())                         # (B, 1, H, W)
        out[idx, win.y, win.x] = win.uncrop(fake)[:, 0] * vol.mask[idx][:, win.y, win.x]
    report(len(win.z))
    return out
