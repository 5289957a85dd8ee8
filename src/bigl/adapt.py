"""BiGL unsupervised domain adaptation, the baselines, self-training and unsupervised checkpoint selection.

Paper symbols -> code names:

- x_s, y_s: source slices and labels (``xs``, ``ys``); x_t: unlabelled target slices (``xt``).
- G_s→t, G_t→s: the stage-1 generators (``g_s2t``, ``g_t2s``); x_s→t = G_s→t(x_s), x_t→s = G_t→s(x_t).
- Φ: the shared dual-attention U-Net (``seg``), initialised from the source bundle.
- ξ, A_pos, A_cha: ``out.feature``, ``out.position_attention``, ``out.channel_attention``.
- D^Feat_s / D^Feat_t, D^Pos_s / D^Pos_t, D^Cha_s / D^Cha_t: source-/target-side alignment
  discriminators (``disc["feat_s"]`` ...). D_s separates x_s (real, 1) from x_t→s (0); D_t
  separates x_s→t (1) from x_t (0). Φ is updated to make the unlabelled side look labelled.
- Eq. 4 L_seg, Eq. 5 L_out, Eqs. 6–9 adversarial terms, Eq. 10 the total.

Stage 1 trains the translator (unpaired CycleGAN objective: LSGAN + λ_cyc·cycle + λ_id·identity;
the paper's paired L1 term of Eq. 1 only with ``paired=True``), then freezes it. Stage 2 alternates,
every step: update Φ with the discriminators frozen, then the discriminators on detached inputs.
By default stage 2 departs from Eq. 10 in two measured ways (``lambda_seg_s2t``, ``lambda_anchor``):
no L_seg on the label-conditioned x_s→t, and Φ(x_t), Φ(x_t→s) distilled from the frozen source model's
softmax of x_t→s.
Choices the paper leaves open are fields of :class:`AdaptConfig`, documented in docs/adaptation.md.

Target labels are never read: target data enter only through :func:`bigl.io.load_images`.

Data: source and target cases are read from the preprocessed cache through the slice loader
(:mod:`bigl.data`). Under ``torchrun`` every trained network (the translator's generators and
discriminators, Φ, the alignment discriminators) is a DistributedDataParallel replica, each rank draws
from its own shard, and rank 0 scores translator starts and snapshots for everyone (:mod:`bigl.distributed`).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bigl import distributed
from bigl.checkpoint import Bundle, jsonable
from bigl.data.cache import cache_cases, with_target
from bigl.data.slices import batches, shard
from bigl.errors import BiglError
from bigl.infer import predict_prepared, resolve_device
from bigl.io import SEQUENCES, Case, Volume, list_cases, load_images
from bigl.losses import adversarial_loss, distillation_loss, lsgan_loss, output_consistency, segmentation_loss
from bigl.metrics import REGIONS, region_mask
from bigl.models.discriminators import (AlignmentDiscriminatorConfig, AttentionDiscriminator,
                                        FeatureDiscriminator, PatchDiscriminator, PatchDiscriminatorConfig)
from bigl.models.segmenter import DualAttentionUNet, SegmenterOutput
from bigl.models.translator import Generator, TranslatorConfig
from bigl.preprocess import (PreparedVolume, SliceSampler, classes_to_labels, crop_or_pad_2d, patch_size_for,
                             prepare)
from bigl.progress import CancelFn, ProgressFn, Reporter
from bigl.train import poly_lr, seed_everything

log = logging.getLogger(__name__)

METHODS = ("bigl", "adaptseg", "translate", "cycada", "source-only")


@dataclass
class TranslatorTrainConfig:
    """Stage 1: the bidirectional translator (trained first, then frozen)."""

    steps: int = 1000
    batch_size: int = 4
    lr: float = 5e-4
    lambda_cyc: float = 10.0
    lambda_id: float = 0.0        # off: T1 and T2 invert contrasts, and with it the generators collapsed to identity
    source_tumour_fraction: float = 0.0   # >0: source slices drawn from tumour slices (target: uniform), see docs
    label_conditioned: bool = True  # G_s→t also reads the source label map (target cycle: Φ_0's softmax of x_t→s)
    paired: bool = False          # Eq. 1's L1 to the real target image; needs co-registered same-subject pairs
    lambda_paired: float = 10.0
    # A *local* generator (no downsampling, 3x3 convs, 9-pixel receptive field): MR sequences differ
    # mostly in per-tissue contrast, and a small field cannot invent or move anatomy. It trains
    # reliably in 1000 CPU steps where the CycleGAN ResNet generator did not (docs/results.md).
    translator: TranslatorConfig = field(default_factory=lambda: TranslatorConfig(
        width=32, n_down=0, n_res_blocks=1, kernel=3, norm="none"))
    discriminator: PatchDiscriminatorConfig = field(default_factory=lambda: PatchDiscriminatorConfig(width=32))
    # Several starts, screened without target labels: from a random initialisation the generators
    # settle on a contrast polarity within ~100 steps and keep it; the wrong one (T2's bright CSF kept
    # bright in "T1") never recovers. Starts come in pairs: one initialisation and its negated output.
    starts: int = 4
    screen_steps: int = 100       # steps every start trains before the best one continues to `steps`
    screen_slices: int = 16       # fixed slices per domain the starts are scored on

    def __post_init__(self) -> None:
        for name in ("starts", "screen_slices"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise BiglError(f"translator {name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.screen_steps, int) or self.screen_steps < 0:
            raise BiglError(f"translator screen_steps must be a non-negative integer, got {self.screen_steps!r}")


@dataclass
class AdaptConfig:
    """Stage 2 and beyond. Paper defaults where the paper gives them (Eq. 10, Sec. 4.1)."""

    method: str = "bigl"
    steps: int = 600
    batch_size: int = 6           # per stream; BiGL runs 4 streams per step
    lr: float = 1e-3              # Φ starts from the source model, so below the paper's 5e-3 from scratch
    lr_power: float = 0.75        # polynomial decay (paper)
    lr_d: float = 5e-5            # discriminators, constant (paper)
    lambda_out: float = 1e-3      # L_out weight (paper)
    lambda_gtl: float = 0.1       # feature + attention adversarial weight (paper)
    lambda_adv_out: float = 1e-3  # AdaptSegNet / CyCADA output-space adversarial weight
    use_output: bool = True       # BiGL ablations (Tables 3–4)
    use_feature: bool = True
    use_attention: bool = True
    ramp_fraction: float = 0.25   # adversarial weights ramp linearly from 0 over this share of the steps
    tumour_fraction: float = 0.3  # source slices drawn from tumour slices (target: uniform over brain)
    jitter: int = 8
    checkpoint_every: int = 100   # snapshot + unsupervised selection score
    selection_volumes: int = 4    # target volumes scored for selection
    select: bool = True           # keep the snapshot with the best unsupervised score (else the last)
    self_train: bool = False
    self_train_rounds: int = 2
    self_train_steps: int = 150
    pseudo_threshold: float = 0.9
    # Beyond the paper (docs/adaptation.md). lambda_seg_s2t weighs L_seg on x_s→t (paper: 1). G_s→t reads
    # y_s, so x_s→t carries the labels in a form Φ learns to read within ~20 steps; that shortcut wiped out
    # Φ(x_t→s) (test DSC 39 -> 1 at lr 1e-4, docs/results.md). lambda_anchor: Φ(x_t) and Φ(x_t→s) are fitted
    # to the frozen source model's softmax of x_t→s (Φ_0(x_t→s), the translate-only prediction).
    lambda_seg_s2t: float = 0.0
    lambda_anchor: float = 1.0
    # 0: the anchor's teacher stays the frozen source model; m > 0: it follows Φ as an exponential moving
    # average (teacher <- m·teacher + (1-m)·Φ after every Φ update), so the target improves as Φ(x_t→s) does.
    anchor_ema: float = 0.0
    # m > 0: snapshots, selection and the adapted bundle use an exponential moving average of Φ's weights
    # (updated like the EMA teacher) instead of Φ itself — stage 2's test DSC swings by 5–10 points
    # between snapshots 100 steps apart; the average beat Φ on every seed (docs/results.md). 0: Φ itself.
    weight_ema: float = 0.99
    # How the adapted bundle segments: "direct" Φ(x_t) (the paper's protocol), "translate" Φ(G_t→s(x_t)),
    # "ensemble" the mean of both softmaxes — 3.3 points above direct on the three headline seeds, 0.7 below
    # on the unseen CLI check (docs/results.md).
    # Methods other than BiGL (and translate-only) always segment directly.
    inference: str = "ensemble"
    seed: int = 0
    workers: int = 1              # data-loading worker processes per stream (0: in the training process)
    translator: TranslatorTrainConfig = field(default_factory=TranslatorTrainConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BiglError(f"unknown adaptation method {self.method!r}; choose one of {', '.join(METHODS)}")
        for name in ("anchor_ema", "weight_ema"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise BiglError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.inference not in ("direct", "translate", "ensemble"):
            raise BiglError(f"unknown inference mode {self.inference!r}; use direct, translate or ensemble")


@dataclass
class Snapshot:
    step: int
    stage: str
    score: float                       # unsupervised selection score (higher is better)
    state: dict[str, torch.Tensor]     # Φ weights on CPU


@dataclass
class AdaptResult:
    bundle: Bundle
    snapshots: list[Snapshot]
    chosen_step: int
    history: list[dict[str, float]]
    seconds: float


PreviewFn = Callable[[int, Bundle], None]


# ----------------------------------------------------------------------------- data
def _prepare_target(target: Any, sequence: str, cached: Callable[[list[Case], str, bool], list] | None = None
                    ) -> list[PreparedVolume]:
    """Unlabelled target volumes from a dataset folder, a list of cases, volumes or arrays. Never reads labels.

    ``cached(cases, sequence, labels)``: how cases are read (the adaptation's cache); default: into memory.
    """
    if isinstance(target, (str, Path)):
        target = list_cases(target)
    if isinstance(target, (Volume, np.ndarray)):
        target = [target]
    if cached is not None and target and all(isinstance(item, Case) for item in target):
        return cached(list(target), sequence, False)
    out = []
    for i, item in enumerate(target):
        if isinstance(item, Case):
            out.append(prepare(load_images(item, [sequence])[sequence].data, name=item.case_id))
        else:
            data = item.data if isinstance(item, Volume) else np.asarray(item)
            if data.ndim != 3:
                raise BiglError(f"target volume {i} has shape {data.shape}; adaptation needs 3D (z, y, x) volumes")
            out.append(prepare(data, name=f"target_{i}"))
    if not out:
        raise BiglError("no target images were given; pass a folder of unlabelled target cases or an open series")
    return out


def _masks(x: torch.Tensor) -> torch.Tensor:
    return (x != 0).float()


# ----------------------------------------------------------------------------- stage 1
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


def intensity_distance(a: torch.Tensor, b: torch.Tensor, levels: int = 101) -> float:
    """1-D Wasserstein-1 distance between the brain (non-zero) intensities of two image batches.

    Computed from ``levels`` matched quantiles; 0 when the two intensity distributions agree.
    """
    qs = torch.linspace(0, 1, levels, dtype=torch.float64)
    va, vb = (x[x != 0].double().cpu() for x in (a, b))
    if not len(va) or not len(vb):
        raise BiglError("intensity_distance needs brain (non-zero) voxels in both batches")
    return float((torch.quantile(va, qs) - torch.quantile(vb, qs)).abs().mean())


def translation_distance(g_s2t: Generator, g_t2s: Generator, xs: torch.Tensor, ys: torch.Tensor,
                         xt: torch.Tensor) -> float:
    """Unsupervised stage-1 score (lower is better): how far each translation's intensity distribution is
    from the real images of the domain it imitates, W1(G_t→s(x_t), x_s) + W1(G_s→t(x_s), x_t)."""
    with torch.no_grad():
        fake_s, fake_t = g_t2s(xt, _masks(xt)), source_to_target(g_s2t, xs, ys)
    return intensity_distance(fake_s, xs) + intensity_distance(fake_t, xt)


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
    (docs/adaptation.md).
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
    n_batches = cfg.steps + (cfg.starts - 1) * screen

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
    for i in range(cfg.starts):
        starts.append(starts[-1].flipped() if i % 2 else _TranslatorStart(cfg, s2t_config, device))
    best = starts[0]
    with closing(source_it), closing(target_it):
        if cfg.starts > 1:
            held_out = batch(cfg.screen_slices) if cfg.paired else _screening_batch(src, tgt, patch, cfg, seed, device)
            scores = []
            for start in starts:
                train(start, screen)
                scores.append(translation_distance(start.g_s2t, start.g_t2s, *held_out))
            choice = distributed.broadcast(int(np.argmin(scores)), ddp)   # rank 0's choice: every rank goes on alike
            best = starts[choice]
            log.info("translator starts after %d steps: intensity distances %s; continuing start %d", screen,
                     ", ".join(f"{v:.3f}" for v in scores), choice)
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
    return stack(xs)[:, None], stack(ys), stack(xt)[:, None]


# ----------------------------------------------------------------------------- stage 2
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
    elif cfg.method in ("adaptseg", "cycada"):
        disc["out"] = PatchDiscriminator(PatchDiscriminatorConfig(in_channels=k, width=32, norm="none"))
    return nn.ModuleDict(disc).to(device)


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


def _output_pairs(outs: dict[str, Any], method: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    lab = outs["s2t"] if method == "cycada" else outs["s"]
    return {"out": (torch.softmax(lab.logits, 1), torch.softmax(outs["t"].logits, 1))}


def alignment_setup(seg: DualAttentionUNet, cfg: AdaptConfig, device: torch.device):
    """Stage-2 parts for ``seg``: (discriminators, frozen source-model teacher or None, Φ's and the
    discriminators' optimisers). Call before Φ is trained: the teacher is a copy of ``seg`` as it is."""
    disc = _alignment_discriminators(seg, cfg, device)
    teacher = None
    if cfg.method == "bigl" and cfg.lambda_anchor > 0:
        teacher = copy.deepcopy(seg).eval().requires_grad_(False)
    opt_seg = torch.optim.Adam(seg.parameters(), lr=cfg.lr, weight_decay=1e-5)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr_d, betas=(0.9, 0.99)) if len(disc) else None
    return disc, teacher, opt_seg, opt_d


def alignment_step(seg: DualAttentionUNet, disc: nn.ModuleDict, opt_seg, opt_d, xs, ys, xt,
                   g_s2t: Generator | None, g_t2s: Generator | None, cfg: AdaptConfig, ramp: float,
                   pseudo: tuple[torch.Tensor, torch.Tensor] | None = None,
                   teacher: DualAttentionUNet | None = None) -> dict[str, float]:
    """One alternating update (Φ, then the discriminators) for ``cfg.method``; returns the loss terms.

    ``teacher``: the frozen source model whose softmax of x_t→s anchors Φ (``cfg.lambda_anchor``).
    """
    mt = _masks(xt)
    streams = {"s": xs}
    with torch.no_grad():
        if cfg.method in ("bigl", "cycada"):
            streams["s2t"] = source_to_target(g_s2t, xs, ys)
        if cfg.method == "bigl" or pseudo is not None:
            streams["t2s"] = g_t2s(xt, mt)
    if cfg.method == "cycada":
        del streams["s"]
    streams["t"] = xt
    names = list(streams)
    # one forward pass over all streams: BatchNorm sees every domain, as at test time
    disc.requires_grad_(False)
    seg.train()
    big = seg(torch.cat([streams[n] for n in names]), return_extras=True)
    sizes = [streams[n].shape[0] for n in names]
    outs = {n: _split(big, i, sizes) for i, n in enumerate(names)}

    terms: dict[str, torch.Tensor] = {}
    labelled = [n for n in ("s", "s2t") if n in outs]
    for n in labelled:                      # reported per stream: seg_s, seg_s2t
        weight = cfg.lambda_seg_s2t if n == "s2t" and cfg.method == "bigl" else 1.0
        if weight:
            terms[f"seg_{n}"] = weight * segmentation_loss(outs[n].logits, ys)
    if cfg.method == "bigl" and cfg.use_output:
        terms["out"] = cfg.lambda_out * output_consistency(outs["t"].logits, outs["t2s"].logits, mt)
    if pseudo is not None:
        plabel, _ = pseudo
        terms["pseudo"] = sum(segmentation_loss(outs[n].logits, plabel) for n in ("t", "t2s") if n in outs)
    if teacher is not None:
        with torch.no_grad():
            soft = torch.softmax(teacher(streams["t2s"]), 1)
        terms["anchor"] = cfg.lambda_anchor * sum(distillation_loss(outs[n].logits, soft, mt) for n in ("t", "t2s"))
    pairs = _pairs(outs) if cfg.method == "bigl" else _output_pairs(outs, cfg.method)
    weight = cfg.lambda_gtl if cfg.method == "bigl" else cfg.lambda_adv_out
    adv = [adversarial_loss(distributed.unwrap(disc[name])(pairs[name][1]), True) for name in disc]  # frozen
    if adv:
        terms["adv"] = ramp * weight * sum(adv)
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


@torch.no_grad()
def follow(teacher: nn.Module, model: nn.Module, momentum: float) -> None:
    """EMA update: teacher parameters <- momentum·teacher + (1-momentum)·model; buffers (BatchNorm statistics) copied."""
    for t, m in zip(teacher.parameters(), model.parameters(), strict=True):
        t.lerp_(m, 1.0 - momentum)
    for t, m in zip(teacher.buffers(), model.buffers(), strict=True):
        t.copy_(m)


def _split(out, i: int, sizes: list[int]):
    a = sum(sizes[:i])
    b = a + sizes[i]
    pick = (lambda t: t[a:b] if t is not None else None)  # noqa: E731
    return SegmenterOutput(out.logits[a:b], out.feature[a:b], pick(out.position_attention),
                           pick(out.channel_attention))


# ----------------------------------------------------------------------------- selection & pseudo-labels
@torch.no_grad()
def _predict_pair(seg: DualAttentionUNet, g_t2s: Generator, vol: PreparedVolume, device) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of Φ(x_t) and Φ(x_t→s) over a whole target volume."""
    p_t, _ = predict_prepared(seg, vol, device=device, with_attention=False)
    p_t2s, _ = predict_prepared(seg, vol, device=device, with_attention=False, translator=g_t2s)
    return p_t, p_t2s


def prediction_agreement(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Dice of two predictions per tumour region, pooled over volumes, averaged over the regions either predicts.

    ``pairs``: (label map A, label map B) per volume, BraTS labels. A region that
    neither map contains anywhere is left out instead of counting as perfect
    agreement: a model that predicts no tumour must not score 1. Nothing predicted
    at all -> 0.
    """
    scores = []
    for r in REGIONS:
        inter = total = 0
        for a, b in pairs:
            ma, mb = region_mask(a, r), region_mask(b, r)
            inter += int(np.logical_and(ma, mb).sum())
            total += int(ma.sum()) + int(mb.sum())
        if total:
            scores.append(2.0 * inter / total)
    return float(np.mean(scores)) if scores else 0.0


def selection_score(seg: DualAttentionUNet, g_t2s: Generator | None, vols: list[PreparedVolume], device) -> float:
    """Unsupervised score: agreement of Φ(x_t) and Φ(x_t→s) (:func:`prediction_agreement`); no target labels.

    Without ``g_t2s`` (AdaptSegNet, CyCADA: Φ is not trained on x_t→s) the score is
    the negative mean prediction entropy inside the brain instead.
    """
    if g_t2s is None:
        scores = []
        for v in vols:
            p, _ = predict_prepared(seg, v, device=device, with_attention=False)
            ent = -(p * np.log(np.clip(p, 1e-8, 1))).sum(0) / np.log(p.shape[0])
            scores.append(-float(ent[v.mask].mean()))
        return float(np.mean(scores))
    pairs = []
    for v in vols:
        p_t, p_t2s = _predict_pair(seg, g_t2s, v, device)
        pairs.append((classes_to_labels(p_t.argmax(0)), classes_to_labels(p_t2s.argmax(0))))
    return prediction_agreement(pairs)


def pseudo_labels(seg: DualAttentionUNet, g_t2s: Generator, vols: list[PreparedVolume], threshold: float,
                  device) -> list[PreparedVolume]:
    """Target volumes labelled where Φ(x_t) and Φ(x_t→s) agree with mean confidence >= threshold, else -1 (ignored)."""
    out = []
    for v in vols:
        p_t, p_t2s = _predict_pair(seg, g_t2s, v, device)
        mean = 0.5 * (p_t + p_t2s)
        lab = mean.argmax(0)
        keep = (p_t.argmax(0) == p_t2s.argmax(0)) & (mean.max(0) >= threshold) & v.mask
        target = np.where(keep, lab, -1).astype(np.int64)
        target[~v.mask] = 0
        out.append(with_target(v, target))
    return out


# ----------------------------------------------------------------------------- driver
def adapt(source: Bundle, source_data: str | Path | list[Case], source_sequence: str, target: Any,
          target_sequence: str, config: AdaptConfig | None = None, *, device: str | torch.device = "auto",
          progress: ProgressFn | None = None, cancel: CancelFn | None = None,
          preview: PreviewFn | None = None, preview_every: int = 50,
          translators: tuple[Generator, Generator] | None = None,
          cache_dir: str | Path | None = None) -> AdaptResult:
    """Adapt ``source`` (trained with labels on ``source_sequence``) to unlabelled ``target_sequence`` images.

    ``source_data``: labelled cases (folder or list). ``target``: a folder of
    cases, a list of cases, or volumes/arrays (z, y, x) — only images are read.
    The source bundle is never modified (Φ is a copy); cancelling raises
    :class:`~bigl.progress.Cancelled` and leaves nothing behind. ``preview``
    gets ``(step, bundle)`` with a snapshot of Φ every ``preview_every`` steps.
    ``translators`` = (G_s→t, G_t→s) reuses an already trained stage 1 (the
    benchmark shares one translator between methods). ``cache_dir``: where
    preprocessed cases are kept (default: beside each dataset folder).
    """
    cfg = config or AdaptConfig()
    for name, seq in (("source", source_sequence), ("target", target_sequence)):
        if seq not in SEQUENCES:
            raise BiglError(f"unknown {name} sequence {seq!r}; use one of {', '.join(SEQUENCES)}")
    if len(source.sequences) != 1 or source.segmenter.config.in_channels != 1:
        # the translators make one slice of one sequence: a multi-sequence or 2.5D model cannot read their output
        raise BiglError(f"{source.path or 'the model'} reads {', '.join(source.sequences)} with "
                        f"{source.segmenter.config.in_channels} input channels; adaptation starts from a "
                        "single-sequence, single-slice model such as the bundled T1 model (bigl.bundles.T1_MODEL)")
    ddp, dev = distributed.setup(resolve_device(device))
    rng = seed_everything(cfg.seed)
    t0 = time.perf_counter()
    seg = copy.deepcopy(source.segmenter).to(dev)
    base = dict(sequences=(target_sequence,), source_sequence=source_sequence, normalization=source.normalization)

    def cached(cases: list[Case], sequence: str, labels: bool) -> list:
        if ddp.is_main:                 # rank 0 builds what is missing; the others then read it
            cache_cases(cases, sequence, labels=labels, cache_dir=cache_dir, progress=progress, cancel=cancel)
        distributed.barrier(ddp)
        return cache_cases(cases, sequence, labels=labels, cache_dir=cache_dir)

    src_cases = list_cases(source_data) if not isinstance(source_data, list) else source_data
    src = cached(src_cases, source_sequence, True)
    tgt = _prepare_target(target, target_sequence, cached)
    patch = patch_size_for(src + tgt, seg.stride)
    provenance = {"command": "adapt", "method": cfg.method, "source_bundle": str(source.path) if source.path else None,
                  "source_sequence": source_sequence, "target_sequence": target_sequence,
                  "source_cases": [c.case_id for c in src_cases], "target_cases": [v.name for v in tgt],
                  "config": jsonable(asdict(cfg)), "device": str(dev), "world_size": ddp.world_size}

    if cfg.method == "source-only":
        bundle = Bundle(segmenter=seg.eval(), patch_size=patch, provenance=provenance, **base)
        return AdaptResult(bundle, [], 0, [], time.perf_counter() - t0)

    g_s2t = g_t2s = None
    if translators is not None:
        g_s2t, g_t2s = translators
    elif cfg.method in ("bigl", "translate", "cycada") or cfg.self_train:
        g_s2t, g_t2s = train_translator(src, tgt, patch, cfg.translator, rng, dev, progress, cancel,
                                        segmenter=seg, workers=cfg.workers)
    sel_vols = tgt[:cfg.selection_volumes]
    # Only BiGL trains Φ on both x_t and x_t→s; CyCADA's Φ learns x_s→t and x_t, so its Φ(x_t→s) is no
    # second opinion: it segments directly and is selected by entropy, like the methods without a translator.
    two_views = g_t2s if cfg.method == "bigl" else None
    inference = "translate" if cfg.method == "translate" else cfg.inference if two_views is not None else "direct"
    if cfg.method == "translate":
        bundle = Bundle(segmenter=seg.eval(), patch_size=patch, provenance=provenance, translator_t2s=g_t2s,
                        translator_s2t=g_s2t, inference=inference, **base)
        return AdaptResult(bundle, [], 0, [], time.perf_counter() - t0)

    disc, teacher, opt_seg, opt_d = alignment_setup(seg, cfg, dev)
    # what trains under DDP in a torchrun job: Φ and each discriminator (same weights as seg and disc)
    seg_net = distributed.wrap(seg, ddp)
    disc_net = nn.ModuleDict({name: distributed.wrap(d, ddp) for name, d in disc.items()})
    # the model of record: Φ, or the moving average of its weights (cfg.weight_ema)
    kept = copy.deepcopy(seg).eval().requires_grad_(False) if cfg.weight_ema else seg

    def snapshot_bundle() -> Bundle:
        return Bundle(segmenter=copy.deepcopy(kept).eval().requires_grad_(True), patch_size=patch,
                      provenance=provenance, translator_t2s=g_t2s, translator_s2t=g_s2t, inference=inference, **base)

    snapshots: list[Snapshot] = []
    history: list[dict[str, float]] = []

    def take_snapshot(step: int, stage: str) -> None:
        score = distributed.broadcast(selection_score(kept, two_views, sel_vols, dev) if ddp.is_main else None, ddp)
        snapshots.append(Snapshot(step, stage, score, {k: v.detach().cpu().clone() for k, v in kept.state_dict().items()}))
        history.append({"step": step, "selection_score": score})
        log.info("%s step %d: selection score %.4f", stage, step, score)

    def run(stage: str, steps: int, pseudo_vols: list[PreparedVolume] | None, step0: int) -> None:
        report = Reporter(stage, steps, progress, cancel)

        def stream(volumes: list, fraction: float, which: int):
            return batches(shard(volumes, ddp.rank, ddp.world_size), patch, batch_size=cfg.batch_size,
                           n_batches=steps, seed=(cfg.seed, step0, which, ddp.rank), tumour_fraction=fraction,
                           jitter=cfg.jitter, augment=True, workers=cfg.workers, device=dev)

        source_it, target_it = stream(src, cfg.tumour_fraction, 0), stream(pseudo_vols or tgt, 0.0, 1)
        with closing(source_it), closing(target_it):
            for step, ((xs, ys), (xt, yt)) in enumerate(zip(source_it, target_it), start=1):
                poly_lr(opt_seg, cfg.lr, step - 1, steps, cfg.lr_power)
                pseudo = (yt, None) if pseudo_vols else None
                ramp = min(1.0, step / max(1.0, cfg.ramp_fraction * steps)) if pseudo is None else 1.0
                with distributed.precision(dev).autocast():
                    terms = alignment_step(seg_net, disc_net, opt_seg, opt_d, xs, ys, xt, g_s2t, g_t2s, cfg, ramp,
                                           pseudo, teacher if pseudo is None else None)
                if kept is not seg:
                    follow(kept, seg, cfg.weight_ema)
                report(step, **terms)
                if preview is not None and (step0 + step) % preview_every == 0:
                    preview(step0 + step, snapshot_bundle())
                if step % cfg.checkpoint_every == 0 or step == steps:
                    take_snapshot(step0 + step, stage)

    run("align", cfg.steps, None, 0)
    if cfg.self_train:
        if g_t2s is None:
            raise BiglError("self-training needs the translator (methods bigl or cycada)")
        for r in range(cfg.self_train_rounds):
            _load_best(seg, snapshots, cfg.select)
            kept.load_state_dict(seg.state_dict())
            plabeled = pseudo_labels(seg, g_t2s, tgt, cfg.pseudo_threshold, dev)
            covered = float(np.mean([(v.target >= 0)[v.mask].mean() for v in plabeled]))
            log.info("self-training round %d: %.1f %% of target brain voxels pseudo-labelled", r + 1, 100 * covered)
            history.append({"step": cfg.steps + r * cfg.self_train_steps, "pseudo_coverage": covered})
            run(f"self-train {r + 1}", cfg.self_train_steps, plabeled, cfg.steps + r * cfg.self_train_steps)
    chosen = _load_best(kept, snapshots, cfg.select)
    distributed.sync_buffers(kept, ddp)
    provenance |= {"steps": cfg.steps, "chosen_step": chosen, "selection": [
        {"step": s.step, "stage": s.stage, "score": s.score} for s in snapshots],
        "seconds": round(time.perf_counter() - t0, 1)}
    bundle = snapshot_bundle()
    return AdaptResult(bundle, snapshots, chosen, history, time.perf_counter() - t0)


def _load_best(seg: nn.Module, snapshots: list[Snapshot], select: bool) -> int:
    if not snapshots:
        return 0
    pick = max(snapshots, key=lambda s: s.score) if select else snapshots[-1]
    seg.load_state_dict(pick.state)
    return pick.step

