"""Stage 1: the bidirectional translator G_s→t, G_t→s (unpaired CycleGAN objective, label-conditioned G_s→t),
trained from several starts screened without target labels, then frozen."""

from __future__ import annotations

import copy
import logging
import warnings
from contextlib import closing
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bigl import distributed
from bigl.adapt.config import TranslatorTrainConfig
from bigl.data.slices import batches, shard
from bigl.errors import BiglError
from bigl.losses import lsgan_loss
from bigl.models.discriminators import PatchDiscriminator
from bigl.models.segmenter import DualAttentionUNet
from bigl.models.translator import Generator, TranslatorConfig
from bigl.preprocess import PreparedVolume, SliceSampler, crop_or_pad_2d
from bigl.progress import CancelFn, ProgressFn, Reporter

log = logging.getLogger(__name__)


def _masks(x: torch.Tensor) -> torch.Tensor:
    return (x != 0).float()


def tumour_condition(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices (B, H, W) -> one-hot tumour classes (B, num_classes - 1, H, W): G_s→t's condition."""
    return F.one_hot(labels.clamp(min=0), num_classes).permute(0, 3, 1, 2)[:, 1:].float()


def source_to_target(g_s2t: Generator, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """x_s→t = G_s→t(x_s) (conditioned on y_s when G_s→t is label-conditioned), background kept 0."""
    k = distributed.unwrap(g_s2t).config.cond_channels
    return g_s2t(xs, _masks(xs), tumour_condition(ys, k + 1) if k else None)


class _TranslatorStart:
    """One stage-1 start: both generators, both PatchGAN discriminators and their optimisers."""

    def __init__(self, cfg: TranslatorTrainConfig, s2t_config: TranslatorConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.g_s2t, self.g_t2s = Generator(s2t_config).to(device), Generator(cfg.translator).to(device)
        self.d_t = PatchDiscriminator(cfg.discriminator).to(device)
        self.d_s = PatchDiscriminator(cfg.discriminator).to(device)
        self._optimisers()
        self.amp = distributed.Precision(device)

    def _nets(self) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        """(G_s→t, G_t→s, D_t, D_s) as they train: under DDP in a torchrun job (wrapped on first use)."""
        if getattr(self, "_ddp", None) is None:
            ddp = distributed.current()
            self._ddp = tuple(distributed.wrap(m, ddp) for m in (self.g_s2t, self.g_t2s, self.d_t, self.d_s))
        return self._ddp

    def _optimisers(self) -> None:
        lr, betas = self.cfg.lr, (0.5, 0.999)
        self.opt_g = torch.optim.Adam(list(self.g_s2t.parameters()) + list(self.g_t2s.parameters()), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(list(self.d_t.parameters()) + list(self.d_s.parameters()), lr=lr, betas=betas)

    def flipped(self) -> _TranslatorStart:
        """The same initialisation with both generators' outputs negated: the opposite contrast polarity."""
        other = copy.copy(self)
        other.g_s2t, other.g_t2s, other.d_t, other.d_s = (copy.deepcopy(m) for m in
                                                          (self.g_s2t, self.g_t2s, self.d_t, self.d_s))
        with torch.no_grad():
            for g in (other.g_s2t, other.g_t2s):
                out_conv = g.net[-1]
                out_conv.weight.neg_()
                out_conv.bias.neg_()
        other._optimisers()
        other._ddp = None
        return other

    def step(self, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor,
             segmenter: DualAttentionUNet | None) -> dict[str, float]:
        """One alternating update: generators (discriminators frozen), then discriminators on detached fakes."""
        cfg, amp = self.cfg, self.amp
        g_s2t, g_t2s, d_t, d_s = self._nets()
        ms, mt = _masks(xs), _masks(xt)
        for d in (d_t, d_s):
            d.requires_grad_(False)
        fake_t, fake_s = source_to_target(g_s2t, xs, ys), g_t2s(xt, mt)
        cond_t = torch.softmax(segmenter(fake_s), 1)[:, 1:] * mt if segmenter is not None else None
        # frozen discriminators run outside DDP: no gradient of theirs to synchronise
        loss_gan = lsgan_loss(self.d_t(fake_t), True) + lsgan_loss(self.d_s(fake_s), True)
        loss_cyc = F.l1_loss(g_t2s(fake_t, ms), xs) + F.l1_loss(g_s2t(fake_s, mt, cond_t), xt)
        loss_id = 0.0
        if cfg.lambda_id:
            loss_id = (F.l1_loss(g_s2t(xt, mt, cond_t.detach() if cond_t is not None else None), xt)
                       + F.l1_loss(g_t2s(xs, ms), xs))
        loss_g = loss_gan + cfg.lambda_cyc * loss_cyc + cfg.lambda_id * loss_id
        if cfg.lambda_hist:
            loss_g = loss_g + cfg.lambda_hist * (quantile_distance(fake_s, xs) + quantile_distance(fake_t, xt))
        if cfg.paired:
            loss_g = loss_g + cfg.lambda_paired * (F.l1_loss(fake_t, xt) + F.l1_loss(fake_s, xs))
        self.opt_g.zero_grad(set_to_none=True)
        amp.backward(loss_g)
        amp.step(self.opt_g)
        for d in (d_t, d_s):
            d.requires_grad_(True)
        loss_d = 0.5 * (lsgan_loss(d_t(xt), True) + lsgan_loss(d_t(fake_t.detach()), False)
                        + lsgan_loss(d_s(xs), True) + lsgan_loss(d_s(fake_s.detach()), False))
        self.opt_d.zero_grad(set_to_none=True)
        amp.backward(loss_d)
        amp.step(self.opt_d)
        amp.update()
        return dict(gan=loss_gan.item(), cyc=loss_cyc.item(), d=loss_d.item())


def quantile_distance(a: torch.Tensor, b: torch.Tensor, levels: int = 101) -> torch.Tensor:
    """1-D Wasserstein-1 distance between the brain (non-zero) intensities of two image batches, differentiable
    in ``a`` (``b`` is the reference). Computed from ``levels`` matched quantiles; 0 when the distributions agree
    or when either batch has no brain voxel."""
    va, vb = a[a != 0], b[b != 0].detach()
    if not len(va) or not len(vb):
        return a.new_zeros(())
    if va.dtype not in (torch.float32, torch.float64):      # half precision under autocast: quantile needs float
        va = va.float()
    qs = torch.linspace(0, 1, levels, dtype=va.dtype, device=va.device)
    return (torch.quantile(va, qs) - torch.quantile(vb.to(va.dtype), qs)).abs().mean()


def intensity_distance(a: torch.Tensor, b: torch.Tensor, levels: int = 101) -> float:
    """:func:`quantile_distance` as a number (double precision), for scoring; BiglError if a batch has no brain."""
    if not (a != 0).any() or not (b != 0).any():
        raise BiglError("intensity_distance needs brain (non-zero) voxels in both batches")
    with torch.no_grad():
        return float(quantile_distance(a.double().cpu(), b.double().cpu(), levels))


def translation_distance(g_s2t: Generator, g_t2s: Generator, xs: torch.Tensor, ys: torch.Tensor,
                         xt: torch.Tensor) -> float:
    """Unsupervised stage-1 score (lower is better): how far each translation's intensity distribution is
    from the real images of the domain it imitates, W1(G_t→s(x_t), x_s) + W1(G_s→t(x_s), x_t)."""
    with torch.no_grad():
        fake_s, fake_t = g_t2s(xt, _masks(xt)), source_to_target(g_s2t, xs, ys)
    return intensity_distance(fake_s, xs) + intensity_distance(fake_t, xt)


def identity_distance(xs: torch.Tensor, xt: torch.Tensor) -> float:
    """:func:`translation_distance` of translators that change nothing: the score of a start that learnt nothing."""
    return intensity_distance(xt, xs) + intensity_distance(xs, xt)


def train_translator(src: list[PreparedVolume], tgt: list[PreparedVolume], patch: tuple[int, int],
                     cfg: TranslatorTrainConfig, rng: np.random.Generator, device: torch.device,
                     progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                     segmenter: DualAttentionUNet | None = None, workers: int = 0) -> tuple[Generator, Generator]:
    """Stage 1: G_s→t and G_t→s with PatchGAN discriminators; returns both generators frozen, in eval mode.

    With ``cfg.label_conditioned`` G_s→t reads the source labels next to x_s. Its
    target-side cycle, G_s→t(G_t→s(x_t)), has no labels, so it is conditioned on
    the source ``segmenter``'s softmax of G_t→s(x_t) (frozen; gradients flow through
    it into G_t→s, a semantic cycle in the spirit of CyCADA).

    With ``cfg.starts > 1`` several starts (pairs of one initialisation in both
    contrast polarities) each train ``cfg.screen_steps`` steps; the one whose
    translations are closest in intensity distribution to the real images of
    the other domain (:func:`translation_distance` on a fixed batch, no labels
    of the target) continues to ``cfg.steps``. Which contrast polarity the
    generators find is set in the first ~100 steps and not undone later
    (docs/adaptation.md). While no start scores under ``cfg.identity_margin``
    times the identity map's score (:func:`identity_distance`: the translators
    learnt nothing), further starts are screened (alternating polarity), up to ``cfg.max_starts``;
    if none gets there, a warning says adaptation is unlikely to help.
    """
    s2t_config = cfg.translator
    if cfg.label_conditioned:
        if segmenter is None:
            raise BiglError("a label-conditioned translator needs the source segmenter for its target cycle")
        segmenter = copy.deepcopy(segmenter).to(device).eval().requires_grad_(False)
        s2t_config = replace(cfg.translator, cond_channels=segmenter.config.num_classes - 1)
    # Uniform brain slices on both sides by default; tumour-rich source slices (source_tumour_fraction)
    # show D_s more real tumours but made no measured difference (docs/results.md).
    screen = min(cfg.screen_steps, cfg.steps) if cfg.starts > 1 else 0
    ddp = distributed.current()
    seed = int(rng.integers(2**31))
    n_batches = cfg.steps + (cfg.max_starts - 1) * screen

    def stream(volumes: list, fraction: float, which: int):
        return batches(shard(volumes, ddp.rank, ddp.world_size), patch, batch_size=cfg.batch_size,
                       n_batches=n_batches, seed=(seed, which, ddp.rank), tumour_fraction=fraction, jitter=8,
                       augment=True, workers=workers, device=device)

    samp_s = SliceSampler(src, cfg.source_tumour_fraction)
    source_it, target_it = stream(src, cfg.source_tumour_fraction, 0), stream(tgt, 0.0, 1)

    def batch(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if cfg.paired:
            xs, ys, xt = _paired_batch(src, tgt, samp_s, patch, size, rng)
            return xs.to(device), ys.to(device), xt.to(device)
        (xs, ys), (xt, _) = next(source_it), next(target_it)
        return xs[:size], ys[:size], xt[:size]

    report = Reporter("translator", cfg.steps + (cfg.starts - 1) * screen, progress, cancel)
    done = 0

    def train(start: _TranslatorStart, steps: int) -> None:
        nonlocal done
        for _ in range(steps):
            with start.amp.autocast():
                metrics = start.step(*batch(cfg.batch_size), segmenter)
            done += 1
            report(done, **metrics)

    starts: list[_TranslatorStart] = []

    def new_start() -> _TranslatorStart:
        return starts[-1].flipped() if len(starts) % 2 else _TranslatorStart(cfg, s2t_config, device)

    best = new_start()
    starts.append(best)
    with closing(source_it), closing(target_it):
        if cfg.starts > 1:
            held_out = batch(cfg.screen_slices) if cfg.paired else _screening_batch(src, tgt, patch, cfg, seed, device)
            floor = identity_distance(held_out[0], held_out[2])
            scores = []
            while True:
                train(starts[-1], screen)
                scores.append(translation_distance(starts[-1].g_s2t, starts[-1].g_t2s, *held_out))
                learnt = min(scores) < cfg.identity_margin * floor
                done_screening = len(starts) >= cfg.max_starts or (len(starts) >= cfg.starts and learnt)
                # rank 0 decides (its scores): every rank goes on alike
                if distributed.broadcast(done_screening, ddp):
                    break
                if len(starts) >= cfg.starts:     # an extra start: the progress total grows with it
                    report.total += screen
                starts.append(new_start())
            choice, learnt = distributed.broadcast((int(np.argmin(scores)), learnt), ddp)
            best = starts[choice]
            log.info("translator starts after %d steps: intensity distances %s (identity map %.3f); continuing "
                     "start %d", screen, ", ".join(f"{v:.3f}" for v in scores), floor, choice)
            if not learnt:
                warnings.warn(f"the translator learnt little in {len(starts)} starts (best intensity distance "
                              f"{min(scores):.3f}, identity map {floor:.3f}): translated images stay close to the "
                              "target sequence and adaptation is unlikely to help; try other target images or "
                              "more of them", stacklevel=2)
        train(best, cfg.steps - screen)
    for g in (best.g_s2t, best.g_t2s):
        distributed.sync_buffers(g, ddp)
        g.eval().requires_grad_(False)
    return best.g_s2t, best.g_t2s


def _screening_batch(src, tgt, patch, cfg: TranslatorTrainConfig, seed: int, device) -> tuple[torch.Tensor, ...]:
    """The fixed (x_s, y_s, x_t) batch of ``cfg.screen_slices`` slices per domain that translator starts are scored on."""
    def one(volumes: list, fraction: float, which: int):
        return next(batches(volumes, patch, batch_size=cfg.screen_slices, n_batches=1, seed=(seed, which),
                            tumour_fraction=fraction, jitter=8, augment=True, device=device))
    (xs, ys), (xt, _) = one(src, cfg.source_tumour_fraction, 2), one(tgt, 0.0, 3)
    return xs, ys, xt


def _paired_batch(src, tgt, sampler, patch, batch_size, rng):
    """Same subject, same slice, both sequences (paired mode only: source and target lists are the same cases).

    Returns (x_s, y_s, x_t).
    """
    if len(src) != len(tgt):
        raise BiglError("paired translator training needs the same cases in source and target data, in the same order")
    xs, ys, xt = [], [], []
    for _ in range(batch_size):
        i, k = sampler.sample(rng)
        center = src[i].brain_center
        xs.append(crop_or_pad_2d(src[i].image[k], center, patch))
        ys.append(crop_or_pad_2d(src[i].target[k], center, patch))
        xt.append(crop_or_pad_2d(tgt[i].image[k], center, patch))
    stack = lambda a: torch.from_numpy(np.ascontiguousarray(np.stack(a)))  # noqa: E731
    return stack(xs)[:, None], stack(ys).long(), stack(xt)[:, None]

