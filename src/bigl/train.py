"""Supervised training of the dual-attention U-Net on one input sequence (paper Stage 2 without adaptation).

Data: a BraTS-layout dataset folder; cases are split (seeded, by subject) into
training and held-out validation cases. Training draws axial slices that
contain brain, oversampling slices with tumour, cut to a fixed in-plane window
around the brain (random offset), with light augmentation (left-right flip,
intensity scale/shift inside the brain). Loss: cross-entropy + generalised
Dice (paper Eq. 4). Optimiser: Adam with polynomial learning-rate decay
(power 0.9). Every ``val_every`` steps the whole validation volumes are
segmented and the mean WT/TC/ET Dice is computed; the best model by that Dice
and the last model are both saved as bundles.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from bigl.checkpoint import Bundle, jsonable, load_bundle, save_bundle
from bigl.errors import BiglError
from bigl.infer import predict_prepared, resolve_device
from bigl.io import Case, list_cases, load_images, load_labels
from bigl.losses import segmentation_loss
from bigl.metrics import evaluate_case, summarize
from bigl.models.segmenter import DualAttentionUNet, SegmenterConfig
from bigl.preprocess import (NORMALIZATION, PreparedVolume, SliceSampler, classes_to_labels, crop_or_pad_2d,
                             patch_size_for, prepare)
from bigl.progress import Cancelled, CancelFn, ProgressFn, Reporter

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Supervised training settings. CPU defaults reach a useful model on the sample cases in minutes."""

    steps: int = 800
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-5
    lr_power: float = 0.9
    val_fraction: float = 0.2
    val_every: int = 200
    max_val_cases: int = 4
    tumour_fraction: float = 0.6      # share of slices drawn from slices with tumour
    jitter: int = 8                   # random in-plane offset of the window, pixels
    augment: bool = True
    seed: int = 0
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)


@dataclass
class TrainResult:
    bundle: Bundle                    # the best model by validation Dice
    best_path: Path
    last_path: Path
    history: list[dict[str, float]]
    best_dice: float
    seconds: float


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def split_cases(cases: list[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """Seeded subject-level split into (train, validation); at least one case each when there are two or more."""
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = int(round(len(cases) * val_fraction))
    n_val = min(max(n_val, 1 if len(cases) > 1 else 0), len(cases) - 1)
    val = [cases[i] for i in sorted(order[:n_val])]
    train = [cases[i] for i in sorted(order[n_val:])]
    return train, val


def load_prepared(cases: list[Case], sequence: str, *, labels: bool) -> list[PreparedVolume]:
    """Read and normalise one sequence (and, if asked, the labels) of each case."""
    out = []
    for case in cases:
        image = load_images(case, [sequence])[sequence].data
        seg = load_labels(case).data if labels else None
        out.append(prepare(image, seg, name=case.case_id))
    return out


def sample_batch(volumes: list[PreparedVolume], sampler: SliceSampler, patch: tuple[int, int], batch_size: int,
                 rng: np.random.Generator, *, jitter: int, augment: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch of (image (B,1,H,W), target (B,H,W) or None) windows from random brain slices."""
    images, targets = [], []
    for _ in range(batch_size):
        i, k = sampler.sample(rng)
        v = volumes[i]
        cy, cx = v.brain_center
        center = (cy + rng.integers(-jitter, jitter + 1), cx + rng.integers(-jitter, jitter + 1)) if jitter else (cy, cx)
        img = crop_or_pad_2d(v.image[k], center, patch)
        tgt = crop_or_pad_2d(v.target[k], center, patch) if v.target is not None else None
        if augment:
            if rng.random() < 0.5:
                img = img[:, ::-1]
                tgt = tgt[:, ::-1] if tgt is not None else None
            inside = img != 0
            img = np.where(inside, img * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1), 0)
        images.append(np.ascontiguousarray(img, dtype=np.float32))
        if tgt is not None:
            targets.append(np.ascontiguousarray(tgt))
    x = torch.from_numpy(np.stack(images))[:, None]
    y = torch.from_numpy(np.stack(targets)) if targets else None
    return x, y


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


def poly_lr(optimizer: torch.optim.Optimizer, base_lr: float, step: int, total: int, power: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * (1 - step / total) ** power


def train(data: str | Path | list[Case], sequence: str, out: str | Path, config: TrainConfig | None = None, *,
          device: str | torch.device = "auto", overwrite: bool = False,
          progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> TrainResult:
    """Train a segmenter on ``sequence`` of a labelled dataset; save best to ``out`` and last beside it.

    ``out`` must end in ``.safetensors``; the last checkpoint goes to
    ``<out stem>.last.safetensors``. Cancelling (``cancel()`` true) stops at the
    next step and raises :class:`~bigl.progress.Cancelled`; checkpoints already
    written stay valid.
    """
    cfg = config or TrainConfig()
    out = Path(out)
    last_out = out.with_name(out.stem + ".last.safetensors")
    for p in (out, last_out):
        if p.exists() and not overwrite:
            raise BiglError(f"{p} already exists; pass --overwrite to replace it or choose another --out")
    cases = list_cases(data) if not isinstance(data, list) else data
    if len(cases) < 2:
        raise BiglError(f"{data}: training needs at least 2 labelled cases (one is held out for validation)")
    missing = [c.case_id for c in cases if not c.has_labels]
    if missing:
        raise BiglError(f"{data}: cases without a seg file cannot be used for supervised training: {missing[:5]}")
    dev = resolve_device(device)
    rng = seed_everything(cfg.seed)
    t0 = time.perf_counter()

    train_cases, val_cases = split_cases(cases, cfg.val_fraction, cfg.seed)
    val_cases = val_cases[:cfg.max_val_cases]
    log.info("training on %d cases, validating on %d (%s)", len(train_cases), len(val_cases), sequence)
    train_vols = load_prepared(train_cases, sequence, labels=True)
    val_vols = load_prepared(val_cases, sequence, labels=True)
    val_spacing = [load_labels(c).spacing for c in val_cases]

    model = DualAttentionUNet(cfg.segmenter).to(dev)
    patch = patch_size_for(train_vols, model.stride)
    sampler = SliceSampler(train_vols, cfg.tumour_fraction)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    provenance = {"command": "train", "data": str(data if not isinstance(data, list) else cases[0].path.parent),
                  "train_cases": [c.case_id for c in train_cases], "val_cases": [c.case_id for c in val_cases],
                  "sequence": sequence, "config": jsonable(asdict(cfg)), "device": str(dev)}

    def make_bundle(step: int, metrics: dict[str, float]) -> Bundle:
        return Bundle(segmenter=model, sequences=(sequence,), patch_size=patch, normalization=NORMALIZATION,
                      provenance=provenance | {"steps": step, "val_metrics": metrics,
                                               "seconds": round(time.perf_counter() - t0, 1)})

    history: list[dict[str, float]] = []
    best = -1.0
    report = Reporter("train", cfg.steps, progress, cancel)
    running = 0.0
    for step in range(1, cfg.steps + 1):
        model.train()
        poly_lr(optimizer, cfg.lr, step - 1, cfg.steps, cfg.lr_power)
        x, y = sample_batch(train_vols, sampler, patch, cfg.batch_size, rng, jitter=cfg.jitter, augment=cfg.augment)
        loss = segmentation_loss(model(x.to(dev)), y.to(dev))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running = 0.9 * running + 0.1 * loss.item() if step > 1 else loss.item()
        metrics = {"loss": running}
        if step % cfg.val_every == 0 or step == cfg.steps:
            metrics |= validate(model, val_vols, val_spacing, dev)
            history.append({"step": step} | metrics)
            log.info("step %d %s", step, {k: round(v, 4) for k, v in metrics.items()})
            if metrics["average_dice"] > best:
                best = metrics["average_dice"]
                save_bundle(make_bundle(step, metrics), out, overwrite=True)
        try:
            report(step, **metrics)
        except Cancelled:
            save_bundle(make_bundle(step, history[-1] if history else {}), last_out, overwrite=True)
            raise
    save_bundle(make_bundle(cfg.steps, history[-1]), last_out, overwrite=True)
    return TrainResult(load_bundle(out, device=dev), out, last_out, history, best, time.perf_counter() - t0)

