"""Stage-1 image-to-image generators G_s→t and G_t→s (paper Sec. 3.2, Eq. 1).

A small ResNet generator in the CycleGAN mould, sized for CPU: a 7x7 stem,
``n_down`` stride-2 3x3 convs (channels doubling), ``n_res_blocks`` residual
blocks at the lowest resolution, ``n_down`` upsampling steps and a 7x7 output
conv. Two deliberate differences from CycleGAN:

* The output is *linear* (no tanh): slices are z-scored inside the brain mask,
  not scaled to [-1, 1], and a synthetic x_s→t must live in the same
  normalised intensity space as a real x_t.
* Upsampling is nearest-neighbour resize followed by a 3x3 conv instead of a
  transposed conv, which avoids checkerboard artefacts in the synthetic
  images the segmenter is then trained on.

``forward(x, mask)`` multiplies the output by the brain mask so background
stays background (0 after normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from bigl.models.segmenter import _check_int, _check_norm, config_from_dict, norm_layer

__all__ = ["Generator", "TranslatorConfig"]


@dataclass(frozen=True)
class TranslatorConfig:
    """Architecture of one generator. Stored in model bundles via ``dataclasses.asdict``."""

    channels: int = 1  # input = output channels (one MR sequence)
    width: int = 32  # stem channels; doubles at each downsampling
    n_res_blocks: int = 4
    n_down: int = 2  # H and W must be multiples of 2 ** n_down
    norm: str = "instance"  # "batch" | "instance" | "none"

    def __post_init__(self) -> None:
        _check_int(self, "channels", 1)
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

        layers: list[nn.Module] = _conv_norm_relu(c, w, 7, norm)
        ch = w
        for _ in range(config.n_down):
            layers += _conv_norm_relu(ch, 2 * ch, 3, norm, stride=2)
            ch *= 2
        layers += [ResBlock(ch, norm) for _ in range(config.n_res_blocks)]
        for _ in range(config.n_down):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), *_conv_norm_relu(ch, ch // 2, 3, norm)]
            ch //= 2
        layers.append(nn.Conv2d(ch, c, 7, padding=3, padding_mode="reflect"))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` (B, C, H, W), optional brain ``mask`` (B, 1, H, W) -> (B, C, H, W).

        With a mask the output is multiplied by it, so pixels outside the brain
        are exactly 0 (the background value of normalised slices).
        """
        if x.ndim != 4 or x.shape[1] != self.config.channels:
            raise ValueError(f"expected a (B, {self.config.channels}, H, W) batch, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"slice size {h}x{w} is not a multiple of the generator stride {self.stride}; "
                f"pad with bigl.models.segmenter.pad_to_stride(x, {self.stride}) and crop the output with crop()"
            )
        out = self.net(x)  # (B, C, H, W)
        if mask is not None:
            if mask.ndim != 4 or mask.shape[0] != x.shape[0] or mask.shape[1] != 1 or mask.shape[-2:] != x.shape[-2:]:
                raise ValueError(
                    f"mask shape {tuple(mask.shape)} does not match image shape {tuple(x.shape)}; "
                    "expected (B, 1, H, W)"
                )
            out = out * mask.to(out.dtype)
        return out

