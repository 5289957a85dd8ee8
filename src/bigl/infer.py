"""Volume inference: labels, class probabilities and an attention volume, all on the input grid.

The segmenter is 2D; a volume is processed as a batch of axial slices. Only
slices that contain brain are run, each cropped to the brain's in-plane
bounding box (padded to the network stride); everything outside is
background with probability 1. All outputs are `(z, y, x)` arrays aligned
voxel for voxel with the input volume.

Attention volume: for each slice, the position-attention matrix ``A_pos``
(N x N over the N = h*w bottleneck cells) is summarised as the mean attention
each cell *receives* (the column mean of ``A_pos``, scaled by N so that 1 means
"average"), bilinearly upsampled to the slice. :func:`attention_query` returns
one cell's *row* instead: where the network looks when it labels that pixel.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from bigl.bundles import adapted_model_for
from bigl.checkpoint import Bundle
from bigl.checks import warn_about_input
from bigl.distributed import precision
from bigl.errors import BiglError
from bigl.io import Volume
from bigl.metrics import region_volumes
from bigl.models.segmenter import DualAttentionUNet
from bigl.models.translator import Generator
from bigl.preprocess import (PreparedVolume, bounding_box, brain_mask, classes_to_labels, inplane_factor, prepare,
                             resample_inplane, round_up, stack_slices)
from bigl.progress import CancelFn, ProgressFn, Reporter

log = logging.getLogger(__name__)

MIN_LESION_ML = 0.5
"""Default of :func:`remove_small_lesions`: connected whole-tumour components smaller than this are dropped."""


class SequenceMismatchWarning(UserWarning):
    """The input sequence is not one the bundle was trained or adapted on."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a user error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BiglError("--device cuda was requested but PyTorch sees no CUDA GPU here; use --device cpu or auto")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise BiglError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def bundle_inference(bundle: Bundle) -> dict:
    """predict_prepared's arguments for how a bundle segments: its other segmenters, its translator and mode."""
    if bundle.inference == "direct" or bundle.translator_t2s is None:
        return {"members": bundle.members, "translator": None}
    return {"members": bundle.members, "translator": bundle.translator_t2s, "mode": bundle.inference}


@dataclass
class Segmentation:
    labels: np.ndarray          # (z, y, x) uint8 BraTS labels {0,1,2,4}
    probabilities: np.ndarray | None   # (4, z, y, x) float32, class order (0, 1, 2, 4); None if not asked for
    attention: np.ndarray       # (z, y, x) float32, per-slice position-attention summary (0 without attention)
    volumes_ml: dict[str, float]


@dataclass
class _Window:
    """The sub-volume actually run through the network: brain slices, in-plane box padded to the stride."""

    z: np.ndarray               # indices of slices with brain
    y: slice
    x: slice
    pad: tuple[int, int]        # zero rows/cols added at the bottom/right to reach a stride multiple

    @classmethod
    def for_mask(cls, mask: np.ndarray, stride: int, margin: int = 4) -> _Window:
        ys, xs = bounding_box(mask.any(axis=0), margin=margin)
        h, w = ys.stop - ys.start, xs.stop - xs.start
        return cls(np.flatnonzero(mask.any(axis=(1, 2))), ys, xs,
                   (round_up(max(h, 1), stride) - h, round_up(max(w, 1), stride) - w))

    def slices(self, image: np.ndarray, idx: np.ndarray, context: int = 0) -> torch.Tensor:
        """Network input (B, C, H, W) of slices ``idx`` of a (z, y, x) or (z, C, y, x) image, 2.5D with ``context``."""
        crop = stack_slices(image[..., self.y, self.x], idx, context)
        crop = np.pad(crop, ((0, 0), (0, 0), (0, self.pad[0]), (0, self.pad[1])))
        return torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))

    def uncrop(self, t: torch.Tensor) -> np.ndarray:
        h, w = self.y.stop - self.y.start, self.x.stop - self.x.start
        return t[..., :h, :w].float().cpu().contiguous().numpy()


def check_sequence(bundle: Bundle, sequence: str | None) -> None:
    """Warn when segmenting a sequence the bundle was not trained on, naming the fix."""
    if sequence is not None and sequence not in bundle.sequences:
        adapted = adapted_model_for(sequence)
        shipped = f", or load the bundled model adapted to {sequence} ({adapted})" if adapted else ""
        warnings.warn(
            f"this model was trained on {', '.join(bundle.sequences)} but the input is {sequence}; "
            f"expect poor results. Fix: press 'Adapt to this modality' in napari, or run "
            f"`bigl adapt --target-modality {sequence} ...` to adapt the model without labels{shipped}",
            SequenceMismatchWarning, stacklevel=3)


@torch.inference_mode()
def predict_prepared(model: DualAttentionUNet, vol: PreparedVolume, *, device: torch.device,
                     batch_size: int = 16, with_attention: bool = True, translator: Generator | None = None,
                     mode: str = "translate", mirror: bool = False, members: Sequence[DualAttentionUNet] = (),
                     progress: ProgressFn | None = None, cancel: CancelFn | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (K, z, y, x) and attention summary (z, y, x) for a normalised volume.

    With a ``translator`` (G_t→s), ``mode="translate"`` segments G_t→s(x) and
    ``mode="ensemble"`` averages the softmaxes of Φ(x) and Φ(G_t→s(x)); the
    attention summary always comes from the image Φ actually saw first.
    ``mirror``: every softmax is the mean of Φ's on the slice and on its
    left-right mirror image (mirrored back), test-time augmentation as nnU-Net's
    (training mirrors left-right only); twice the network's time. ``members``
    (an ensemble bundle's other segmenters, same config as ``model``): every
    softmax is the mean of ``model``'s and theirs on the same input; the
    attention summary is ``model``'s.

    Φ runs as its :meth:`~DualAttentionUNet.for_inference` copy, channels_last
    on the CPU (with the translator, if any, as it is): the same labels, the
    probabilities within 1e-5, the network 1.6-1.9x faster on a 2-core CPU
    (docs/benchmarks.md, "CPU inference speed").
    """
    cpu = device.type == "cpu"
    nets = [m.eval().for_inference(channels_last=cpu) for m in (model, *members)]
    net = nets[0]

    def layout(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if cpu else t
    if translator is not None:
        translator.to(device).eval()
    K = model.config.num_classes
    probs = np.zeros((K,) + vol.mask.shape, dtype=np.float32)
    probs[0] = 1.0
    attention = np.zeros(vol.mask.shape, dtype=np.float32)
    # the window must suit both networks when a translator runs first
    win = _Window.for_mask(vol.mask, max(model.stride, translator.stride if translator is not None else 1))
    with_attention = with_attention and model.config.attention
    report = Reporter("segment", len(win.z), progress, cancel)
    amp = precision(device)             # bfloat16/float16 autocast on CUDA, float32 elsewhere

    def softmax(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The mean softmax of every segmenter (and mirror) on ``x``, given the first segmenter's logits on it."""
        total = 0.0
        for i, n in enumerate(nets):
            p = torch.softmax((logits if i == 0 else n(layout(x))).float(), dim=1)
            if mirror:
                p = 0.5 * (p + torch.softmax(n(layout(x.flip(-1))).float(), dim=1).flip(-1))
            total = total + p
        return total / len(nets)

    for start in range(0, len(win.z), batch_size):
        report(start)
        idx = win.z[start:start + batch_size]
        x = win.slices(vol.image, idx, model.config.context_slices).to(device, non_blocking=True)
        x_direct = x
        with amp.autocast():
            if translator is not None:
                x = translator(x, (x != 0).float())
            out = net(layout(x), return_extras=with_attention)
            soft = softmax(out.logits if with_attention else out, x)
            if translator is not None and mode == "ensemble":
                soft = 0.5 * (soft + softmax(net(layout(x_direct)), x_direct))
        p = win.uncrop(soft)                                                 # (B, K, h, w)
        m = vol.mask[idx][:, win.y, win.x]
        p = np.where(m[:, None], p, np.eye(K, dtype=np.float32)[0][None, :, None, None])
        probs[:, idx, win.y, win.x] = p.transpose(1, 0, 2, 3)
        if with_attention:
            a = out.position_attention.float()                              # (B, N, N)
            gh, gw = out.feature.shape[-2:]
            received = a.mean(dim=1).mul(a.shape[-1]).reshape(-1, 1, gh, gw)  # (B, 1, gh, gw), 1 = average
            up = F.interpolate(received, size=x.shape[-2:], mode="bilinear", align_corners=False)
            attention[idx, win.y, win.x] = win.uncrop(up)[:, 0] * m
    report(len(win.z))
    return probs, attention


Inputs = Volume | np.ndarray | Mapping[str, Volume | np.ndarray]
"""What :func:`segment_volume` reads: one volume, or the case's sequences by name (needed by multi-sequence models)."""


def model_input(bundle: Bundle, volume: Inputs, spacing: tuple[float, float, float] | None = None
                ) -> tuple[np.ndarray | list[np.ndarray], tuple[float, float, float]]:
    """The raw array(s) a bundle reads, in its sequence order, and their voxel spacing; checked before any work.

    A mapping ``{sequence: volume}`` must hold every sequence of a
    multi-sequence bundle, all on one grid; a single-sequence bundle takes its
    own sequence from it (or the only one given). A plain volume suits a
    single-sequence bundle only.
    """
    needed = tuple(bundle.sequences)
    if isinstance(volume, Mapping):
        if len(needed) == 1 and needed[0] not in volume and len(volume) == 1:
            needed = tuple(volume)          # one other sequence: segment it (check_sequence warns)
        missing = [s for s in needed if s not in volume]
        if missing:
            raise BiglError(f"this model reads {', '.join(bundle.sequences)}, but {', '.join(missing)} "
                            f"{'is' if len(missing) == 1 else 'are'} missing (given: {', '.join(volume) or 'none'}); "
                            "open every sequence it needs, or use a single-sequence model (--modality)")
        items = [volume[s] for s in needed]
        arrays = [v.data if isinstance(v, Volume) else np.asarray(v) for v in items]
        vols = [v for v in items if isinstance(v, Volume)]
        if len({a.shape for a in arrays}) > 1 or any(not np.allclose(v.affine, vols[0].affine, atol=1e-3)
                                                      for v in vols[1:]):
            where = ", ".join(f"{s} {a.shape}" + (f" ({v.path})" if isinstance(v, Volume) and v.path else "")
                              for s, a, v in zip(needed, arrays, items))
            raise BiglError(f"the sequences do not share one voxel grid ({where}); bigl does not register images — "
                            "co-register them to one grid first (e.g. ANTs antsRegistration, FSL flirt or "
                            "SimpleITK), as BraTS data already is")
        if vols:
            spacing = vols[0].spacing
        data: np.ndarray | list[np.ndarray] = arrays if len(arrays) > 1 else arrays[0]
    else:
        if len(needed) > 1:
            raise BiglError(f"this model reads {len(needed)} sequences ({', '.join(needed)}) but got one volume; "
                            "pass the case folder (bigl segment --input CASE_DIR) or use a single-sequence model "
                            "(--modality)")
        if isinstance(volume, Volume):
            data, spacing = volume.data, volume.spacing
        else:
            data = np.asarray(volume)
        arrays = [data]
    for a in arrays:
        if a.ndim != 3:
            raise BiglError(f"expected a 3D (z, y, x) volume, got shape {a.shape}; segment one 3D series at a time")
    return data, spacing or (1.0, 1.0, 1.0)


def segment_volume(bundle: Bundle, volume: Inputs, *, sequence: str | None = None,
                   spacing: tuple[float, float, float] | None = None, device: str | torch.device = "auto",
                   batch_size: int = 16, with_attention: bool = True, with_probabilities: bool = True,
                   min_lesion_ml: float = MIN_LESION_ML, mirror: bool | None = None,
                   progress: ProgressFn | None = None,
                   cancel: CancelFn | None = None) -> Segmentation:
    """Segment one raw (un-normalised) volume, or a case's sequences, with a bundle; outputs lie on the input grid.

    Labels: the argmax of the probabilities, without whole-tumour components
    under ``min_lesion_ml`` (:func:`remove_small_lesions`; probabilities untouched).
    ``with_probabilities=False`` gives the same labels without keeping the
    probabilities (``Segmentation.probabilities`` is then None): faster and
    4 bytes x 4 classes per voxel lighter. ``with_attention=False`` leaves the
    attention volume at 0. ``mirror=True``: the probabilities are the mean
    of the slice's and its left-right mirror image's (:func:`predict_prepared`;
    measured in docs/training.md, "Decoding"); ``mirror=False`` halves the network's time.

    An ensemble bundle's probabilities are the mean of its segmenters'.
    ``mirror=None`` (default): mirror a single segmenter, not an ensemble —
    two networks already average two views at the cost of one mirrored
    network, and mirroring them as well gained nothing (docs/training.md, "Ensembles").

    ``volume`` is a volume, or ``{sequence: volume}`` (see :func:`model_input`;
    a multi-sequence bundle needs every sequence it was trained on).
    ``sequence`` names a single input's MR sequence; a sequence the bundle was
    not trained on still works but raises a :class:`SequenceMismatchWarning`.
    """
    if isinstance(volume, Mapping) and len(volume) == 1 and sequence is None:
        sequence = next(iter(volume))
    check_sequence(bundle, sequence)
    warn_about_input(volume)   # anisotropic, oblique or not skull-stripped: say so, then go on
    data, spacing = model_input(bundle, volume, spacing)
    if mirror is None:
        mirror = len(bundle.segmenters) == 1
    dev = resolve_device(device)
    for net in bundle.segmenters:
        net.to(dev)
    # a 2D network sees structures at the pixel size it was trained at: other in-plane resolutions go there and back
    factor = inplane_factor(spacing, bundle.normalization.get("inplane_spacing_mm"))
    arrays = data if isinstance(data, list) else [data]
    model_data = [resample_inplane(a, factor) for a in arrays] if factor else arrays
    probs, attention = predict_prepared(bundle.segmenter, prepare(model_data if len(arrays) > 1 else model_data[0]),
                                        device=dev, batch_size=batch_size, with_attention=with_attention,
                                        mirror=mirror, **bundle_inference(bundle), progress=progress,
                                        cancel=cancel)
    if factor:
        classes, probs, attention = _back_to_grid(probs, attention if with_attention else None, arrays,
                                                  with_probabilities=with_probabilities)
    else:
        classes = _argmax_classes(torch.from_numpy(probs)).numpy()
    labels = remove_small_lesions(classes_to_labels(classes), spacing, min_lesion_ml)
    return Segmentation(labels, probs if with_probabilities else None, attention, region_volumes(labels, spacing))


def remove_small_lesions(labels: np.ndarray, spacing: tuple[float, float, float], min_ml: float) -> np.ndarray:
    """Labels with every connected whole-tumour component (26-connected) under ``min_ml`` set to background.

    Scattered specks of a few voxels are the typical false positives on a
    healthy brain; gliomas are far larger. ``min_ml`` 0 keeps everything.
    """
    if min_ml <= 0 or not labels.any():
        return labels
    box = bounding_box(labels > 0)          # every component lies inside: label only there
    sub = labels[box]
    comps, n = ndimage.label(sub > 0, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(comps.ravel(), minlength=n + 1) * float(np.prod(spacing)) / 1000.0
    small = sizes < min_ml
    small[0] = False
    out = labels.copy()
    out[box] = np.where(small[comps], 0, sub)
    return out


def uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """Per-voxel normalised entropy of the class probabilities: (K, z, y, x) -> (z, y, x) float32 in [0, 1].

    ``-sum_k p_k log p_k / log K``: 0 where the model is certain (one class has
    probability 1, e.g. outside the brain), 1 where all K classes are equally likely.
    """
    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim < 2 or p.shape[0] < 2:
        raise BiglError(f"uncertainty needs class probabilities (K >= 2, z, y, x), got shape {p.shape}")
    plogp = np.zeros(p.shape[1:], dtype=np.float32)
    for pk in p:                                    # one class at a time: no (K, z, y, x) temporary
        nz = pk > 0
        plogp[nz] -= pk[nz] * np.log(pk[nz])
    return np.clip(plogp / np.float32(np.log(p.shape[0])), 0.0, 1.0)


def _argmax_classes(p: torch.Tensor) -> torch.Tensor:
    """Class index of the largest of ``p[0], ..., p[K-1]``, the first one on ties as argmax: (K, ...) -> (...) uint8.

    K - 1 elementwise passes: ``torch.argmax`` over a short, strided class
    axis ran 10x slower (35 ms against 3.4 ms for 8 slices of 240 x 240).
    """
    best = p[0].clone()
    out = torch.zeros(p.shape[1:], dtype=torch.uint8)
    for k in range(1, p.shape[0]):
        better = p[k] > best
        out.masked_fill_(better, k)
        best = torch.where(better, p[k], best)
    return out


def _back_to_grid(probs: np.ndarray, attention: np.ndarray | None, arrays: list[np.ndarray], *,
                  with_probabilities: bool = True, chunk: int = 8
                  ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Probabilities (K, z, h, w) and attention (z, h, w) interpolated (bilinear) onto the input's (z, y, x) grid.

    Returns the class indices (z, y, x) uint8 (argmax of the interpolated
    probabilities, 0 outside the brain), the interpolated probabilities (None
    unless ``with_probabilities``) and attention (0 where ``attention`` is None).
    A few slices at a time, the argmax taken on the way: the input-grid
    probabilities (16 bytes a voxel) exist only when they are returned, and
    without them only slices where some voxel is not surely background are
    interpolated (elsewhere every class but 0 interpolates to exactly 0).
    """
    K, Z = probs.shape[:2]
    size = arrays[0].shape[1:]
    outside = ~np.logical_or.reduce([brain_mask(x) for x in arrays])
    classes = np.zeros((Z,) + size, np.uint8)
    p_out = np.empty((K, Z) + size, np.float32) if with_probabilities else None
    a_out = np.zeros((Z,) + size, np.float32)
    todo = np.arange(Z) if with_probabilities else np.flatnonzero((probs[0] < 1).any(axis=(1, 2)))

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)

    for start in range(0, len(todo), chunk):
        idx = todo[start:start + chunk]
        p = up(torch.from_numpy(probs[:, idx]).transpose(0, 1))                  # (b, K, y, x)
        classes[idx] = _argmax_classes(p.transpose(0, 1)).numpy()
        if p_out is not None:
            p_out[:, idx] = p.transpose(0, 1).numpy()
    for start in range(0, Z if attention is not None else 0, chunk):
        a_out[start:start + chunk] = up(torch.from_numpy(attention[start:start + chunk])[:, None])[:, 0].numpy()
    classes[outside] = 0
    if p_out is not None:
        p_out[:, outside] = np.eye(K, dtype=np.float32)[0][:, None]
    if attention is not None:
        a_out[outside] = 0
    return classes, p_out, a_out


@torch.inference_mode()
def attention_query(bundle: Bundle, volume: Inputs, z: int, y: int, x: int, *,
                    device: str | torch.device = "auto") -> np.ndarray:
    """Position-attention row of pixel (y, x) on slice z, upsampled to the slice: where Φ looks for that pixel.

    Returns a (y, x) float32 map scaled so that 1 = uniform attention; zero
    outside the brain window or when (y, x) lies outside the brain window.
    """
    model = bundle.segmenter
    data, _ = model_input(bundle, volume)
    vol = prepare(data)
    out_map = np.zeros(vol.mask.shape[1:], dtype=np.float32)
    if not model.config.attention or not (0 <= z < vol.mask.shape[0]):
        return out_map
    win = _Window.for_mask(vol.mask, model.stride)
    if not (win.y.start <= y < win.y.stop and win.x.start <= x < win.x.stop) or not vol.mask[z].any():
        return out_map
    dev = resolve_device(device)
    model.to(dev).eval()
    xin = win.slices(vol.image, np.array([z]), model.config.context_slices).to(dev)
    out = model(xin, return_extras=True)
    gh, gw = out.feature.shape[-2:]
    H, W = xin.shape[-2:]
    cell = ((y - win.y.start) * gh // H) * gw + (x - win.x.start) * gw // W
    row = out.position_attention[0, cell].mul(gh * gw).reshape(1, 1, gh, gw)
    up = F.interpolate(row, size=(H, W), mode="bilinear", align_corners=False)
    out_map[win.y, win.x] = win.uncrop(up)[0, 0] * vol.mask[z, win.y, win.x]
    return out_map
