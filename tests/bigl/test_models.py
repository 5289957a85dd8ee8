"""Segmenter Φ, translator and discriminators: shapes, invariants, configs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bigl.errors import BiglError
from bigl.models import (
    AlignmentDiscriminatorConfig,
    AttentionDiscriminator,
    DualAttention,
    DualAttentionUNet,
    FeatureDiscriminator,
    Generator,
    PatchDiscriminator,
    PatchDiscriminatorConfig,
    SegmenterConfig,
    SegmenterOutput,
    TranslatorConfig,
    attention_grid,
    attention_row,
    crop,
    pad_to_stride,
)
from bigl.models.attention import decay_groups

torch.set_num_threads(1)

TINY = SegmenterConfig(widths=(4, 8, 16), attention_reduction=4)  # stride 4

# Pinned so that an accidental architecture change fails loudly; update only on purpose
# (old model bundles will no longer load into a changed architecture).
DEFAULT_PARAMS = 503_142
DEFAULT_ATTENTION_PARAMS = 2 * (128 * 16 + 16) + (128 * 128 + 128) + 2  # W_q, W_k, W_v, γ_p, γ_c


def _seed() -> None:
    torch.manual_seed(0)


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --------------------------------------------------------------------------- segmenter


@pytest.mark.parametrize("size", [(16, 16), (24, 40), (8, 12)])
def test_segmenter_output_shapes(size: tuple[int, int]) -> None:
    _seed()
    model = DualAttentionUNet(TINY).eval()
    h, w = size
    x = torch.randn(2, 1, h, w)
    assert model(x).shape == (2, 4, h, w)
    out = model(x, return_extras=True)
    assert isinstance(out, SegmenterOutput)
    gh, gw = h // 4, w // 4
    assert out.logits.shape == (2, 4, h, w)
    assert out.feature.shape == (2, 16, gh, gw)
    assert out.position_attention.shape == (2, gh * gw, gh * gw)
    assert out.channel_attention.shape == (2, 16, 16)


def test_default_segmenter_param_count_and_forward() -> None:
    _seed()
    model = DualAttentionUNet(SegmenterConfig())
    assert model.stride == 8
    assert _n_params(model) == DEFAULT_PARAMS
    plain = DualAttentionUNet(SegmenterConfig(attention=False))
    assert _n_params(plain) == DEFAULT_PARAMS - DEFAULT_ATTENTION_PARAMS
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 1, 24, 32), return_extras=True)
    assert out.logits.shape == (1, 4, 24, 32)
    assert out.position_attention.shape == (1, 12, 12)


@pytest.mark.parametrize("shape", [(1, 1, 18, 16), (1, 1, 16, 30), (1, 2, 16, 16), (1, 16, 16)])
def test_segmenter_rejects_bad_input(shape: tuple[int, ...]) -> None:
    model = DualAttentionUNet(TINY)
    with pytest.raises(ValueError, match="stride|channel|batch"):
        model(torch.randn(*shape))


def test_pad_crop_round_trip_odd_size() -> None:
    _seed()
    x = torch.randn(2, 1, 37, 53)
    padded, pads = pad_to_stride(x, 8)
    assert padded.shape == (2, 1, 40, 56) and pads == (3, 3)
    assert torch.equal(padded[..., :37, :53], x)  # coordinates unchanged
    assert padded[..., 37:, :].abs().sum() == 0 and padded[..., :, 53:].abs().sum() == 0
    assert torch.equal(crop(padded, pads), x)
    same, no_pads = pad_to_stride(torch.randn(1, 1, 16, 24), 8)
    assert no_pads == (0, 0) and same.shape == (1, 1, 16, 24)

    model = DualAttentionUNet(SegmenterConfig(widths=(4, 8, 16, 32))).eval()
    with torch.no_grad():
        logits = crop(model(padded), pads)
    assert logits.shape == (2, 4, 37, 53)


def test_attention_grid_and_row() -> None:
    assert attention_grid(37, 53, 8) == (5, 7)
    assert DualAttentionUNet(TINY).attention_grid(37, 53) == (10, 14)
    # pixel (17, 30): bottleneck cell (2, 3) on a 7-wide grid -> row 2 * 7 + 3
    assert attention_row(17, 30, 53, 8) == 17
    assert attention_row(0, 0, 53, 8) == 0
    assert attention_row(36, 52, 53, 8) == 5 * 7 - 1


def test_attention_rows_sum_to_one() -> None:
    _seed()
    model = DualAttentionUNet(TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 16, 24), return_extras=True)
    for a in (out.position_attention, out.channel_attention):
        assert (a >= 0).all()
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:2]))


def test_attention_block_is_identity_at_gamma_zero() -> None:
    _seed()
    block = DualAttention(16, reduction=8)
    xi_b = torch.randn(2, 16, 3, 5)
    xi, a_pos, a_cha = block(xi_b)
    assert torch.equal(xi, xi_b)
    assert a_pos.shape == (2, 15, 15) and a_cha.shape == (2, 16, 16)
    with torch.no_grad():
        block.gamma_pos.fill_(0.5)
        block.gamma_cha.fill_(0.5)
    assert not torch.allclose(block(xi_b)[0], xi_b)


def test_attention_block_tiny_channels() -> None:
    block = DualAttention(3, reduction=8)  # C // r = 0 -> 1 query/key channel
    assert block.query.out_channels == 1
    assert block(torch.randn(1, 3, 2, 2))[0].shape == (1, 3, 2, 2)


def test_plain_unet_has_no_attention() -> None:
    model = DualAttentionUNet(dataclasses.replace(TINY, attention=False)).eval()
    assert model.attention is None
    assert not any("attention" in n or "gamma" in n for n, _ in model.named_parameters())
    out = model(torch.randn(1, 1, 8, 8), return_extras=True)
    assert out.position_attention is None and out.channel_attention is None
    assert out.feature.shape == (1, 16, 2, 2)


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_eval_determinism(norm: str) -> None:
    _seed()
    model = DualAttentionUNet(dataclasses.replace(TINY, norm=norm, dropout=0.3)).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_inference_copy_gives_the_eval_outputs(norm: str, channels_last: bool) -> None:
    _seed()
    model = DualAttentionUNet(dataclasses.replace(TINY, norm=norm))
    with torch.no_grad():           # statistics away from (0, 1) and γ != 0, so that folding has something to do
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
        model.attention.gamma_pos.fill_(0.7), model.attention.gamma_cha.fill_(-0.3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = model.for_inference(channels_last=channels_last)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched
    assert not fast.training and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    if norm == "instance":      # replaced by the layout-keeping version on channels_last only
        assert channels_last != any(isinstance(m, torch.nn.InstanceNorm2d) for m in fast.modules())
    x = torch.randn(3, 1, 16, 24)
    with torch.no_grad():
        ref = model.eval()(x, return_extras=True)
        out = fast(x.contiguous(memory_format=torch.channels_last) if channels_last else x, return_extras=True)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.position_attention, ref.position_attention, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(out.feature, ref.feature, atol=1e-5, rtol=1e-4)


def test_nhwc_instance_norm_is_instance_norm_and_keeps_the_layout() -> None:
    from bigl.models.segmenter import InstanceNormNHWC

    _seed()
    norm = torch.nn.InstanceNorm2d(6, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.5, 0.5)
    x = 0.5 * torch.randn(3, 6, 40, 32) + 5.0
    x[:, :, 20:] = 5.0                      # mean far above the spread, as on background: E[x²] - E[x]² would lose it
    ref = norm.double()(x.double()).float()
    out = InstanceNormNHWC(norm.float())(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


def test_gradient_reaches_gamma() -> None:
    _seed()
    model = DualAttentionUNet(TINY)
    out = model(torch.randn(2, 1, 16, 16), return_extras=True)
    target = torch.randint(0, 4, (2, 16, 16))
    torch.nn.functional.cross_entropy(out.logits, target).backward()
    for gamma in (model.attention.gamma_pos, model.attention.gamma_cha):
        assert gamma.grad is not None and gamma.grad.abs().item() > 0
    query_grad = model.attention.query.weight.grad  # γ_p = 0 gates the position branch at init
    assert query_grad is None or query_grad.abs().sum() == 0


def _attention_norms_after_training(groups_of, steps: int = 150) -> tuple[float, float]:
    """|W_q| + |W_k| + |W_v| of TINY's attention block before and after ``steps`` Adam steps (lr 2e-3, as
    ``TrainConfig``) on a fixed batch, with γ_p held at 0 (where the bundled models' γ_p had gone);
    ``groups_of(model)`` gives the optimiser's parameter groups."""
    _seed()
    model = DualAttentionUNet(TINY)
    att = model.attention
    att.gamma_pos.requires_grad_(False)

    def norm() -> float:
        return sum(float(m.weight.detach().norm()) for m in (att.query, att.key, att.value))

    before = norm()
    opt = torch.optim.Adam(groups_of(model), lr=2e-3)
    x = torch.randn(4, 1, 32, 32)
    target = (x[:, 0] > 0.5).long()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), target).backward()
        opt.step()
    return before, norm()


def test_weight_decay_spares_the_gated_attention_branch() -> None:
    """While γ_p = 0, Adam's L2 decay is the whole gradient of W_q, W_k, W_v and Adam normalises it, so it
    shrinks them by about the learning rate per step: the position attention dies (uniform A_pos, found in
    the bundled models). decay_groups keeps the decay off the attention block and on everything else."""
    before, plain = _attention_norms_after_training(
        lambda m: [{"params": list(m.parameters()), "weight_decay": 1e-5}])      # what train and adapt had
    assert plain < 0.2 * before                                   # the failure this guards against
    _, kept = _attention_norms_after_training(lambda m: decay_groups(m, 1e-5))
    assert kept == pytest.approx(before, rel=1e-6)
    groups = decay_groups(DualAttentionUNet(TINY), 1e-5)
    assert [g["weight_decay"] for g in groups] == [1e-5, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(DualAttentionUNet(TINY).parameters()))
    assert len(groups[1]["params"]) == len(list(DualAttention(16, 4).parameters()))
    plain_unet = DualAttentionUNet(dataclasses.replace(TINY, attention=False))
    assert [g["weight_decay"] for g in decay_groups(plain_unet, 1e-5)] == [1e-5]


def test_segmenter_config_round_trip_and_errors() -> None:
    cfg = SegmenterConfig(widths=(8, 16), norm="instance", dropout=0.1)
    back = SegmenterConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert back == cfg and isinstance(back.widths, tuple)
    assert SegmenterConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg  # lists coerced too
    with pytest.raises(BiglError, match="unknown field"):
        SegmenterConfig.from_dict({**dataclasses.asdict(cfg), "depth": 5})
    with pytest.raises(BiglError, match="norm"):
        SegmenterConfig(norm="group")
    with pytest.raises(BiglError, match="widths"):
        SegmenterConfig(widths=())


def test_region_head_gives_the_classes_of_nested_regions() -> None:
    from bigl.models.segmenter import region_log_probs

    _seed()
    z = torch.randn(2, 3, 5, 4) * 3
    p = region_log_probs(z).exp()                       # (background, necrosis, edema, enhancing)
    s = torch.sigmoid(z)
    assert torch.allclose(p.sum(1), torch.ones(2, 5, 4), atol=1e-6)
    assert torch.allclose(1 - p[:, 0], s[:, 0], atol=1e-6)                        # WT
    assert torch.allclose(p[:, 1] + p[:, 3], s[:, 0] * s[:, 1], atol=1e-6)        # TC
    assert torch.allclose(p[:, 3], s[:, 0] * s[:, 1] * s[:, 2], atol=1e-6)        # ET
    # the same regions as the loss's region Dice reads from the classes (bigl.losses.REGION_CLASSES)
    from bigl.losses import REGION_CLASSES
    for r, classes in enumerate(REGION_CLASSES):
        assert torch.allclose(p[:, list(classes)].sum(1), s[:, :r + 1].prod(1), atol=1e-6)
    # a softmax reads them back, and the cross-entropy of a necrosis voxel is its nested regions' BCEs
    assert torch.allclose(torch.softmax(region_log_probs(z), 1), p, atol=1e-6)
    target = torch.ones(2, 5, 4, dtype=torch.long)
    bce = -(torch.log(s[:, 0]) + torch.log(s[:, 1]) + torch.log(1 - s[:, 2])).mean()
    assert torch.nn.functional.cross_entropy(region_log_probs(z), target).item() == pytest.approx(bce.item(), rel=1e-5)

    net = DualAttentionUNet(dataclasses.replace(TINY, head="regions")).eval()
    assert net.head.out_channels == 3
    x = torch.randn(1, 1, 16, 16)
    out = net(x)
    assert out.shape == (1, 4, 16, 16) and torch.allclose(out.exp().sum(1), torch.ones(1, 16, 16), atol=1e-5)
    assert torch.allclose(net.for_inference(channels_last=True)(x), out, atol=1e-5)
    # a bundle written before heads existed has no "head" field: it is the class head
    old = {k: v for k, v in dataclasses.asdict(TINY).items() if k != "head"}
    assert SegmenterConfig.from_dict(old).head == "classes"
    with pytest.raises(BiglError, match="head"):
        SegmenterConfig(head="sigmoid")
    with pytest.raises(BiglError, match="four BraTS classes"):
        SegmenterConfig(head="regions", num_classes=3)


# --------------------------------------------------------------------------- translator


def test_generator_shapes_mask_and_linear_output() -> None:
    _seed()
    cfg = TranslatorConfig(width=4, n_res_blocks=1)
    gen = Generator(cfg)
    x = torch.randn(2, 1, 16, 20)
    assert gen(x).shape == x.shape
    mask = torch.zeros(2, 1, 16, 20)
    mask[:, :, 4:12, 5:15] = 1
    with torch.no_grad():
        gen.net[-1].bias.fill_(5.0)  # a tanh output could never reach 5
        out = gen(x, mask)
    assert (out[mask.expand_as(out) == 0] == 0).all()
    assert out[mask.expand_as(out) == 1].mean() > 2.0
    with pytest.raises(ValueError, match="stride"):
        gen(torch.randn(1, 1, 18, 20))
    with pytest.raises(ValueError, match="mask"):
        gen(x, mask[:, :, :8])


def test_label_conditioned_generator_reads_its_condition() -> None:
    _seed()
    gen = Generator(TranslatorConfig(width=4, n_res_blocks=1, cond_channels=3)).eval()
    x = torch.randn(2, 1, 16, 20)
    cond = torch.zeros(2, 3, 16, 20)
    tumour = cond.clone()
    tumour[:, 1, 4:10, 4:10] = 1.0  # an edema square
    with torch.no_grad():
        plain, painted = gen(x, None, cond), gen(x, None, tumour)
    assert plain.shape == x.shape
    assert not torch.allclose(plain, painted)          # the label map changes the rendering
    with pytest.raises(ValueError, match="label-conditioned"):
        gen(x)
    with pytest.raises(ValueError, match="label-conditioned"):
        gen(x, None, cond[:, :2])
    with pytest.raises(ValueError, match="not label-conditioned"):
        Generator(TranslatorConfig(width=4, n_res_blocks=1))(x, None, cond)


def test_translator_config_round_trip() -> None:
    cfg = TranslatorConfig(width=8, n_down=3, norm="none")
    assert TranslatorConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
    assert Generator(cfg).stride == 8
    with pytest.raises(BiglError, match="unknown field"):
        TranslatorConfig.from_dict({"widht": 8})


# --------------------------------------------------------------------------- discriminators


@pytest.mark.parametrize("in_channels", [1, 4])
def test_patch_discriminator_shape(in_channels: int) -> None:
    _seed()
    d = PatchDiscriminator(PatchDiscriminatorConfig(in_channels=in_channels, width=4))
    # 64 -> 32 -> 16 -> 8 (stride 2) -> 7 -> 6 (stride 1, 4x4 kernels): CycleGAN's 256 -> 30 rule
    assert d(torch.randn(2, in_channels, 64, 64)).shape == (2, 1, 6, 6)


@pytest.mark.parametrize("grid", [(1, 1), (3, 5), (18, 22)])
def test_feature_discriminator_any_size(grid: tuple[int, int]) -> None:
    _seed()
    d = FeatureDiscriminator(AlignmentDiscriminatorConfig(in_channels=16, width=4))
    xi = torch.randn(2, 16, *grid, requires_grad=True)
    logit = d(xi)
    assert logit.shape == (2, 1)
    logit.sum().backward()
    assert xi.grad is not None and xi.grad.abs().sum() > 0  # Φ can be trained to fool it


@pytest.mark.parametrize("n", [1, 6, 45])
def test_attention_discriminator_any_size(n: int) -> None:
    _seed()
    d = AttentionDiscriminator(AlignmentDiscriminatorConfig(in_channels=1, width=8))
    a = torch.softmax(torch.randn(3, n, n), dim=-1).requires_grad_(True)
    logit = d(a)
    assert logit.shape == (3, 1)
    torch.testing.assert_close(d(a.unsqueeze(1)), logit)
    logit.sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    with pytest.raises(ValueError):
        d(torch.randn(3, 2, n, n))


def test_discriminator_config_round_trip() -> None:
    for cfg in (PatchDiscriminatorConfig(in_channels=4, norm="none"), AlignmentDiscriminatorConfig(in_channels=128)):
        assert type(cfg).from_dict(json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
    with pytest.raises(BiglError):
        AlignmentDiscriminatorConfig.from_dict({"width": 8})  # in_channels is required
