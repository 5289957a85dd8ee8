"""The adaptation driver: :func:`adapt` runs the stages for one method and returns the adapted bundle."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bigl import distributed
from bigl.adapt.alignment import alignment_setup, alignment_step
from bigl.adapt.config import AdaptConfig
from bigl.adapt.selection import Snapshot, _load_best, pseudo_labels, selection_score
from bigl.adapt.translator_stage import train_translator
from bigl.checkpoint import Bundle, jsonable
from bigl.data.cache import cache_cases
from bigl.data.slices import batches, shard
from bigl.errors import BiglError
from bigl.infer import resolve_device
from bigl.io import SEQUENCES, Case, Volume, list_cases, load_images
from bigl.models.translator import Generator
from bigl.preprocess import PreparedVolume, patch_size_for, prepare
from bigl.progress import CancelFn, ProgressFn, Reporter
from bigl.train import follow, poly_lr, seed_everything

log = logging.getLogger(__name__)


@dataclass
class AdaptResult:
    bundle: Bundle
    snapshots: list[Snapshot]
    chosen_step: int
    history: list[dict[str, float]]
    seconds: float


PreviewFn = Callable[[int, Bundle], None]


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
    cfg = cfg.for_source(source)
    ddp, dev = distributed.setup(resolve_device(device))
    rng = seed_everything(cfg.seed)
    t0 = time.perf_counter()
    seg = copy.deepcopy(source.segmenter).to(dev)
    if source.members:
        log.info("%s is an ensemble of %d segmenters: adaptation fine-tunes its first; the adapted bundle holds "
                 "that one", source.path or "the source model", len(source.segmenters))
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
                  "source_segmenters": len(source.segmenters), "config": jsonable(asdict(cfg)), "device": str(dev),
                  "world_size": ddp.world_size}

    if cfg.method == "source-only":
        bundle = Bundle(segmenter=seg.eval(), patch_size=patch, provenance=provenance, **base)
        return AdaptResult(bundle, [], 0, [], time.perf_counter() - t0)

    g_s2t = g_t2s = None
    if translators is not None:
        g_s2t, g_t2s = translators
    elif cfg.method in ("bigl", "translate", "cycada", "sifa") or cfg.self_train:
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

        # target slices: uniform over the brain, or, with pseudo-labels, a share from pseudo-tumour slices
        source_it = stream(src, cfg.tumour_fraction, 0)
        target_it = stream(pseudo_vols, cfg.tumour_fraction, 1) if pseudo_vols else stream(tgt, 0.0, 1)
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
            raise BiglError("self-training needs the translator (methods bigl, cycada or sifa)")
        for r in range(cfg.self_train_rounds):
            _load_best(seg, snapshots, cfg.select)
            kept.load_state_dict(seg.state_dict())
            plabeled = pseudo_labels(seg, g_t2s, tgt, cfg.pseudo_threshold, dev, inference=inference)
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
