"""Stage-1 image-to-image generators G_s→t and G_t→s (paper Sec. 3.2, Eq. 1).

A ResNet generator in the CycleGAN mould: a ``kernel`` x ``kernel`` stem,
``n_down`` stride-2 3x3 convs (channels doubling), ``n_res_blocks`` residual
blocks at the lowest resolution, ``n_down`` upsampling steps and a
``kernel`` x ``kernel`` output conv. The defaults here are CycleGAN's shape
(7x7, two downsamplings); bigl's adaptation uses the *local* configuration
``n_down=0, kernel=3, n_res_blocks=1`` (a 9-pixel receptive field), see
:class:`bigl.adapt.TranslatorTrainConfig`. Two deliberate differences from CycleGAN:

* The output is *linear* (no tanh): slices are z-scored inside the brain mask,
  not scaled to [-1, 1], and a synthetic x_s→t must live in the same
  normalised intensity space as a real x_t.
* Upsampling is nearest-neighbour resize followed by a 3x3 conv instead of a
  transposed conv, which avoids checkerboard artefacts in the synthetic
  images the segmenter is then trained on.

``forward(x, mask)`` multiplies the output by the brain mask so background
stays background (0 after normalisation).

``cond_channels > 0`` makes a *label-conditioned* generator: ``forward(x, mask,
cond)`` also reads a (B, cond_channels, H, W) map of tumour-class
probabilities, concatenated to the image at the input. bigl's G_s→t uses it
with the source label map, so it renders the tumour in the target sequence's
contrast instead of having to find it first (docs/adaptation.md, stage 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bigl.models.segmenter import _check, _check_int, _check_norm, config_from_dict, norm_layer

__all__ = ["Generator", "TranslatorConfig"]


@dataclass(frozen=True)
class TranslatorConfig:
    """Architecture of one generator. Stored in model bundles via ``dataclasses.asdict``."""

    channels: int = 1  # input = output channels (one MR sequence)
    width: int = 32  # stem channels; doubles at each downsampling
    n_res_blocks: int = 4
    n_down: int = 2  # H and W must be multiples of 2 ** n_down
    norm: str = "instance"  # "batch" | "instance" | "none"
    cond_channels: int = 0  # extra input channels: tumour-class probabilities the output is conditioned on
    kernel: int = 7         # stem and output conv size (odd); with n_down=0 a small kernel makes a *local* generator

    def __post_init__(self) -> None:
        _check_int(self, "channels", 1)
        _check_int(self, "cond_channels", 0)
        _check_int(self, "kernel", 1)
        _check(self.kernel % 2 == 1, type(self).__name__, f"kernel must be odd, got {self.kernel}.")
        _check_int(self, "width", 1)
        _check_int(self, "n_res_blocks", 0)
        _check_int(self, "n_down", 0)
        _check_norm(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TranslatorConfig:
        """Inverse of ``dataclasses.asdict`` after a JSON round trip (see :func:`config_from_dict`)."""
        return config_from_dict(cls, data)

    @property
    def stride(self) -> int:
        return 2**self.n_down


def _conv_norm_relu(in_ch: int, out_ch: int, kernel: int, norm: str, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(
            in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, padding_mode="reflect", bias=norm == "none"
        ),
        norm_layer(norm, out_ch),
        nn.ReLU(inplace=True),
    ]


class ResBlock(nn.Module):
    """x + (conv-norm-ReLU-conv-norm)(x), reflection-padded 3x3 convs."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect", bias=bias),
            norm_layer(norm, channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect", bias=bias),
            norm_layer(norm, channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    """G: x (B, C, H, W) -> synthetic image in the other sequence (B, C, H, W), linear output."""

    def __init__(self, config: TranslatorConfig) -> None:
        super().__init__()
        self.config = config
        self.stride: int = config.stride
        c, w, norm = config.channels, config.width, config.norm

        layers: list[nn.Module] = _conv_norm_relu(c + config.cond_channels, w, config.kernel, norm)
        ch = w
        for _ in range(config.n_down):
            layers += _conv_norm_relu(ch, 2 * ch, 3, norm, stride=2)
            ch *= 2
        layers += [ResBlock(ch, norm) for _ in range(config.n_res_blocks)]
        for _ in range(config.n_down):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), *_conv_norm_relu(ch, ch // 2, 3, norm)]
            ch //= 2
        layers.append(nn.Conv2d(ch, c, config.kernel, padding=config.kernel // 2, padding_mode="reflect"))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, mask: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        """``x`` (B, C, H, W), optional brain ``mask`` (B, 1, H, W) -> (B, C, H, W).

        With a mask the output is multiplied by it, so pixels outside the brain
        are exactly 0 (the background value of normalised slices). A
        label-conditioned generator (``cond_channels > 0``) needs ``cond``
        (B, cond_channels, H, W); an unconditioned one refuses it.
        """
        if x.ndim != 4 or x.shape[1] != self.config.channels:
            raise ValueError(f"expected a (B, {self.config.channels}, H, W) batch, got shape {tuple(x.shape)}")
        k = self.config.cond_channels
        if k and (cond is None or cond.shape != (x.shape[0], k, *x.shape[-2:])):
            got = "none" if cond is None else tuple(cond.shape)
            raise ValueError(f"this generator is label-conditioned: expected cond of shape "
                             f"{(x.shape[0], k, *x.shape[-2:])}, got {got}")
        if not k and cond is not None:
            raise ValueError("this generator is not label-conditioned (cond_channels=0) but got a cond map")
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"slice size {h}x{w} is not a multiple of the generator stride {self.stride}; "
                f"pad with bigl.models.segmenter.pad_to_stride(x, {self.stride}) and crop the output with crop()"
            )
        out = self.net(torch.cat([x, cond.to(x.dtype)], 1) if k else x)  # (B, C, H, W)
        if mask is not None:
            if mask.ndim != 4 or mask.shape[0] != x.shape[0] or mask.shape[1] != 1 or mask.shape[-2:] != x.shape[-2:]:
                raise ValueError(
                    f"mask shape {tuple(mask.shape)} does not match image shape {tuple(x.shape)}; "
                    "expected (B, 1, H, W)"
                )
            out = out * mask.to(out.dtype)
        return out

