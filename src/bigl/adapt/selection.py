"""Without target labels: the snapshot to keep (:func:`selection_score`, the agreement of Φ(x_t) and Φ(x_t→s),
or prediction entropy for methods without a translator) and self-training's pseudo-labels (:func:`pseudo_labels`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bigl.data.cache import with_target
from bigl.infer import MIN_LESION_ML, predict_prepared, remove_small_lesions
from bigl.metrics import REGIONS, region_mask
from bigl.models.segmenter import DualAttentionUNet
from bigl.models.translator import Generator
from bigl.preprocess import PreparedVolume, classes_to_labels


@dataclass
class Snapshot:
    step: int
    stage: str
    score: float                       # unsupervised selection score (higher is better)
    state: dict[str, torch.Tensor]     # Φ weights on CPU


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
                  device, inference: str = "translate", min_lesion_ml: float = MIN_LESION_ML) -> list[PreparedVolume]:
    """Target volumes labelled by the adapted model as its bundle segments, filtered (crossMoDA-style).

    The label of a voxel is the argmax of ``inference``'s softmax (``"direct"`` Φ(x_t), ``"translate"``
    Φ(x_t→s), ``"ensemble"`` their mean); voxels under ``threshold`` confidence are -1 (ignored by the loss),
    and whole-tumour components under ``min_lesion_ml`` become background, as :func:`bigl.infer.segment_volume`
    removes them. Requiring Φ(x_t) and Φ(x_t→s) to agree instead (the previous rule) left almost no tumour
    while Φ(x_t) is the weaker view (docs/adaptation.md).
    """
    out = []
    for v in vols:
        p, _ = predict_prepared(seg, v, device=device, with_attention=False, mode=inference,
                                translator=None if inference == "direct" else g_t2s)
        classes = p.argmax(0)
        if v.spacing is not None:
            kept = remove_small_lesions(classes_to_labels(classes), v.spacing, min_lesion_ml) > 0
            classes = np.where(kept, classes, 0)
        target = np.where((p.max(0) >= threshold) & v.mask, classes, -1).astype(np.int64)
        target[~v.mask] = 0
        out.append(with_target(v, target))
    return out


def _load_best(seg: nn.Module, snapshots: list[Snapshot], select: bool) -> int:
    if not snapshots:
        return 0
    pick = max(snapshots, key=lambda s: s.score) if select else snapshots[-1]
    seg.load_state_dict(pick.state)
    return pick.step

