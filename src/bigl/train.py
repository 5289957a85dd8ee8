"""Supervised training of the dual-attention U-Net on one or several input sequences (paper Stage 2 without
adaptation).

Data: a BraTS-layout dataset folder; cases are split (seeded, by subject) into
training and held-out validation cases. Training draws axial slices that
contain brain, oversampling slices with tumour, cut to a fixed in-plane window
around the brain (random offset); the input channels are the model's
sequences (and, for 2.5D models, neighbouring slices). Cases are read from the
preprocessed on-disk cache (:mod:`bigl.data.cache`, built on first use) slice by
slice through ``torch.utils.data`` worker processes (:mod:`bigl.data.slices`), so
memory does not grow with the number of cases, and augmented on the training
device (:mod:`bigl.data.augment`: spatial, intensity and optionally contrast
randomisation). Under ``torchrun`` each process trains a DistributedDataParallel
replica on its own shard of the cases; rank 0 alone validates and writes
(:mod:`bigl.distributed`). Loss:
cross-entropy + soft Dice of the WT/TC/ET regions (paper Eq. 4 with another Dice term). Optimiser: Adam with
polynomial learning-rate decay (power 0.9). Every ``val_every`` steps the
whole validation volumes are segmented and the mean WT/TC/ET Dice is
computed. The best model so far (the latest, with fewer than
``MIN_SELECTION_CASES`` validation cases) is kept at ``<out stem>.partial.safetensors``
and moved to ``out`` when training ends, the last model written beside it;
a cancelled or killed run leaves only the ``.partial`` file, nothing that
looks finished.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bigl._fs import check_output
from bigl.checkpoint import Bundle, jsonable, load_bundle, partial_path, promote_partial, save_bundle
from bigl.data.augment import CONTRAST_METHODS, AugmentConfig, augment_batch
from bigl.data.cache import cache_cases, load_prepared  # noqa: F401  (load_prepared, sample_batch: the
from bigl.data.slices import batches, sample_batch, shard  # noqa: F401  in-memory path scripts still import here)
from bigl import distributed
from bigl.errors import BiglError
from bigl.infer import predict_prepared, resolve_device
from bigl.io import SEQUENCES, Case, header_spacing, list_cases
from bigl.losses import DICE_KINDS, segmentation_loss
from bigl.metrics import evaluate_case, summarize
from bigl.models.attention import decay_groups
from bigl.models.segmenter import DualAttentionUNet, SegmenterConfig
from bigl.preprocess import NORMALIZATION, PreparedVolume, classes_to_labels, patch_size_for
from bigl.progress import CancelFn, ProgressFn, Reporter

log = logging.getLogger(__name__)

MIN_SELECTION_CASES = 4   # validation cases needed to choose the best checkpoint instead of keeping the last


@dataclass
class TrainConfig:
    """Supervised training settings. CPU defaults: 12 cases at 2 mm train in under 10 minutes on 2 cores."""

    steps: int = 2000
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-5
    lr_power: float = 0.9
    val_fraction: float = 0.2
    val_every: int = 250
    max_val_cases: int = 4
    tumour_fraction: float = 0.6      # share of slices drawn from slices with tumour
    jitter: int = 8                   # random in-plane offset of the window, pixels
    augment: bool = True              # on-the-fly augmentation (bigl.data.augment), configured by `augmentation`
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    workers: int = 1                  # data-loading worker processes (0: in the training process)
    # m > 0: validate, select and save a moving average of the weights (avg <- m·avg + (1-m)·weights after every
    # step) instead of the weights themselves; 0: the weights
    weight_ema: float = 0.0
    dice: str = "regions"             # soft Dice over the WT/TC/ET regions or over the tumour classes (bigl.losses)
    deep_supervision: bool = False    # also supervise the coarser decoder levels (DeepSupervised)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)  # in_channels is set from the sequences

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "val_every", "max_val_cases"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BiglError(f"training setting {name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise BiglError(f"training setting lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.weight_ema < 1.0:
            raise BiglError(f"training setting weight_ema must be in [0, 1), got {self.weight_ema!r}")
        if self.dice not in DICE_KINDS:
            raise BiglError(f"training setting dice must be one of {', '.join(DICE_KINDS)}, got {self.dice!r}")
        if self.augmentation.contrast_method not in CONTRAST_METHODS:
            raise BiglError(f"contrast augmentation must be one of {', '.join(CONTRAST_METHODS)}, "
                            f"got {self.augmentation.contrast_method!r}")


@dataclass
class TrainResult:
    bundle: Bundle                    # the model written to `out`: the best by validation Dice, or the last
    best_path: Path
    last_path: Path
    history: list[dict[str, float]]
    best_dice: float
    seconds: float
    written: str = "best"             # what `out` holds: "best" (selected by validation) or "last"


class DeepSupervised(nn.Module):
    """Φ with a 1x1 head on each coarser decoder level, for training only (nnU-Net's deep supervision).

    ``forward`` gives the logits of every level, finest (Φ's own output) first;
    the heads are not part of Φ, so the saved bundle is the plain segmenter.
    """

    def __init__(self, net: DualAttentionUNet) -> None:
        super().__init__()
        self.net = net
        # decoder levels fine to coarse are widths[:-1]; the finest has Φ's own head, the others get one here
        self.heads = nn.ModuleList(nn.Conv2d(w, net.config.head_channels, 1) for w in net.config.widths[1:-1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.net(x, return_extras=True)
        coarser = out.decoder[-2::-1]      # fine to coarse, without the finest
        return [out.logits] + [self.net.to_logits(head(h)) for head, h in zip(self.heads, coarser)]


def deep_supervision_loss(outputs: list[torch.Tensor], target: torch.Tensor, dice: str) -> torch.Tensor:
    """L_seg of each level against the target at its resolution (nearest neighbour), weights 1, 1/2, 1/4... normalised.

    With one output (no deep supervision) it is :func:`~bigl.losses.segmentation_loss` itself.
    """
    weights = [0.5 ** i for i in range(len(outputs))]
    total = 0.0
    for w, logits in zip(weights, outputs):
        step = target.shape[-1] // logits.shape[-1]
        total = total + w * segmentation_loss(logits, target[:, ::step, ::step], dice=dice)
    return total / sum(weights)


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def split_cases(cases: list[Case], val_fraction: float, seed: int,
                max_val: int | None = None) -> tuple[list[Case], list[Case]]:
    """Seeded subject-level split into (train, validation); at least one case each when there are two or more.

    ``max_val`` caps the validation cases; the cases over the cap train.
    """
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = int(round(len(cases) * val_fraction))
    if max_val is not None:
        n_val = min(n_val, max_val)
    n_val = min(max(n_val, 1 if len(cases) > 1 else 0), len(cases) - 1)
    val = [cases[i] for i in sorted(order[:n_val])]
    train = [cases[i] for i in sorted(order[n_val:])]
    return train, val


def validate(model: DualAttentionUNet, volumes: list[PreparedVolume], spacings: list[tuple[float, float, float]],
             device: torch.device) -> dict[str, float]:
    """Whole-volume Dice/HD95 on labelled volumes (the same inference path as `bigl segment`)."""
    per_case = []
    for v, spacing in zip(volumes, spacings):
        probs, _ = predict_prepared(model, v, device=device, with_attention=False)
        per_case.append(evaluate_case(classes_to_labels(probs.argmax(0)), classes_to_labels(v.target), spacing))
    s = summarize(per_case)
    return {f"{r}_dice": s[r]["dice_mean"] for r in ("WT", "TC", "ET", "average")} | {
        "average_hd95": s["average"]["hd95_mean"]}


def follow(average: torch.nn.Module, model: torch.nn.Module, momentum: float) -> None:
    """EMA update: average's parameters <- momentum·average + (1-momentum)·model; buffers (BatchNorm statistics) copied."""
    with torch.no_grad():
        for a, m in zip(average.parameters(), model.parameters(), strict=True):
            a.lerp_(m, 1.0 - momentum)
        for a, m in zip(average.buffers(), model.buffers(), strict=True):
            a.copy_(m)


def poly_lr(optimizer: torch.optim.Optimizer, base_lr: float, step: int, total: int, power: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * (1 - step / total) ** power


def _sequences(sequences: str | Sequence[str]) -> tuple[str, ...]:
    """One or several distinct sequence keys as a tuple (the model's channel order), or a BiglError."""
    seqs = (sequences,) if isinstance(sequences, str) else tuple(sequences)
    bad = [q for q in seqs if q not in SEQUENCES]
    if not seqs or bad or len(set(seqs)) != len(seqs):
        raise BiglError(f"sequences {list(seqs)}: give one or more distinct sequences from {', '.join(SEQUENCES)}")
    return seqs


def train(data: str | Path | list[Case], sequences: str | Sequence[str], out: str | Path,
          config: TrainConfig | None = None, *, device: str | torch.device = "auto", overwrite: bool = False,
          progress: ProgressFn | None = None, cancel: CancelFn | None = None,
          cache_dir: str | Path | None = None, init: str | Path | Bundle | None = None) -> TrainResult:
    """Train a segmenter on ``sequences`` (one, or several as input channels) of a labelled dataset.

    ``init``: start from this bundle's network (fine-tuning; its architecture replaces
    ``config.segmenter`` and must read as many input channels as ``sequences`` give).

    The best model by validation Dice (with fewer than ``MIN_SELECTION_CASES``
    validation cases: the last) goes to ``out`` (must end in
    ``.safetensors``), the last to ``<out stem>.last.safetensors``, when
    training ends; until then the best so far is ``<out stem>.partial.safetensors``.
    Cancelling (``cancel()`` true) stops at the next step, leaves only that
    partial file and raises :class:`~bigl.progress.Cancelled`. ``cache_dir``:
    where the preprocessed cases are kept (default: beside the dataset folder,
    :func:`bigl.data.cache.default_cache_dir`).
    """
    cfg = config or TrainConfig()
    seqs = _sequences(sequences)
    start = init if isinstance(init, Bundle) or init is None else load_bundle(init)
    if start is not None:
        cfg = replace(cfg, segmenter=start.segmenter.config)
    context = cfg.segmenter.context_slices
    seg_cfg = replace(cfg.segmenter, in_channels=len(seqs) * (2 * context + 1))
    if start is not None and start.segmenter.config.in_channels != seg_cfg.in_channels:
        raise BiglError(f"{start.path or 'the initial model'} reads {start.segmenter.config.in_channels} input "
                        f"channel(s) ({', '.join(start.sequences)}); training on {', '.join(seqs)} needs "
                        f"{seg_cfg.in_channels}: start from a model of as many sequences, or leave out --init")
    out = Path(out)
    last_out = out.with_name(out.stem + ".last.safetensors")
    for p in (out, last_out):
        check_output(p, suffix=".safetensors", overwrite=overwrite, what="model bundle")
    cases = list_cases(data) if not isinstance(data, list) else data
    if len(cases) < 2:
        raise BiglError(f"{data}: training needs at least 2 labelled cases (one is held out for validation)")
    missing = [c.case_id for c in cases if not c.has_labels]
    if missing:
        raise BiglError(f"{data}: cases without a seg file cannot be used for supervised training: {missing[:5]}")
    lacking = [c.case_id for c in cases if not set(seqs) <= set(c.sequences)]
    if lacking:
        raise BiglError(f"{data}: cases without every sequence of {', '.join(seqs)}: {lacking[:5]}; "
                        "remove them or train on sequences every case has")
    ddp, dev = distributed.setup(resolve_device(device))
    seed_everything(cfg.seed)
    t0 = time.perf_counter()

    train_cases, val_cases = split_cases(cases, cfg.val_fraction, cfg.seed, cfg.max_val_cases)
    log.info("training on %d cases, validating on %d (%s)", len(train_cases), len(val_cases), ", ".join(seqs))
    # the resolution the model learns at: the training cases' median in-plane spacing; others are brought to it
    inplane = tuple(float(v) for v in np.median([header_spacing(c.files[seqs[0]])[1:] for c in train_cases], axis=0))

    def cached(cases: list[Case]) -> list:
        return cache_cases(cases, seqs, labels=True, inplane_mm=inplane, cache_dir=cache_dir, progress=progress,
                           cancel=cancel)

    if ddp.is_main:                    # rank 0 builds what is missing; the others then read it
        cached(train_cases + val_cases)
    distributed.barrier(ddp)
    train_vols, val_vols = cached(train_cases), cached(val_cases)
    val_spacing = [v.spacing for v in val_vols]
    normalization = NORMALIZATION | {"inplane_spacing_mm": list(inplane)}

    model = DualAttentionUNet(seg_cfg).to(dev)
    if start is not None:
        model.load_state_dict(start.segmenter.state_dict())
    patch = patch_size_for(train_vols, model.stride)
    trained = DeepSupervised(model).to(dev) if cfg.deep_supervision else model
    optimizer = torch.optim.Adam(decay_groups(trained, cfg.weight_decay), lr=cfg.lr)
    net = distributed.wrap(trained, ddp)         # trains; `model` (the same weights) validates and is saved
    # the model of record, validated and saved: the weights, or their moving average (cfg.weight_ema)
    kept = copy.deepcopy(model).requires_grad_(False) if cfg.weight_ema else model
    if ddp.active:
        torch.manual_seed(cfg.seed + ddp.rank)   # each rank its own augmentation
    precision = distributed.Precision(dev)
    provenance = {"command": "train", "data": str(data if not isinstance(data, list) else cases[0].path.parent),
                  "train_cases": [c.case_id for c in train_cases], "val_cases": [c.case_id for c in val_cases],
                  "sequences": list(seqs), "config": jsonable(asdict(replace(cfg, segmenter=seg_cfg))),
                  "device": str(dev), "world_size": ddp.world_size,
                  "init": None if start is None else str(start.path or "a bundle in memory")}

    def make_bundle(step: int, metrics: dict[str, float]) -> Bundle:
        return Bundle(segmenter=kept, sequences=seqs, patch_size=patch, normalization=normalization,
                      provenance=provenance | {"steps": step, "val_metrics": metrics,
                                               "seconds": round(time.perf_counter() - t0, 1)})

    history: list[dict[str, float]] = []
    best = -1.0
    # Choosing among checkpoints by the Dice of one or two validation cases picked a worse model than the last
    # in 4 of 6 measured 12-case runs (docs/training.md): with fewer cases the last model is kept.
    select = len(val_vols) >= MIN_SELECTION_CASES
    written = "best" if select else "last"
    if ddp.is_main and not select:
        log.info("%d validation case(s): keeping the last model (selection needs %d)", len(val_vols),
                 MIN_SELECTION_CASES)
    report = Reporter("train", cfg.steps, progress, cancel)
    running = 0.0
    # Worker processes cut the next batches while the network trains; every random choice is drawn
    # in this process from the seed (and rank), so a seed gives the same batches with any worker count.
    data_iter = batches(shard(train_vols, ddp.rank, ddp.world_size), patch, batch_size=cfg.batch_size,
                        n_batches=cfg.steps, seed=(cfg.seed, ddp.rank), tumour_fraction=cfg.tumour_fraction,
                        jitter=cfg.jitter, augment=False, context=context, workers=cfg.workers, device=dev)
    with closing(data_iter):
        for step, (x, y) in enumerate(data_iter, start=1):
            net.train()
            poly_lr(optimizer, cfg.lr, step - 1, cfg.steps, cfg.lr_power)
            if cfg.augment:
                x, y = augment_batch(x, y, cfg.augmentation)
            with precision.autocast():
                logits = net(x)        # or, under deep supervision, the logits of every level
                loss = deep_supervision_loss(logits if cfg.deep_supervision else [logits], y, cfg.dice)
            if not torch.isfinite(loss):   # stop at once: every later step would train on NaN weights
                raise BiglError(f"training diverged at step {step} (loss {loss.item()}); the best model so far is "
                                f"{partial_path(out)} — retrain with a lower --lr or report this as a bug")
            optimizer.zero_grad(set_to_none=True)
            precision.backward(loss)
            precision.step(optimizer)
            precision.update()
            if cfg.weight_ema:
                follow(kept, model, cfg.weight_ema)
            running = 0.9 * running + 0.1 * loss.item() if step > 1 else loss.item()
            metrics = {"loss": running}
            if ddp.is_main and (step % cfg.val_every == 0 or step == cfg.steps):
                metrics |= validate(kept, val_vols, val_spacing, dev)
                history.append({"step": step} | metrics)
                log.info("step %d %s", step, {k: round(v, 4) for k, v in metrics.items()})
                if metrics["average_dice"] > best or not select:
                    best = max(best, metrics["average_dice"])
                    save_bundle(make_bundle(step, metrics), partial_path(out), overwrite=True)
            report(step, **metrics)      # raises Cancelled when asked to stop: only the .partial file stays
    distributed.sync_buffers(model, ddp)
    if cfg.weight_ema:
        distributed.sync_buffers(kept, ddp)
    if not ddp.is_main:                 # rank 0 writes; the others hand back their (identical) weights
        distributed.barrier(ddp)
        return TrainResult(make_bundle(cfg.steps, {}), out, last_out, history, best, time.perf_counter() - t0,
                           written)
    save_bundle(make_bundle(cfg.steps, history[-1]), last_out, overwrite=True)
    promote_partial(out)
    distributed.barrier(ddp)
    return TrainResult(load_bundle(out, device=dev), out, last_out, history, best, time.perf_counter() - t0,
                       written)
