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

Modules, in the order the method runs:

- :mod:`~bigl.adapt.config`: :class:`TranslatorTrainConfig` (stage 1) and :class:`AdaptConfig` (stage 2 and
  beyond), the method names (:data:`METHODS`).
- :mod:`~bigl.adapt.translator_stage`: stage 1, the bidirectional translator and its screened starts.
- :mod:`~bigl.adapt.alignment`: stage 2, one alternating update of Φ and the output-, feature- and
  attention-level discriminators; the AdaptSegNet and CyCADA baselines are its output-space branch.
- :mod:`~bigl.adapt.selection`: the two-view agreement of Φ(x_t) and Φ(x_t→s): unsupervised snapshot
  selection and the self-training pseudo-labels.
- :mod:`~bigl.adapt.driver`: :func:`adapt`, which runs the stages for a method (source-only and
  translate-only stop after stage 1), snapshots, self-trains and returns the adapted bundle.
"""

from bigl.adapt.alignment import alignment_setup, alignment_step
from bigl.adapt.config import METHODS, AdaptConfig, TranslatorTrainConfig
from bigl.adapt.driver import AdaptResult, PreviewFn, adapt
from bigl.adapt.selection import (
    Snapshot,
    prediction_agreement,
    pseudo_labels,
    selection_score,
)
from bigl.adapt.translator_stage import (
    intensity_distance,
    source_to_target,
    train_translator,
    translation_distance,
    tumour_condition,
)

__all__ = [
    "METHODS",
    "AdaptConfig",
    "AdaptResult",
    "PreviewFn",
    "Snapshot",
    "TranslatorTrainConfig",
    "adapt",
    "alignment_setup",
    "alignment_step",
    "intensity_distance",
    "prediction_agreement",
    "pseudo_labels",
    "selection_score",
    "source_to_target",
    "train_translator",
    "translation_distance",
    "tumour_condition",
]
