"""Segmenter Φ: a 2D U-Net with a DANet dual-attention block (:mod:`bigl.models.attention`) at the bottleneck.

Paper Sec. 3.3, Eq. 3. The encoder maps an axial slice ``x`` to the feature
ξ_B; the dual-attention block turns it into ξ and the attention matrices
A_pos (position, ``(h*w) x (h*w)``) and A_cha (channel, ``C x C``); the decoder
turns ξ (plus the encoder skips) into per-pixel logits over the 4 classes
whose indices ``0..3`` stand for the BraTS labels ``(0, 1, 2, 4)``.

Everything BiGL aligns between domains (Eqs. 5–9) comes out of one forward
pass: ``model(x, return_extras=True)`` gives a :class:`SegmenterOutput` with
``logits``, ``feature`` (ξ), ``position_attention`` and ``channel_attention``.

Input height and width must be multiples of ``model.stride``; callers pad with
:func:`pad_to_stride` and undo it with :func:`crop`. Zero padding is added at
the bottom and right only, so a pixel keeps its ``(y, x)`` coordinates and
:func:`attention_row` maps it to its row of A_pos.

This module also holds the small building blocks shared with the translator
and the discriminators (:func:`config_from_dict`, :func:`norm_layer`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from bigl.errors import BiglError
from bigl.models.attention import DualAttention

__all__ = [
    "HEADS",
    "NORMS",
    "DualAttention",
    "DualAttentionUNet",
    "InstanceNormNHWC",
    "SegmenterConfig",
    "SegmenterOutput",
    "attention_grid",
    "attention_row",
    "config_from_dict",
    "crop",
    "norm_layer",
    "pad_to_stride",
    "region_log_probs",
]

NORMS = ("batch", "instance", "none")
HEADS = ("classes", "regions")

_C = TypeVar("_C")


# --------------------------------------------------------------------------- configs


def _tuple_fields(cls: type) -> set[str]:
    """Names of the fields of dataclass ``cls`` annotated as ``tuple[...]``."""
    hints = typing.get_type_hints(cls)
    names = set()
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if typing.get_origin(hint) is tuple:
            names.add(f.name)
        elif typing.get_origin(hint) in (typing.Union, types.UnionType) and any(
            typing.get_origin(a) is tuple for a in typing.get_args(hint)
        ):
            names.add(f.name)
    return names


def config_from_dict(cls: type[_C], data: dict[str, Any]) -> _C:
    """Rebuild config dataclass ``cls`` from ``dataclasses.asdict`` output read back from JSON.

    JSON has no tuples, so lists are turned back into tuples for tuple-typed
    fields. Keys the config does not know raise :class:`BiglError` instead of
    being dropped: a bundle written by a different architecture must not load
    as a silently different model. Missing keys take the field defaults.
    """
    if not isinstance(data, dict):
        raise BiglError(f"{cls.__name__}: expected a mapping of field names to values, got {type(data).__name__}.")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BiglError(
            f"{cls.__name__}: unknown field(s) {unknown}; known fields are {sorted(known)}. "
            "The model bundle was written by an incompatible version of bigl — retrain or "
            "re-export it with this version."
        )
    tuples = _tuple_fields(cls)
    kwargs = {k: (tuple(v) if k in tuples and isinstance(v, list) else v) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # e.g. a required field missing
        raise BiglError(f"{cls.__name__}: cannot build from {data!r}: {exc}.") from exc


def _check(cond: bool, cls: str, msg: str) -> None:
    if not cond:
        raise BiglError(f"{cls}: {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_int(config: Any, field: str, minimum: int) -> None:
    """Raise BiglError unless ``config.<field>`` is an int >= ``minimum``."""
    value = getattr(config, field)
    ok = _is_int(value) and value >= minimum
    _check(ok, type(config).__name__, f"{field} must be an int >= {minimum}, got {value!r}.")


def _check_norm(config: Any) -> None:
    _check(config.norm in NORMS, type(config).__name__, f"norm must be one of {NORMS}, got {config.norm!r}.")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """Normalisation layer by name: ``"batch"``, ``"instance"`` (affine) or ``"none"``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise BiglError(f"unknown norm {kind!r}; choose one of {NORMS}.")


@dataclass(frozen=True)
class SegmenterConfig:
    """Architecture of Φ. Stored in model bundles via ``dataclasses.asdict``."""

    in_channels: int = 1
    num_classes: int = 4  # class i <-> BraTS label (0, 1, 2, 4)[i]
    widths: tuple[int, ...] = (16, 32, 64, 128)  # len-1 = number of 2x downsamplings
    norm: str = "instance"  # "batch" | "instance" | "none" (instance measured better, docs/training.md)
    attention: bool = True  # False -> the same class is a plain U-Net
    attention_reduction: int = 8  # query/key channels = C // reduction (min 1)
    dropout: float = 0.0  # Dropout2d on ξ_B (end of the encoder), as in the original U-Net
    context_slices: int = 0  # 2.5D input: neighbouring slices on each side; in_channels = sequences x (2c + 1)
    # "classes": K logits, one softmax; "regions": nested sigmoids of the scored regions WT, TC within WT and ET
    # within TC, returned as the four classes' log-probabilities (:func:`region_log_probs`; BraTS classes only)
    head: str = "classes"

    def __post_init__(self) -> None:
        name = type(self).__name__
        if isinstance(self.widths, list):
            object.__setattr__(self, "widths", tuple(self.widths))
        _check_int(self, "in_channels", 1)
        _check_int(self, "num_classes", 2)
        _check(
            isinstance(self.widths, tuple)
            and len(self.widths) >= 1
            and all(_is_int(w) and w >= 1 for w in self.widths),
            name,
            f"widths must be a non-empty tuple of positive ints, got {self.widths!r}.",
        )
        _check_norm(self)
        _check(isinstance(self.attention, bool), name, f"attention must be a bool, got {self.attention!r}.")
        _check_int(self, "attention_reduction", 1)
        _check_int(self, "context_slices", 0)
        _check(self.head in HEADS, name, f"head must be one of {HEADS}, got {self.head!r}.")
        _check(self.head != "regions" or self.num_classes == 4, name,
               f"head 'regions' needs the four BraTS classes, got num_classes={self.num_classes}.")
        _check(
            isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool) and 0.0 <= self.dropout < 1.0,
            name,
            f"dropout must be a float in [0, 1), got {self.dropout!r}.",
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmenterConfig:
        """Inverse of ``dataclasses.asdict`` after a JSON round trip (see :func:`config_from_dict`)."""
        return config_from_dict(cls, data)

    @property
    def head_channels(self) -> int:
        """Channels of the 1x1 head: one per class, or one per nested region (WT, TC, ET)."""
        return self.num_classes - 1 if self.head == "regions" else self.num_classes

    @property
    def stride(self) -> int:
        """Total downsampling factor, ``2 ** (len(widths) - 1)``."""
        return 2 ** (len(self.widths) - 1)


def region_log_probs(z: Tensor) -> Tensor:
    """Region logits (B, 3, H, W) -> log-probabilities of the classes (background, necrosis, edema, enhancing).

    p(WT) = σ(z0), p(TC | WT) = σ(z1), p(ET | TC) = σ(z2) (the regions of ``bigl.losses.REGION_CLASSES``);
    the classes are the nested regions' differences (edema = WT not TC, necrosis = TC not ET). The four sum
    to 1, so a softmax of the result gives them back and everything that reads Φ's logits through a
    softmax, an argmax or a cross-entropy works unchanged; the cross-entropy becomes the sum of the
    regions' binary cross-entropies, each within its parent region.
    """
    pos, neg = F.logsigmoid(z), F.logsigmoid(-z)
    wt, tc = pos[:, 0], pos[:, 0] + pos[:, 1]
    return torch.stack([neg[:, 0], tc + neg[:, 2], wt + neg[:, 1], tc + pos[:, 2]], dim=1)


@dataclass
class SegmenterOutput:
    """Everything one forward pass of Φ gives BiGL (Sec. 3.3–3.4)."""

    logits: Tensor  # (B, K, H, W)
    feature: Tensor  # ξ: bottleneck feature after the attention block (B, C, h, w)
    position_attention: Tensor | None  # A_pos (B, h*w, h*w), rows sum to 1 (None if attention off)
    channel_attention: Tensor | None  # A_cha (B, C, C), rows sum to 1
    decoder: tuple[Tensor, ...] = ()  # each decoder level's output, coarse to fine (B, widths[l], H / 2**l, W / 2**l)


# --------------------------------------------------------------------------- padding


def pad_to_stride(x: Tensor, stride: int) -> tuple[Tensor, tuple[int, int]]:
    """Zero-pad the last two axes of ``x`` up to multiples of ``stride``.

    Padding goes at the bottom and right only, so pixel ``(y, x)`` of the input
    is pixel ``(y, x)`` of the result. Returns ``(padded, (pad_h, pad_w))``;
    :func:`crop` undoes it. Zero is background in brain-masked, z-scored slices.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    h, w = x.shape[-2:]
    pad_h = (-h) % stride
    pad_w = (-w) % stride
    if pad_h == 0 and pad_w == 0:
        return x, (0, 0)
    return F.pad(x, (0, pad_w, 0, pad_h)), (pad_h, pad_w)


def crop(x: Tensor, pads: tuple[int, int]) -> Tensor:
    """Remove the bottom/right padding added by :func:`pad_to_stride` (works on any ``(..., H, W)``)."""
    pad_h, pad_w = pads
    h, w = x.shape[-2:]
    return x[..., : h - pad_h, : w - pad_w]


def attention_grid(height: int, width: int, stride: int) -> tuple[int, int]:
    """Bottleneck grid ``(h, w)`` of an ``height x width`` slice after :func:`pad_to_stride`.

    A_pos has ``h * w`` rows and columns, in row-major order over this grid.
    """
    return math.ceil(height / stride), math.ceil(width / stride)


def attention_row(y: int, x: int, width: int, stride: int) -> int:
    """Row (and column) of A_pos that belongs to slice pixel ``(y, x)``.

    ``width`` is the slice width before padding; reshape that row to
    :func:`attention_grid` to see where the pixel's bottleneck cell attends.
    """
    grid_w = math.ceil(width / stride)
    return (y // stride) * grid_w + (x // stride)


# --------------------------------------------------------------------------- blocks


class DoubleConv(nn.Sequential):
    """Two (3x3 conv -> norm -> LeakyReLU) layers; conv bias only when there is no norm."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        bias = norm == "none"  # a norm layer's shift makes a conv bias redundant
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            norm_layer(norm, out_channels),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            norm_layer(norm, out_channels),
            nn.LeakyReLU(0.01, inplace=True),
        )


class InstanceNormNHWC(nn.Module):
    """``nn.InstanceNorm2d`` (no running statistics) for inference on channels_last input, which it keeps.

    ``F.instance_norm`` returns a channels_last input as NCHW, so the next conv
    converts it back (a copy per layer, a fifth of the network's CPU time);
    ``F.group_norm`` with one channel per group keeps the layout, but its
    channels_last kernel takes the variance as E[x²] - E[x]², which lost up to
    2e-3 where a channel's mean dwarfs its spread (background). Here: the
    mean, then the mean square of the centred values (as precise as
    instance_norm, within 5e-6), then one fused scale-and-shift.
    """

    def __init__(self, norm: nn.InstanceNorm2d) -> None:
        super().__init__()
        c = norm.num_features
        self.eps = norm.eps
        self.register_buffer("weight", (norm.weight if norm.affine else torch.ones(c)).detach().clone()[:, None, None])
        self.register_buffer("bias", (norm.bias if norm.affine else torch.zeros(c)).detach().clone()[:, None, None])

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        centred = x - mean
        var = (centred * centred).mean(dim=(2, 3), keepdim=True)
        return torch.addcmul(self.bias, centred, self.weight * torch.rsqrt(var + self.eps))


# --------------------------------------------------------------------------- network


class DualAttentionUNet(nn.Module):
    """Φ: U-Net encoder -> dual attention on ξ_B -> U-Net decoder -> 1x1 head.

    Encoder level ``l`` is a :class:`DoubleConv` to ``widths[l]`` channels,
    preceded (for l > 0) by 2x2 max pooling. Decoder level ``l`` upsamples by a
    2x2 stride-2 transposed conv to ``widths[l]`` channels, concatenates the
    encoder skip of level ``l`` and applies a :class:`DoubleConv`. With
    ``config.attention = False`` the block is absent and Φ is a plain U-Net.
    """

    def __init__(self, config: SegmenterConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        self.stride: int = config.stride

        self.encoders = nn.ModuleList()
        prev = config.in_channels
        for width in widths:
            self.encoders.append(DoubleConv(prev, width, config.norm))
            prev = width
        self.dropout = nn.Dropout2d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.attention = DualAttention(widths[-1], config.attention_reduction) if config.attention else None

        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(len(widths) - 1)):
            self.ups.append(nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2))
            self.decoders.append(DoubleConv(2 * widths[level], widths[level], config.norm))
        self.head = nn.Conv2d(widths[0], config.head_channels, 1)

    def to_logits(self, raw: Tensor) -> Tensor:
        """A head's output -> class logits (region heads: the classes' log-probabilities)."""
        return region_log_probs(raw) if self.config.head == "regions" else raw

    def attention_grid(self, height: int, width: int) -> tuple[int, int]:
        """Bottleneck grid of a ``height x width`` slice after padding (see :func:`attention_grid`)."""
        return attention_grid(height, width, self.stride)

    def for_inference(self, *, channels_last: bool = False) -> DualAttentionUNet:
        """An eval-mode copy for inference, same outputs as ``self.eval()`` up to float rounding; ``self`` unchanged.

        * BatchNorm is folded into the conv before it (y = γ (Wx - μ) / σ + β
          is one conv with weights γW/σ and bias β - γμ/σ): 14 passes over
          the activations fewer.
        * ``channels_last``: weights NHWC, so that oneDNN runs the convs on
          channels_last input without reordering; InstanceNorm becomes
          :class:`InstanceNormNHWC`, which keeps that layout.

        Not for training: the copy no longer updates running statistics.
        """
        net = copy.deepcopy(self).eval()
        for block in net.modules():
            if not isinstance(block, DoubleConv):
                continue
            for i in range(1, len(block)):
                layer = block[i]
                if isinstance(layer, nn.BatchNorm2d) and isinstance(block[i - 1], nn.Conv2d):
                    block[i - 1], block[i] = fuse_conv_bn_eval(block[i - 1], layer), nn.Identity()
                elif channels_last and isinstance(layer, nn.InstanceNorm2d) and not layer.track_running_stats:
                    block[i] = InstanceNormNHWC(layer)
        return net.to(memory_format=torch.channels_last) if channels_last else net

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected {self.config.in_channels} input channel(s), got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"slice size {h}x{w} is not a multiple of the network stride {self.stride}; "
                f"pad with bigl.models.segmenter.pad_to_stride(x, {self.stride}) and crop the output with crop()"
            )

    def forward(self, x: Tensor, return_extras: bool = False) -> Tensor | SegmenterOutput:
        """``x`` (B, C_in, H, W) -> logits (B, K, H, W), or a :class:`SegmenterOutput` if ``return_extras``."""
        self._check_input(x)
        skips = []
        h = x
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                h = F.max_pool2d(h, 2)  # (B, widths[level-1], H / 2**level, W / 2**level)
            h = encoder(h)  # (B, widths[level], H / 2**level, W / 2**level)
            skips.append(h)
        xi = self.dropout(skips.pop())  # ξ_B (B, C, h, w)
        a_pos = a_cha = None
        if self.attention is not None:
            xi, a_pos, a_cha = self.attention(xi)  # ξ (B, C, h, w), (B, hw, hw), (B, C, C)

        h = xi
        levels = []
        for up, decoder in zip(self.ups, self.decoders):
            h = up(h)  # (B, widths[l], 2h, 2w)
            h = decoder(torch.cat([h, skips.pop()], dim=1))  # (B, widths[l], 2h, 2w)
            levels.append(h)
        logits = self.to_logits(self.head(h))  # (B, K, H, W)
        if not return_extras:
            return logits
        return SegmenterOutput(logits=logits, feature=xi, position_attention=a_pos, channel_attention=a_cha,
                               decoder=tuple(levels))
