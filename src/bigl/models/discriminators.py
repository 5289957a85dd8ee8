"""Discriminators for stage 1 (images) and stage 2 (global-to-local alignment).

* :class:`PatchDiscriminator` — PatchGAN (Isola et al. 2017; 70x70 receptive
  field with the default 3 layers). Used on images by the translator (D in
  Eqs. 1–2, trained with the LSGAN loss) and on softmax outputs for
  AdaptSegNet-style output-space alignment (``in_channels = num_classes``).
* :class:`FeatureDiscriminator` — D^Feat of Eqs. 8–9, on the bottleneck
  feature ξ (B, C, h, w); one logit per sample.
* :class:`AttentionDiscriminator` — D^Att of Eqs. 6–7, on an attention matrix
  (A_pos (B, N, N) with N = h*w, or A_cha (B, C, C)) read as a one-channel
  image; one logit per sample.

The alignment discriminators end in global average pooling, so one network
handles every slice size (N changes with the slice, ξ's grid too).
All return raw logits; the losses in :mod:`bigl.losses` apply the sigmoid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from bigl.models.segmenter import _check_int, _check_norm, config_from_dict, norm_layer

__all__ = [
    "AlignmentDiscriminatorConfig",
    "AttentionDiscriminator",
    "FeatureDiscriminator",
    "PatchDiscriminator",
    "PatchDiscriminatorConfig",
]


@dataclass(frozen=True)
class PatchDiscriminatorConfig:
    """Architecture of a PatchGAN discriminator."""

    in_channels: int = 1
    width: int = 32  # first layer's channels; doubles per layer, capped at 8 * width
    n_layers: int = 3  # stride-2 layers; 3 -> 70x70 receptive field
    norm: str = "instance"  # "batch" | "instance" | "none" (AdaptSegNet uses none)

    def __post_init__(self) -> None:
        _check_int(self, "in_channels", 1)
        _check_int(self, "width", 1)
        _check_int(self, "n_layers", 1)
        _check_norm(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatchDiscriminatorConfig:
        """Inverse of ``dataclasses.asdict`` after a JSON round trip (see :func:`config_from_dict`)."""
        return config_from_dict(cls, data)


@dataclass(frozen=True)
class AlignmentDiscriminatorConfig:
    """Architecture of a feature or attention discriminator (Eqs. 6–9).

    ``in_channels`` is C of ξ for :class:`FeatureDiscriminator` and 1 for
    :class:`AttentionDiscriminator` (the matrix is one image).
    """

    in_channels: int
    width: int = 64  # widest layer's channels
    n_layers: int = 3

    def __post_init__(self) -> None:
        _check_int(self, "in_channels", 1)
        _check_int(self, "width", 1)
        _check_int(self, "n_layers", 1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlignmentDiscriminatorConfig:
        """Inverse of ``dataclasses.asdict`` after a JSON round trip (see :func:`config_from_dict`)."""
        return config_from_dict(cls, data)


class PatchDiscriminator(nn.Module):
    """PatchGAN: (B, C_in, H, W) -> patch logits (B, 1, H', W') (H' ≈ H / 2**n_layers - 2).

    4x4 convs, LeakyReLU(0.2): ``n_layers`` stride-2 convs (no norm on the
    first), one stride-1 conv, then a stride-1 conv to one logit per patch.
    """

    def __init__(self, config: PatchDiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        w, norm = config.width, config.norm
        bias = norm == "none"
        layers: list[nn.Module] = [
            nn.Conv2d(config.in_channels, w, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        ch = w
        for n in range(1, config.n_layers + 1):
            out = w * min(2**n, 8)
            stride = 2 if n < config.n_layers else 1
            layers += [
                nn.Conv2d(ch, out, 4, stride=stride, padding=1, bias=bias),
                norm_layer(norm, out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (B, C_in, H, W) -> (B, 1, H', W') patch logits."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected a (B, {self.config.in_channels}, H, W) batch, got shape {tuple(x.shape)}")
        return self.net(x)


class FeatureDiscriminator(nn.Module):
    """D^Feat (Eqs. 8–9): ξ (B, C, h, w) -> domain logit (B, 1), for any h, w.

    ``n_layers`` 3x3 convs with LeakyReLU(0.2), channels ``width * 2**i``; the
    first keeps ξ's grid, the others halve it; then global average pooling and
    a linear layer. No normalisation: the discriminator sees source and target
    batches separately, and batch statistics would leak the domain label.
    """

    def __init__(self, config: AlignmentDiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        ch = config.in_channels
        for i in range(config.n_layers):
            out = config.width * 2**i
            layers += [nn.Conv2d(ch, out, 3, stride=1 if i == 0 else 2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            ch = out
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(ch, 1)

    def forward(self, feature: Tensor) -> Tensor:
        """ξ (B, C, h, w) -> (B, 1) logits."""
        if feature.ndim != 4 or feature.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected a feature of shape (B, {self.config.in_channels}, h, w), got {tuple(feature.shape)}"
            )
        h = self.net(feature)  # (B, C', h', w')
        return self.fc(h.mean(dim=(2, 3)))  # (B, 1)


class AttentionDiscriminator(nn.Module):
    """D^Att (Eqs. 6–7): attention matrix (B, N, N) -> domain logit (B, 1), for any N.

    The matrix is read as a one-channel image (a (B, k, N, N) stack is also
    accepted when ``in_channels = k``) and multiplied by N, so a uniform
    attention row is all ones whatever N is (softmax rows sum to 1, so raw
    entries shrink as 1/N and would vanish for large slices). Then
    ``n_layers`` 3x3 stride-2 convs with LeakyReLU(0.2), global average
    pooling and a linear layer.

    Channels grow towards the *last* layer (``width / 2**(n_layers-1-i)``)
    rather than from the first: A_pos of a 144x176 slice is 396x396 and the
    early layers run at that size, so this keeps every layer's cost equal and
    the whole discriminator a fraction of the segmenter's. 3x3 kernels with
    padding 1 keep it valid down to N = 1.
    """

    def __init__(self, config: AlignmentDiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        ch = config.in_channels
        for i in range(config.n_layers):
            out = max(config.width // 2 ** (config.n_layers - 1 - i), 1)
            layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            ch = out
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(ch, 1)

    def forward(self, attention: Tensor) -> Tensor:
        """A (B, N, M) or (B, in_channels, N, M) -> (B, 1) logits."""
        if attention.ndim == 3 and self.config.in_channels == 1:
            attention = attention.unsqueeze(1)  # (B, 1, N, M)
        if attention.ndim != 4 or attention.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected an attention matrix (B, N, N) or (B, {self.config.in_channels}, N, N), "
                f"got {tuple(attention.shape)}"
            )
        h = self.net(attention * attention.shape[-1])  # (B, width, ~N/2**n_layers, ~M/2**n_layers)
        return self.fc(h.mean(dim=(2, 3)))  # (B, 1)
