"""Configuration of BiGL and the baselines: stage 1 (:class:`TranslatorTrainConfig`), stage 2 and beyond
(:class:`AdaptConfig`). Choices the paper leaves open are documented in docs/adaptation.md."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from bigl.errors import BiglError
from bigl.losses import DICE_KINDS
from bigl.models.discriminators import PatchDiscriminatorConfig
from bigl.models.translator import TranslatorConfig

METHODS = ("bigl", "adaptseg", "translate", "cycada", "sifa", "source-only")


@dataclass
class TranslatorTrainConfig:
    """Stage 1: the bidirectional translator (trained first, then frozen)."""

    steps: int = 1000
    batch_size: int = 4
    lr: float = 5e-4
    lambda_cyc: float = 10.0
    lambda_id: float = 0.0        # off: T1 and T2 invert contrasts, and with it the generators collapsed to identity
    # The generators also match the brain-intensity distribution of the domain they imitate (the 1-D
    # Wasserstein distance the starts are screened by, as a loss; 0 turns it off). Measured against 0
    # (docs/results.md, one seed each): FLAIR -> T1 BiGL 0.1 -> 11.6 % (SIFA-style 0 -> 23), T2 -> T1 36.7 ->
    # 39.1, T1 -> T2 34.4 -> 33.5 (SIFA-style 30.4 -> 35.1), T1 -> FLAIR unchanged (about 1 %).
    lambda_hist: float = 5.0
    source_tumour_fraction: float = 0.0   # >0: source slices drawn from tumour slices (target: uniform), see docs
    label_conditioned: bool = True  # G_s→t also reads the source label map (target cycle: Φ_0's softmax of x_t→s)
    paired: bool = False          # Eq. 1's L1 to the real target image; needs co-registered same-subject pairs
    lambda_paired: float = 10.0
    # A *local* generator (no downsampling, 3x3 convs, 9-pixel receptive field): MR sequences differ
    # mostly in per-tissue contrast, and a small field cannot invent or move anatomy. It trains
    # reliably in 1000 CPU steps where the CycleGAN ResNet generator did not (docs/results.md).
    # Width 16 for generators and discriminators (32 before 2026-12-02): half of stage 1's time, translate-only
    # 30.5 against 30.4 (T1 -> T2) and 27.6 against 29.6 (T2 -> T1) on another generator (docs/results.md).
    translator: TranslatorConfig = field(default_factory=lambda: TranslatorConfig(
        width=16, n_down=0, n_res_blocks=1, kernel=3, norm="none"))
    discriminator: PatchDiscriminatorConfig = field(default_factory=lambda: PatchDiscriminatorConfig(width=16))
    # Several starts, screened without target labels: from a random initialisation the generators
    # settle on a contrast polarity within ~100 steps and keep it; the wrong one (T2's bright CSF kept
    # bright in "T1") never recovers. Starts come in pairs: one initialisation and its negated output.
    starts: int = 4
    screen_steps: int = 100       # steps every start trains before the best one continues to `steps`
    screen_slices: int = 16       # fixed slices per domain the starts are scored on
    # A start that learnt nothing stays close to the identity map (T2 left looking like T2): its score is
    # then near the identity map's own. While no start scores under identity_margin x that, another start
    # is screened, up to max_starts in all (docs/adaptation.md).
    identity_margin: float = 0.8
    max_starts: int = 8

    def __post_init__(self) -> None:
        if not self.lambda_hist >= 0.0:
            raise BiglError(f"translator lambda_hist must be >= 0, got {self.lambda_hist!r}")
        if not 0.0 < self.identity_margin <= 1.0:
            raise BiglError(f"translator identity_margin must be in (0, 1], got {self.identity_margin!r}")
        if not isinstance(self.max_starts, int) or self.max_starts < self.starts:
            raise BiglError(f"translator max_starts must be an integer >= starts ({self.starts}), "
                            f"got {self.max_starts!r}")
        for name in ("starts", "screen_slices"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise BiglError(f"translator {name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.screen_steps, int) or self.screen_steps < 0:
            raise BiglError(f"translator screen_steps must be a non-negative integer, got {self.screen_steps!r}")


@dataclass
class AdaptConfig:
    """Stage 2 and beyond. Paper defaults where the paper gives them (Eq. 10, Sec. 4.1)."""

    method: str = "bigl"
    # 400 steps of 4 slices per stream (600 of 6 before 2026-12-02; with stage 1's width 16, `bigl adapt` went from
    # 25 to 14 minutes on the 2-core CPU): level on T1 -> T2, -2 points on T2 -> T1 (docs/results.md).
    steps: int = 400
    batch_size: int = 4           # per stream; BiGL runs 5 streams per step
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
    # Φ(x_t→s) (test DSC 39 -> 1 at lr 1e-4, docs/results.md). With the anchor it no longer does, but over three
    # T1 -> T2 seeds lambda_seg_s2t = 1 took the bundle from 44.7 to 42.6 % at best (Φ(x_t) 17 -> 40; docs/results.md).
    # lambda_anchor: Φ(x_t) and Φ(x_t→s) are fitted to the frozen source model's softmax of x_t→s (Φ_0(x_t→s),
    # the translate-only prediction).
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
    # "ensemble" the mean of both softmaxes. With the instance-normalised models of this version, T1 → T2:
    # direct 10.8, ensemble 26.3, translate 33.0 % mean Dice (docs/adaptation.md); with the previous
    # version's models ensemble was 3.3 points above direct on three seeds (docs/results.md).
    # Methods other than BiGL (and translate-only) always segment directly.
    inference: str = "translate"
    # Soft Dice of L_seg (bigl.losses): "classes" or "regions"; None: the one the source model was trained with
    # (its provenance; "classes" for models that do not say), so adaptation keeps optimising what it learnt.
    dice: str | None = None
    # Lesion contrast on the source stream (bigl.data.augment.lesion_contrast): the share of source slices whose
    # tumour classes are brightened or darkened at random, so Φ keeps reading a lesion by its shape while it is
    # aligned. None: the source model's own training share (its provenance; 0 for models that do not say).
    lesion_contrast: float | None = None
    # BiGL's round-trip stream (beyond the paper; docs/adaptation.md): L_seg, weighted lambda_round_trip, on
    # G_t→s(x_s→t with each tumour class moved by its own offset of up to ±round_trip_shift brain SDs) with y_s.
    # An unpaired translator renders normal tissue faithfully but a lesion only as well as the lesion's small
    # share of the images taught it; this shows Φ how G_t→s renders a labelled lesion of any brightness in the
    # target sequence, the one it meets in real x_t→s among them. 0: off.
    lambda_round_trip: float = 1.0
    round_trip_shift: float = 2.5
    seed: int = 0
    workers: int = 1              # data-loading worker processes per stream (0: in the training process)
    translator: TranslatorTrainConfig = field(default_factory=TranslatorTrainConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BiglError(f"unknown adaptation method {self.method!r}; choose one of {', '.join(METHODS)}")
        for name in ("anchor_ema", "weight_ema"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise BiglError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.dice not in (None, *DICE_KINDS):
            raise BiglError(f"unknown Dice kind {self.dice!r}; use {' or '.join(DICE_KINDS)} (or None: the source "
                            "model's)")
        if self.lesion_contrast is not None and not 0.0 <= self.lesion_contrast <= 1.0:
            raise BiglError(f"lesion_contrast must be in [0, 1] (or None: the source model's), "
                            f"got {self.lesion_contrast!r}")
        if self.lambda_round_trip < 0 or self.round_trip_shift < 0:
            raise BiglError(f"lambda_round_trip and round_trip_shift must be >= 0, got {self.lambda_round_trip!r} "
                            f"and {self.round_trip_shift!r}")
        if self.inference not in ("direct", "translate", "ensemble"):
            raise BiglError(f"unknown inference mode {self.inference!r}; use direct, translate or ensemble")

    def for_source(self, source) -> AdaptConfig:
        """This config with ``dice`` and ``lesion_contrast`` resolved for the source bundle: what it was trained
        with where they are None."""
        trained = (source.provenance or {}).get("config", {})
        dice = self.dice if self.dice is not None else trained.get("dice", "classes")
        lesion = (self.lesion_contrast if self.lesion_contrast is not None
                  else float((trained.get("augmentation") or {}).get("p_lesion_contrast", 0.0)))
        return replace(self, dice=dice, lesion_contrast=lesion)

