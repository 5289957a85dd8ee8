"""Augmentation invariants (bigl.data.augment): labels follow geometry exactly, background stays 0."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from bigl.data.augment import AugmentConfig, augment_batch, gin, intensity, lesion_contrast, random_remap, spatial

OFF = AugmentConfig(p_spatial=0, p_elastic=0, p_mirror=0, p_gamma=0, p_gamma_inverted=0, p_brightness=0,
                    p_contrast=0, p_noise=0, p_blur=0, p_low_resolution=0, p_bias=0)


def _batch(b=6, c=2, h=48, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    brain = ((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.4 * w)) ** 2 < 1
    y = torch.zeros(b, h, w, dtype=torch.long)
    y[:, 18:30, 12:22] = 2
    y[:, 21:27, 15:19] = 3
    y[:, 22:25, 16:18] = 1
    x = torch.randn(b, c, h, w, generator=g) * brain + 2.0 * brain
    return x * brain, y * brain


def test_mirror_alone_is_an_exact_flip():
    x, y = _batch()
    xo, yo = spatial(x, y, replace(OFF, p_mirror=1.0))
    assert torch.equal(yo, y.flip(-1))
    torch.testing.assert_close(xo, x.flip(-1))


def test_labels_follow_rotation_scaling_and_elastic_deformation():
    """Image = label map: where bilinear sampling lands inside one label, it must equal the nearest-sampled label."""
    torch.manual_seed(1)
    _, y = _batch()
    x = y[:, None].float().repeat(1, 2, 1, 1)
    cfg = replace(OFF, p_spatial=1.0, p_elastic=1.0, p_mirror=0.5)
    xo, yo = spatial(x, y, cfg)
    assert not torch.equal(yo, y)                          # it did move
    inner = (xo[:, 0] - xo[:, 0].round()).abs() < 1e-3     # not on a label boundary
    assert inner.float().mean() > 0.8
    agree = (xo[:, 0].round().long() == yo)[inner].float().mean()
    assert agree > 0.99, float(agree)
    assert torch.equal(xo[:, 0], xo[:, 1])                  # every channel on the same grid
    assert set(yo.unique().tolist()) <= {0, 1, 2, 3}


def test_spatial_keeps_background_zero_outside_the_moved_brain():
    x, y = _batch()
    xo, yo = spatial(x, y, replace(OFF, p_spatial=1.0, p_elastic=1.0))
    assert (yo[(xo == 0).all(1)] == 0).float().mean() > 0.99   # labels do not leave the brain


@pytest.mark.parametrize("transform", ["intensity", "gin", "remap"])
def test_intensity_transforms_keep_background_and_labels(transform):
    torch.manual_seed(2)
    x, y = _batch()
    all_on = AugmentConfig(p_gamma=1, p_gamma_inverted=0.5, p_brightness=1, p_contrast=1, p_noise=1, p_blur=1,
                           p_low_resolution=1, p_bias=1)
    out = {"intensity": lambda: intensity(x, all_on), "gin": lambda: gin(x), "remap": lambda: random_remap(x)}[transform]()
    bg = (x == 0).all(1, keepdim=True).expand_as(x)
    assert torch.all(out[bg] == 0)
    assert torch.isfinite(out).all() and not torch.allclose(out, x)


def test_contrast_randomisation_changes_contrast_not_shape():
    torch.manual_seed(3)
    x, y = _batch()
    out = gin(x)
    brain = x != 0
    corr = [torch.corrcoef(torch.stack([x[i][brain[i]], out[i][brain[i]]]))[0, 1] for i in range(len(x))]
    assert min(c.abs() for c in corr) < 0.95                  # a new contrast for some samples


def test_lesion_contrast_moves_each_tumour_class_by_its_own_offset_and_nothing_else():
    torch.manual_seed(6)
    x, y = _batch()
    out = lesion_contrast(x, y, p=1.0, shift=1.5)
    diff = out - x
    sd = torch.stack([x[i][x[i] != 0].std() for i in range(len(x))])
    assert torch.all(out[x == 0] == 0)                                  # background stays 0
    far = torch.zeros_like(y, dtype=torch.bool)
    far[:, 36:, :] = True                                               # brain rows well away from the lesion
    assert diff[far[:, None].expand_as(x)].abs().max() < 1e-6
    core = diff[:, :, 20, 14] / sd[:, None]                             # deep inside the edema (class 2)
    assert torch.allclose(core[:, 0], core[:, 1])                       # every channel moves alike
    assert core.abs().max() <= 1.5 + 1e-4 and core.std() > 0.1          # within ±shift, different per sample
    edema, enhancing = diff[:, 0, 20, 14], diff[:, 0, 21, 15]
    assert not torch.allclose(edema, enhancing)                         # the classes move independently
    assert torch.equal(lesion_contrast(x, y, p=0.0, shift=1.5), x)


def test_augment_batch_shapes_and_label_values():
    torch.manual_seed(4)
    x, y = _batch()
    for method in ("none", "gin", "remap"):
        xo, yo = augment_batch(x, y, AugmentConfig(contrast_method=method))
        assert xo.shape == x.shape and yo.shape == y.shape and yo.dtype == torch.long
        assert set(yo.unique().tolist()) <= {0, 1, 2, 3}


@pytest.mark.parametrize("method", ["none", "gin", "remap"])
def test_a_window_without_brain_stays_finite(method):
    """A slice whose brain left the window (or never had any) must not turn into NaN (it did: inf - inf in gamma)."""
    torch.manual_seed(5)
    x, y = _batch()
    x[0], y[0] = 0, 0
    all_on = AugmentConfig(p_spatial=1, p_elastic=1, p_gamma=1, p_gamma_inverted=1, p_brightness=1, p_contrast=1,
                           p_noise=1, p_blur=1, p_low_resolution=1, p_bias=1, contrast_method=method,
                           p_contrast_random=1, p_lesion_contrast=1)
    xo, yo = augment_batch(x, y, all_on)
    assert torch.isfinite(xo).all() and torch.all(xo[0] == 0) and torch.all(yo[0] == 0)
