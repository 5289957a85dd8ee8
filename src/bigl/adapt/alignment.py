"""Stage 2: one alternating update of the shared segmenter Φ and its alignment discriminators.

BiGL aligns features and position/channel attention maps (D^Feat, D^Pos, D^Cha, both sides) and adds the
output consistency L_out and, beyond the paper, L_seg on the round trip G_t→s(lesion-moved x_s→t); the
AdaptSegNet and CyCADA baselines align softmax outputs with one PatchGAN discriminator (CyCADA on x_s→t
instead of x_s). The SIFA-style baseline learns from x_s→t with labels like CyCADA and aligns both Φ's encoder
features and its outputs between x_s→t and x_t (docs/adaptation.md says where it differs from SIFA).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from bigl import distributed
from bigl.adapt.config import AdaptConfig
from bigl.adapt.translator_stage import _masks, source_to_target
from bigl.data.augment import AugmentConfig, lesion_contrast
from bigl.losses import adversarial_loss, distillation_loss, output_consistency, segmentation_loss
from bigl.models.attention import decay_groups
from bigl.models.discriminators import (AlignmentDiscriminatorConfig, AttentionDiscriminator,
                                        FeatureDiscriminator, PatchDiscriminator, PatchDiscriminatorConfig)
from bigl.models.segmenter import DualAttentionUNet, SegmenterOutput
from bigl.models.translator import Generator
from bigl.train import follow


def _alignment_discriminators(seg: DualAttentionUNet, cfg: AdaptConfig, device: torch.device) -> nn.ModuleDict:
    c = seg.config.widths[-1]
    k = seg.config.num_classes
    disc: dict[str, nn.Module] = {}
    if cfg.method == "bigl":
        if cfg.use_feature:
            disc["feat_s"] = FeatureDiscriminator(AlignmentDiscriminatorConfig(in_channels=c))
            disc["feat_t"] = FeatureDiscriminator(AlignmentDiscriminatorConfig(in_channels=c))
        if cfg.use_attention and seg.config.attention:
            for side in ("s", "t"):
                disc[f"pos_{side}"] = AttentionDiscriminator(AlignmentDiscriminatorConfig(in_channels=1))
                disc[f"cha_{side}"] = AttentionDiscriminator(AlignmentDiscriminatorConfig(in_channels=1))
    elif cfg.method in ("adaptseg", "cycada", "sifa"):
        disc["out"] = PatchDiscriminator(PatchDiscriminatorConfig(in_channels=k, width=32, norm="none"))
        if cfg.method == "sifa":
            disc["feat_t"] = FeatureDiscriminator(AlignmentDiscriminatorConfig(in_channels=c))
    return nn.ModuleDict(disc).to(device)


def _adversarial_weight(name: str, cfg: AdaptConfig) -> float:
    """Feature and attention discriminators weigh λ_gtl (BiGL's and the SIFA-style one alike); output ones λ_adv."""
    return cfg.lambda_adv_out if name == "out" else cfg.lambda_gtl


def _pairs(outs: dict[str, Any]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(labelled side, unlabelled side) inputs of each alignment discriminator, by name."""
    def att(o, name):
        return getattr(o, name)[:, None]
    return {
        "feat_s": (outs["s"].feature, outs["t2s"].feature),
        "feat_t": (outs["s2t"].feature, outs["t"].feature),
        "pos_s": (att(outs["s"], "position_attention"), att(outs["t2s"], "position_attention")),
        "pos_t": (att(outs["s2t"], "position_attention"), att(outs["t"], "position_attention")),
        "cha_s": (att(outs["s"], "channel_attention"), att(outs["t2s"], "channel_attention")),
        "cha_t": (att(outs["s2t"], "channel_attention"), att(outs["t"], "channel_attention")),
    }


def _baseline_pairs(outs: dict[str, Any], method: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    lab = outs["s2t"] if method in ("cycada", "sifa") else outs["s"]
    pairs = {"out": (torch.softmax(lab.logits, 1), torch.softmax(outs["t"].logits, 1))}
    if method == "sifa":
        pairs["feat_t"] = (outs["s2t"].feature, outs["t"].feature)
    return pairs


def alignment_setup(seg: DualAttentionUNet, cfg: AdaptConfig, device: torch.device):
    """Stage-2 parts for ``seg``: (discriminators, frozen source-model teacher or None, Φ's and the
    discriminators' optimisers). Call before Φ is trained: the teacher is a copy of ``seg`` as it is."""
    disc = _alignment_discriminators(seg, cfg, device)
    teacher = None
    if cfg.method == "bigl" and cfg.lambda_anchor > 0:
        teacher = copy.deepcopy(seg).eval().requires_grad_(False)
    opt_seg = torch.optim.Adam(decay_groups(seg, 1e-5), lr=cfg.lr)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr_d, betas=(0.9, 0.99)) if len(disc) else None
    return disc, teacher, opt_seg, opt_d


def alignment_step(seg: DualAttentionUNet, disc: nn.ModuleDict, opt_seg, opt_d, xs, ys, xt,
                   g_s2t: Generator | None, g_t2s: Generator | None, cfg: AdaptConfig, ramp: float,
                   pseudo: tuple[torch.Tensor, torch.Tensor] | None = None,
                   teacher: DualAttentionUNet | None = None) -> dict[str, float]:
    """One alternating update (Φ, then the discriminators) for ``cfg.method``; returns the loss terms.

    ``teacher``: the frozen source model whose softmax of x_t→s anchors Φ (``cfg.lambda_anchor``).
    ``cfg.dice`` must be set: ``cfg.for_source(source_bundle)`` sets it as :func:`~bigl.adapt.adapt` does.
    """
    if cfg.dice is None:
        raise ValueError("cfg.dice is None: resolve it for the source model first, cfg = cfg.for_source(bundle)")
    mt = _masks(xt)
    streams = {"s": xs}
    with torch.no_grad():
        if cfg.method in ("bigl", "cycada", "sifa"):
            streams["s2t"] = source_to_target(g_s2t, xs, ys)
        if cfg.method == "bigl" or pseudo is not None:
            streams["t2s"] = g_t2s(xt, mt)
    if cfg.method in ("cycada", "sifa"):
        del streams["s"]
    weights = {n: cfg.lambda_seg_s2t if n == "s2t" and cfg.method == "bigl" else 1.0 for n in ("s", "s2t")
               if n in streams}
    if cfg.lesion_contrast:                 # on the images L_seg reads (x_s→t is made from the unmoved x_s)
        for n, weight in weights.items():
            if weight:
                streams[n] = lesion_contrast(streams[n], ys, cfg.lesion_contrast, AugmentConfig.lesion_shift)
    if cfg.method == "bigl" and cfg.lambda_round_trip:
        with torch.no_grad():               # a labelled lesion of any target brightness, through G_t→s
            moved = lesion_contrast(streams["s2t"], ys, 1.0, cfg.round_trip_shift)
            streams["s2t2s"] = g_t2s(moved, _masks(moved))
        weights["s2t2s"] = cfg.lambda_round_trip
    streams["t"] = xt
    names = list(streams)
    # one forward pass over all streams: BatchNorm sees every domain, as at test time
    disc.requires_grad_(False)
    seg.train()
    big = seg(torch.cat([streams[n] for n in names]), return_extras=True)
    sizes = [streams[n].shape[0] for n in names]
    outs = {n: _split(big, i, sizes) for i, n in enumerate(names)}

    terms: dict[str, torch.Tensor] = {}
    for n, weight in weights.items():       # reported per stream: seg_s, seg_s2t, seg_s2t2s
        if weight:
            terms[f"seg_{n}"] = weight * segmentation_loss(outs[n].logits, ys, dice=cfg.dice)
    if cfg.method == "bigl" and cfg.use_output:
        terms["out"] = cfg.lambda_out * output_consistency(outs["t"].logits, outs["t2s"].logits, mt)
    if pseudo is not None:
        plabel, _ = pseudo
        terms["pseudo"] = sum(segmentation_loss(outs[n].logits, plabel, dice=cfg.dice) for n in ("t", "t2s")
                              if n in outs)
    if teacher is not None:
        with torch.no_grad():
            soft = torch.softmax(teacher(streams["t2s"]), 1)
        terms["anchor"] = cfg.lambda_anchor * sum(distillation_loss(outs[n].logits, soft, mt) for n in ("t", "t2s"))
    pairs = _pairs(outs) if cfg.method == "bigl" else _baseline_pairs(outs, cfg.method)
    adv = [_adversarial_weight(name, cfg) * adversarial_loss(distributed.unwrap(disc[name])(pairs[name][1]), True)
           for name in disc]  # frozen
    if adv:
        terms["adv"] = ramp * sum(adv)
    loss = sum(terms.values())
    amp = distributed.precision(xs.device)
    opt_seg.zero_grad(set_to_none=True)
    amp.backward(loss)
    amp.step(opt_seg)
    if teacher is not None and cfg.anchor_ema:
        follow(teacher, seg, cfg.anchor_ema)

    if len(disc):
        disc.requires_grad_(True)
        loss_d = sum(adversarial_loss(disc[name](pairs[name][0].detach()), True)
                     + adversarial_loss(disc[name](pairs[name][1].detach()), False) for name in disc)
        opt_d.zero_grad(set_to_none=True)
        amp.backward(loss_d)
        amp.step(opt_d)
        terms["disc"] = loss_d
    amp.update()
    return {k: float(v.detach()) for k, v in terms.items()}


def _split(out, i: int, sizes: list[int]):
    a = sum(sizes[:i])
    b = a + sizes[i]
    pick = (lambda t: t[a:b] if t is not None else None)  # noqa: E731
    return SegmenterOutput(out.logits[a:b], out.feature[a:b], pick(out.position_attention),
                           pick(out.channel_attention))

