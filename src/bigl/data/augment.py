"""On-the-fly augmentation of training batches (nnU-Net kind) and contrast randomisation (GIN family).

Everything works on a batch ``x`` (B, C, H, W) of normalised slices (0 outside
the brain) with class targets ``y`` (B, H, W) int64, in torch, so one call
transforms the whole batch on the training device.

Invariants (tested): labels follow every geometric transform exactly (the same
sampling grid, nearest neighbour); intensity transforms leave the background
at exactly 0 and never move a label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AugmentConfig", "augment_batch", "gin", "lesion_contrast", "random_remap", "spatial", "intensity"]

CONTRAST_METHODS = ("none", "gin", "remap")


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (per sample) and ranges of every transform; ``contrast`` picks the contrast randomisation."""

    p_spatial: float = 0.5
    rotation_deg: float = 30.0
    scale: tuple[float, float] = (0.75, 1.3)
    p_elastic: float = 0.3
    elastic_mm: float = 6.0            # max displacement in pixels of the coarse elastic field
    p_mirror: float = 0.5              # left-right
    p_gamma: float = 0.3
    p_gamma_inverted: float = 0.1
    gamma: tuple[float, float] = (0.7, 1.5)
    p_brightness: float = 0.3
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.3
    contrast: tuple[float, float] = (0.75, 1.25)
    p_noise: float = 0.2
    noise_sd: float = 0.15
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.2)
    p_low_resolution: float = 0.2
    low_resolution: tuple[float, float] = (1.0, 2.0)
    p_bias: float = 0.3
    bias: float = 0.4                  # max log-amplitude of a smooth multiplicative field
    contrast_method: str = "none"      # "gin" | "remap" | "none": contrast randomisation (--augment contrast)
    p_contrast_random: float = 0.6
    # Lesion contrast (--lesion-contrast P): each tumour class of a sample moved by its own random offset of up to
    # ±lesion_shift brain SDs (soft-edged), so the network cannot rely on one sequence's lesion brightness.
    p_lesion_contrast: float = 0.0
    lesion_shift: float = 1.5


def _per_sample(p: float, b: int, device) -> Tensor:
    return torch.rand(b, device=device) < p


def _uniform(lo: float, hi: float, shape, device) -> Tensor:
    return torch.empty(shape, device=device).uniform_(lo, hi)


def spatial(x: Tensor, y: Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Rotation, scaling, elastic deformation and left-right mirroring; one sampling grid for image and labels."""
    b, _, h, w = x.shape
    dev = x.device
    on = _per_sample(cfg.p_spatial, b, dev)
    ang = torch.where(on, _uniform(-1, 1, b, dev) * math.radians(cfg.rotation_deg), torch.zeros(b, device=dev))
    lo, hi = math.log(cfg.scale[0]), math.log(cfg.scale[1])
    sc = torch.where(on, _uniform(lo, hi, b, dev).exp(), torch.ones(b, device=dev))
    flip = torch.where(_per_sample(cfg.p_mirror, b, dev), -1.0, 1.0)
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    # normalised coordinates; keep the aspect ratio so a rotation is a rotation in pixels
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin * h / w
    theta[:, 1, 0] = sin * w / h * flip
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, (b, 1, h, w), align_corners=False)
    el = _per_sample(cfg.p_elastic, b, dev) & on
    if el.any():
        coarse = torch.randn(b, 2, max(h // 16, 2), max(w // 16, 2), device=dev)
        disp = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
        amp = _uniform(0, cfg.elastic_mm, b, dev) * el
        disp = disp / disp.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6) * amp[:, None, None, None]
        grid = grid + disp.permute(0, 2, 3, 1) * torch.tensor([2.0 / w, 2.0 / h], device=dev)
    xo = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = F.grid_sample(_brain(x), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    yo = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return xo * mask, yo[:, 0].round().long()


def _brain(x: Tensor) -> Tensor:
    """(B, 1, H, W) float mask of the brain: pixels non-zero in any channel."""
    return (x != 0).any(1, keepdim=True).float()


def _brain_stats(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per (sample, channel) mean, sd, min and max inside the mask; shapes (B, C, 1, 1)."""
    n = mask.sum(dim=(2, 3), keepdim=True).clamp_min(1)
    mean = (x * mask).sum(dim=(2, 3), keepdim=True) / n
    var = (((x - mean) * mask) ** 2).sum(dim=(2, 3), keepdim=True) / n
    big = torch.finfo(x.dtype).max
    lo = torch.where(mask > 0, x, torch.full_like(x, big)).amin(dim=(2, 3), keepdim=True)
    hi = torch.where(mask > 0, x, torch.full_like(x, -big)).amax(dim=(2, 3), keepdim=True)
    empty = mask.sum(dim=(2, 3), keepdim=True) == 0     # no brain in the window (e.g. moved out by a rotation)
    lo, hi = torch.where(empty, 0.0, lo), torch.where(empty, 0.0, hi)   # not ±max: (hi - lo) would be inf -> NaN
    return mean, var.sqrt(), lo, hi


def _blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Per-sample Gaussian blur (separable, depthwise)."""
    b, c, h, w = x.shape
    r = int(math.ceil(3 * float(sigma.max())))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None].clamp_min(1e-3)) ** 2)
    k = k / k.sum(1, keepdim=True)                                      # (B, K)
    k = k.repeat_interleave(c, 0)                                       # (B*C, K)
    z = x.reshape(1, b * c, h, w)
    z = F.conv2d(F.pad(z, (r, r, 0, 0), mode="replicate"), k[:, None, None, :], groups=b * c)
    z = F.conv2d(F.pad(z, (0, 0, r, r), mode="replicate"), k[:, None, :, None], groups=b * c)
    return z.reshape(b, c, h, w)


def intensity(x: Tensor, cfg: AugmentConfig) -> Tensor:
    """Gamma (also inverted), brightness, contrast, noise, blur, low resolution and bias field, inside the brain."""
    b, c, h, w = x.shape
    dev = x.device
    mask = _brain(x)
    sel = lambda p: _per_sample(p, b, dev)[:, None, None, None]  # noqa: E731

    # gamma on the brain's [min, max] range, statistics restored afterwards (nnU-Net's rule)
    g_on, g_inv = sel(cfg.p_gamma), sel(cfg.p_gamma_inverted)
    if (g_on | g_inv).any():
        mean, sd, lo, hi = _brain_stats(x, mask)
        u = ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
        u = torch.where(g_inv, 1 - u, u)
        lg = math.log(cfg.gamma[0]), math.log(cfg.gamma[1])
        gam = _uniform(*lg, (b, 1, 1, 1), dev).exp()
        u = u ** gam
        u = torch.where(g_inv, 1 - u, u)
        z = u * (hi - lo) + lo
        m2, s2, _, _ = _brain_stats(z, mask)
        z = (z - m2) / s2.clamp_min(1e-6) * sd + mean
        x = torch.where(g_on | g_inv, z, x)
    x = torch.where(sel(cfg.p_brightness), x * _uniform(*cfg.brightness, (b, 1, 1, 1), dev), x)
    if cfg.p_contrast:
        mean = _brain_stats(x, mask)[0]
        f = _uniform(*cfg.contrast, (b, 1, 1, 1), dev)
        x = torch.where(sel(cfg.p_contrast), (x - mean) * f + mean, x)
    x = torch.where(sel(cfg.p_noise), x + torch.randn_like(x) * _uniform(0, cfg.noise_sd, (b, 1, 1, 1), dev), x)
    blur_on = sel(cfg.p_blur)
    if blur_on.any():
        x = torch.where(blur_on, _blur(x, _uniform(*cfg.blur_sigma, (b,), dev)), x)
    lr_on = sel(cfg.p_low_resolution)
    if lr_on.any():
        f = float(_uniform(*cfg.low_resolution, (1,), dev))
        small = F.interpolate(x, scale_factor=1 / f, mode="nearest")
        x = torch.where(lr_on, F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False), x)
    bias_on = sel(cfg.p_bias)
    if bias_on.any():
        coarse = torch.randn(b, 1, 3, 3, device=dev)
        field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
        amp = _uniform(0, cfg.bias, (b, 1, 1, 1), dev)
        x = torch.where(bias_on, x * torch.exp(amp * field / field.abs().amax((2, 3), keepdim=True).clamp_min(1e-6)),
                        x)
    return x * mask


def _zscore(x: Tensor, mask: Tensor) -> Tensor:
    mean, sd, _, _ = _brain_stats(x, mask)
    return (x - mean) / sd.clamp_min(1e-6) * mask


def gin(x: Tensor, layers: int = 4, width: int = 8) -> Tensor:
    """Global intensity non-linear augmentation (GIN, Ouyang et al. 2021): a random shallow conv net per sample.

    Each sample goes through its own freshly drawn net (kernel 1 or 3, leaky
    ReLU), the output is z-scored inside the brain and blended with the input by
    a random α, so shapes stay and intensities (contrast) are re-drawn.
    """
    b, c, h, w = x.shape
    mask = _brain(x)
    z = x.reshape(1, b * c, h, w)
    ch_in = 1
    for i in range(layers):
        ch_out = 1 if i == layers - 1 else width
        k = 1 if torch.rand(()) < 0.5 else 3
        wts = torch.randn(b * c * ch_out, ch_in, k, k, device=x.device) / math.sqrt(ch_in * k * k)
        z = F.conv2d(z, wts, padding=k // 2, groups=b * c)
        if i < layers - 1:
            z = F.leaky_relu(z, 0.2)
        ch_in = ch_out
    z = _zscore(z.reshape(b, c, h, w), mask)
    alpha = torch.rand(b, 1, 1, 1, device=x.device)
    return _zscore(alpha * z + (1 - alpha) * x, mask)


def random_remap(x: Tensor, knots: int = 6) -> Tensor:
    """Random smooth (not necessarily monotone) intensity curve per sample and channel, applied inside the brain."""
    b, c, h, w = x.shape
    mask = _brain(x)
    _, _, lo, hi = _brain_stats(x, mask)
    u = ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)                 # (B, C, H, W) in [0, 1]
    ys = torch.rand(b * c, 1, 1, knots, device=x.device)                   # curve values at the knots
    grid = torch.stack([u.reshape(b * c, 1, h * w) * 2 - 1, torch.zeros(b * c, 1, h * w, device=x.device)], -1)
    z = F.grid_sample(ys, grid, mode="bilinear", align_corners=True).reshape(b, c, h, w)
    return _zscore(z + 0.02 * torch.randn_like(z), mask)


def lesion_contrast(x: Tensor, y: Tensor, p: float, shift: float) -> Tensor:
    """Each tumour class (1–3) of a chosen sample (probability ``p``) brightened or darkened by its own offset.

    The offset is uniform in ±``shift`` brain SDs of the sample and blended in through the class mask blurred
    by about a pixel (no sharp edge to learn); every channel moves alike (the 2.5D neighbours share the centre
    slice's labels). Labels and the background (0) are unchanged. What it is for: a translated image renders
    normal tissue well before it renders the lesion the way the source sequence shows it (docs/training.md,
    "Lesion contrast").
    """
    b = x.shape[0]
    on = _per_sample(p, b, x.device)
    if not on.any():
        return x
    mask = _brain(x)
    _, sd, _, _ = _brain_stats(x, mask)
    sd = sd.mean(1, keepdim=True)                                               # (B, 1, 1, 1)
    onehot = torch.stack([(y == k) for k in (1, 2, 3)], 1).float()              # (B, 3, H, W)
    soft = _blur(onehot, torch.full((b,), 0.8, device=x.device))
    offset = _uniform(-shift, shift, (b, 3, 1, 1), x.device) * on[:, None, None, None]
    return (x + (soft * offset).sum(1, keepdim=True) * sd) * mask


def augment_batch(x: Tensor, y: Tensor, cfg: AugmentConfig) -> tuple[Tensor, Tensor]:
    """Spatial, then lesion contrast and contrast randomisation (if configured), then intensity transforms, for a
    (B, C, H, W) batch."""
    x, y = spatial(x, y, cfg)
    if cfg.p_lesion_contrast > 0:
        x = lesion_contrast(x, y, cfg.p_lesion_contrast, cfg.lesion_shift)
    if cfg.contrast_method != "none":
        on = _per_sample(cfg.p_contrast_random, x.shape[0], x.device)[:, None, None, None]
        rand = gin(x) if cfg.contrast_method == "gin" else random_remap(x)
        x = torch.where(on, rand, x)
    return intensity(x, cfg), y
