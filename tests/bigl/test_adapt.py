import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bigl.adapt.alignment

from bigl.adapt import AdaptConfig, TranslatorTrainConfig, adapt, pseudo_labels
from bigl.checkpoint import load_bundle, save_bundle
from bigl.errors import BiglError
from bigl.infer import segment_volume
from bigl.io import list_cases, load_images
from bigl.models.discriminators import PatchDiscriminatorConfig
from bigl.models.translator import TranslatorConfig
from bigl.progress import Cancelled

TINY_TRANSLATOR = TranslatorTrainConfig(steps=2, batch_size=2, translator=TranslatorConfig(width=8, n_res_blocks=1))


def _cfg(**kw):
    base = dict(steps=2, batch_size=2, checkpoint_every=1, selection_volumes=1, translator=TINY_TRANSLATOR)
    return AdaptConfig(**(base | kw))


@pytest.fixture()
def split(tiny_dataset):
    cases = list_cases(tiny_dataset)
    return cases[:2], cases[2:]


def test_one_step_changes_segmenter_and_discriminators(tiny_bundle_path, split, monkeypatch):
    from bigl.adapt import alignment

    source = load_bundle(tiny_bundle_path)
    before = {k: v.clone() for k, v in source.segmenter.state_dict().items()}
    seen = {}
    real = alignment._alignment_discriminators

    def spy(seg, cfg, device):
        disc = real(seg, cfg, device)
        seen["disc"] = disc
        seen["before"] = {k: v.clone() for k, v in disc.state_dict().items()}
        return disc

    monkeypatch.setattr(alignment, "_alignment_discriminators", spy)   # what alignment_setup calls
    res = adapt(source, split[0], "t1", split[1], "t2", _cfg(steps=1, select=False), device="cpu")
    after = res.bundle.segmenter.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())
    # the source model itself is untouched (Φ is a copy)
    assert all(torch.equal(before[k], v) for k, v in source.segmenter.state_dict().items())
    disc = seen["disc"]
    assert set(disc) == {"feat_s", "feat_t", "pos_s", "pos_t", "cha_s", "cha_t"}
    for name in disc:
        changed = [not torch.equal(seen["before"][k], v) for k, v in disc.state_dict().items() if k.startswith(name)]
        assert any(changed), f"discriminator {name} did not move"


@pytest.mark.parametrize("method,expected_disc", [("adaptseg", {"out"}), ("cycada", {"out"}),
                                                   ("sifa", {"out", "feat_t"}), ("bigl-output", set())])
def test_baselines_and_ablations_build_the_right_discriminators(method, expected_disc, tiny_bundle_path):
    from bigl.adapt.alignment import _alignment_discriminators

    seg = load_bundle(tiny_bundle_path).segmenter
    cfg = (AdaptConfig(method="bigl", use_feature=False, use_attention=False) if method == "bigl-output"
           else AdaptConfig(method=method))
    assert set(_alignment_discriminators(seg, cfg, torch.device("cpu"))) == expected_disc


def test_adapted_bundle_segments_target_without_warning(tiny_bundle_path, split, tmp_path, recwarn):
    res = adapt(load_bundle(tiny_bundle_path), split[0], "t1", split[1], "t2", _cfg(self_train=True,
                self_train_rounds=1, self_train_steps=1, pseudo_threshold=0.0), device="cpu")
    p = save_bundle(res.bundle, tmp_path / "adapted.safetensors")
    bundle = load_bundle(p)
    assert bundle.sequences == ("t2",) and bundle.source_sequence == "t1" and bundle.translator_t2s is not None
    assert bundle.provenance["method"] == "bigl" and bundle.provenance["selection"]
    image = load_images(split[1][0], ["t2"])["t2"]
    seg = segment_volume(bundle, image, sequence="t2", device="cpu")
    assert seg.labels.shape == image.data.shape
    assert not [w for w in recwarn if "Adapt" in str(w.message)]


@pytest.mark.parametrize("method", ["translate", "source-only", "adaptseg", "cycada", "sifa"])
def test_every_method_runs(method, tiny_bundle_path, split):
    res = adapt(load_bundle(tiny_bundle_path), split[0], "t1", split[1], "t2", _cfg(method=method), device="cpu")
    assert res.bundle.sequences == ("t2",)
    # only BiGL trains Φ on x_t→s, so only BiGL follows AdaptConfig.inference; translate-only goes through
    # G_t→s, the others segment directly
    expected = {"translate": "translate"}.get(method, "direct")
    assert res.bundle.inference == expected
    if method in ("adaptseg", "cycada", "sifa"):  # selected by negative entropy (< 0), not by agreement (>= 0)
        assert res.snapshots and all(s.score < 0 for s in res.snapshots)


def test_cancel_leaves_the_input_bundle_untouched(tiny_bundle_path, split, tmp_path):
    digest = hashlib.sha256(tiny_bundle_path.read_bytes()).hexdigest()
    n = []
    with pytest.raises(Cancelled):
        adapt(load_bundle(tiny_bundle_path), split[0], "t1", split[1], "t2", _cfg(steps=50), device="cpu",
              cancel=lambda: n.append(1) or len(n) > 4)
    assert hashlib.sha256(tiny_bundle_path.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tiny_bundle_path.parent.iterdir()) == ["tiny_t1.last.safetensors",
                                                                        "tiny_t1.safetensors"]


def test_target_labels_are_never_opened(tiny_bundle_path, tiny_dataset, tmp_path):
    """An audit hook records every file Python opens during adaptation; no target seg file may be among them.

    A fresh preprocessed-data cache, so that adaptation reads the source cases' files (labels included)."""
    cases = list_cases(tiny_dataset)
    target_segs = {str(c.files["seg"].resolve()) for c in cases[2:]}
    source_segs = {str(c.files["seg"].resolve()) for c in cases[:2]}
    opened: list[str] = []
    active = [True]

    def hook(event, args):
        if event == "open" and active[0] and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            opened.append(str(Path(path).resolve()))

    sys.addaudithook(hook)
    try:
        adapt(load_bundle(tiny_bundle_path), cases[:2], "t1", cases[2:], "t2", _cfg(self_train=True,
              self_train_rounds=1, self_train_steps=1), device="cpu", cache_dir=tmp_path / "cache")
    finally:
        active[0] = False
    assert source_segs & set(opened), "the hook saw no source labels: it is not recording opens"
    assert not target_segs & set(opened)


def test_translator_training_moves_both_generators_and_conditions_g_s2t(tiny_bundle_path, split):
    from dataclasses import replace

    from bigl.adapt import train_translator
    from bigl.models.translator import Generator
    from bigl.preprocess import patch_size_for
    from bigl.train import load_prepared

    seg = load_bundle(tiny_bundle_path).segmenter
    seg_before = {k: v.clone() for k, v in seg.state_dict().items()}
    src, tgt = load_prepared(split[0], "t1", labels=True), load_prepared(split[1], "t2", labels=False)
    patch = patch_size_for(src + tgt, seg.stride)
    cfg = replace(TINY_TRANSLATOR, steps=3)
    torch.manual_seed(0)
    init_s2t = Generator(replace(cfg.translator, cond_channels=3)).state_dict()
    init_t2s = Generator(cfg.translator).state_dict()
    torch.manual_seed(0)
    g_s2t, g_t2s = train_translator(src, tgt, patch, cfg, np.random.default_rng(0), torch.device("cpu"),
                                    segmenter=seg)
    assert g_s2t.config.cond_channels == 3 and g_t2s.config.cond_channels == 0   # only G_s→t reads labels
    for g, init in ((g_s2t, init_s2t), (g_t2s, init_t2s)):
        assert not g.training and not any(p.requires_grad for p in g.parameters())   # frozen for stage 2
        assert any(not torch.equal(init[k], v) for k, v in g.state_dict().items()), "a generator did not move"
    # the source segmenter used in the semantic cycle is not modified
    assert all(torch.equal(seg_before[k], v) for k, v in seg.state_dict().items())
    with pytest.raises(BiglError, match="source segmenter"):
        train_translator(src, tgt, patch, cfg, np.random.default_rng(0), torch.device("cpu"))
    unconditioned, _ = train_translator(src, tgt, patch, replace(cfg, steps=1, label_conditioned=False),
                                        np.random.default_rng(0), torch.device("cpu"))
    assert unconditioned.config.cond_channels == 0


def test_paired_translator_trains_on_same_subject_slices(tiny_bundle_path, split, tmp_path):
    """paired=True (Eq. 1's L1 to the real target slice): source and target are one subject list in two sequences,
    read from the preprocessed cache as adapt() reads them (int8 class indices)."""
    from dataclasses import replace

    from bigl.adapt import train_translator
    from bigl.data.cache import cache_cases
    from bigl.preprocess import patch_size_for

    seg = load_bundle(tiny_bundle_path).segmenter
    src = cache_cases(split[0], "t1", labels=True, cache_dir=tmp_path)
    tgt = cache_cases(split[0], "t2", labels=False, cache_dir=tmp_path)
    cfg = replace(TINY_TRANSLATOR, steps=2, starts=1, paired=True)
    torch.manual_seed(0)
    g_s2t, _ = train_translator(src, tgt, patch_size_for(src, seg.stride), cfg, np.random.default_rng(0),
                                torch.device("cpu"), segmenter=seg)
    assert g_s2t.config.cond_channels == 3
    with pytest.raises(BiglError, match="same cases"):
        train_translator(src, tgt[:1], patch_size_for(src, seg.stride), cfg, np.random.default_rng(0),
                         torch.device("cpu"), segmenter=seg)


def test_translator_starts_are_screened_and_the_closest_one_continues(tiny_bundle_path, split, monkeypatch):
    from dataclasses import replace

    from bigl.adapt import translator_stage
    from bigl.preprocess import patch_size_for
    from bigl.train import load_prepared

    seg = load_bundle(tiny_bundle_path).segmenter
    src, tgt = load_prepared(split[0], "t1", labels=True), load_prepared(split[1], "t2", labels=False)
    patch = patch_size_for(src + tgt, seg.stride)
    seen, scores = [], iter([3.0, 1.0, 2.0])

    def distance(g_s2t, g_t2s, xs, ys, xt):   # the second start (the first one's opposite polarity) is closest
        seen.append(g_t2s)
        return next(scores)

    monkeypatch.setattr(translator_stage, "translation_distance", distance)   # what train_translator calls
    monkeypatch.setattr(translator_stage, "identity_distance", lambda xs, xt: 10.0)   # every start learnt
    steps = []
    cfg = replace(TINY_TRANSLATOR, steps=4, starts=3, screen_steps=1)
    _, g_t2s = translator_stage.train_translator(src, tgt, patch, cfg, np.random.default_rng(0), torch.device("cpu"),
                                                 progress=lambda p: steps.append((p.step, p.total)), segmenter=seg)
    assert len(seen) == 3 and g_t2s is seen[1]
    assert steps == [(i, 6) for i in range(1, 7)]   # 3 starts x 1 screening step + 3 more for the chosen one


def test_more_starts_are_screened_while_none_beats_the_identity_map(tiny_bundle_path, split, monkeypatch, recwarn):
    from dataclasses import replace

    from bigl.adapt import translator_stage
    from bigl.preprocess import patch_size_for
    from bigl.train import load_prepared

    seg = load_bundle(tiny_bundle_path).segmenter
    src, tgt = load_prepared(split[0], "t1", labels=True), load_prepared(split[1], "t2", labels=False)
    patch = patch_size_for(src + tgt, seg.stride)
    seen = []

    def run(scores, max_starts):
        seen.clear()
        it = iter(scores)
        monkeypatch.setattr(translator_stage, "translation_distance", lambda g_s2t, g_t2s, *b: seen.append(g_t2s)
                            or next(it))
        steps = []
        cfg = replace(TINY_TRANSLATOR, steps=2, starts=2, screen_steps=1, max_starts=max_starts)
        _, g_t2s = translator_stage.train_translator(src, tgt, patch, cfg, np.random.default_rng(0),
                                                     torch.device("cpu"), segmenter=seg,
                                                     progress=lambda p: steps.append((p.step, p.total)))
        return g_t2s, steps

    monkeypatch.setattr(translator_stage, "identity_distance", lambda xs, xt: 1.0)   # "learnt": under 0.8
    g_t2s, steps = run([0.95, 0.9, 0.85, 0.5, 0.1], max_starts=6)
    assert len(seen) == 4 and g_t2s is seen[3]          # the fourth start beat the identity map: screening stops
    assert steps[-1] == (5, 5)                          # 4 screening steps + 1 more for the chosen one
    assert not [w for w in recwarn if "learnt little" in str(w.message)]
    g_t2s, _ = run([0.95, 0.9, 0.85], max_starts=3)     # none did: the closest one, and a warning
    assert len(seen) == 3 and g_t2s is seen[2]
    assert [w for w in recwarn if "learnt little" in str(w.message)]
    with pytest.raises(BiglError, match="max_starts"):
        TranslatorTrainConfig(starts=4, max_starts=2)


def test_flipped_start_and_translation_distance_on_known_generators():
    from bigl.adapt import TranslatorTrainConfig, intensity_distance, translation_distance
    from bigl.adapt.translator_stage import _TranslatorStart

    a = torch.tensor([[[[0.0, 1.0, 2.0, 3.0]]]])
    assert intensity_distance(a, a) == 0.0
    assert intensity_distance(a, a + 1.5 * (a != 0)) == pytest.approx(1.5)   # background (0) is ignored
    with pytest.raises(BiglError, match="brain"):
        intensity_distance(a, torch.zeros_like(a))

    # width-2, 1x1 local generators: out = w2 . relu(W1 x): identity with w2 = (1, -1), negation with (-1, 1)
    cfg = TranslatorTrainConfig(label_conditioned=False,
                                translator=TranslatorConfig(width=2, n_down=0, n_res_blocks=0, kernel=1, norm="none"))
    start = _TranslatorStart(cfg, cfg.translator, torch.device("cpu"))
    for g in (start.g_s2t, start.g_t2s):
        stem, out = g.net[0], g.net[-1]
        with torch.no_grad():
            stem.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            stem.bias.zero_()
            out.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
            out.bias.zero_()
    flipped = start.flipped()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(start.g_t2s(x), x) and torch.allclose(flipped.g_t2s(x), -x)
        assert torch.allclose(flipped.g_s2t(x), -start.g_s2t(x))
    assert all(p.grad is None for p in flipped.g_t2s.parameters()) and flipped.opt_g is not start.opt_g
    # target = source with inverted contrast: the negating pair translates exactly, the identity pair does not
    xs = torch.rand(4, 1, 8, 8) + 0.5
    xt, ys = -xs, torch.zeros(4, 8, 8, dtype=torch.long)
    assert translation_distance(flipped.g_s2t, flipped.g_t2s, xs, ys, xt) == pytest.approx(0.0, abs=1e-6)
    assert translation_distance(start.g_s2t, start.g_t2s, xs, ys, xt) > 1.0


def test_intensity_matching_term_pulls_the_translation_towards_the_imitated_histogram():
    from bigl.adapt import TranslatorTrainConfig
    from bigl.adapt.translator_stage import _TranslatorStart, intensity_distance, quantile_distance

    a = torch.tensor([[[[0.0, 1.0, 2.0, 3.0]]]], requires_grad=True)
    b = torch.tensor([[[[0.0, 4.0, 5.0, 6.0]]]])
    d = quantile_distance(a, b)
    assert float(d.detach()) == pytest.approx(intensity_distance(a, b)) == pytest.approx(3.0)
    d.backward()
    assert (a.grad[0, 0, 0, 1:] < 0).all() and a.grad[0, 0, 0, 0] == 0   # brain voxels pushed up, background not
    assert float(quantile_distance(torch.zeros(1, 1, 2, 2), b)) == 0.0   # no brain in a batch: no term
    with pytest.raises(BiglError, match="lambda_hist"):
        TranslatorTrainConfig(lambda_hist=-1.0)

    # Generator updates with and without the term differ only by it: with it, the batch's translations
    # move towards the intensities of the domain they imitate.
    torch.manual_seed(0)
    xs = torch.rand(2, 1, 64, 64) + 0.5
    xt = -2.0 * xs
    ys = torch.zeros(2, 64, 64, dtype=torch.long)
    gen = TranslatorConfig(width=4, n_down=0, n_res_blocks=1, kernel=3, norm="none")
    distances = {}
    for lam in (0.0, 50.0):
        torch.manual_seed(1)
        cfg = TranslatorTrainConfig(label_conditioned=False, lambda_hist=lam, lambda_cyc=0.0, lr=1e-2, translator=gen,
                                    discriminator=PatchDiscriminatorConfig(width=4))
        start = _TranslatorStart(cfg, gen, torch.device("cpu"))
        for _ in range(20):
            start.step(xs, ys, xt, None)
        with torch.no_grad():
            distances[lam] = intensity_distance(start.g_t2s(xt, (xt != 0).float()), xs)
    assert distances[50.0] < 0.5 * distances[0.0]


def test_prediction_agreement_ignores_regions_neither_predicts():
    from bigl.adapt import prediction_agreement

    a = np.zeros((4, 4), np.int64)
    a[1:3, 1:3] = 2                                   # edema only: WT, no TC, no ET
    b = a.copy()
    b[1, 1] = 0                                       # 3 of a's 4 WT voxels
    # WT pooled over both volumes: 2 * (4 + 3) / (8 + 7); TC and ET are in neither map: left out
    assert prediction_agreement([(a, a), (a, b)]) == pytest.approx(14 / 15)
    empty = np.zeros_like(a)
    assert prediction_agreement([(empty, empty)]) == 0.0   # no tumour predicted is not agreement
    c = a.copy()
    c[1, 1] = 1                                       # one core voxel in one map only: TC agreement 0
    assert prediction_agreement([(a, c)]) == pytest.approx((1.0 + 0.0) / 2)


def test_pseudo_labels_follow_the_bundles_view_confidence_and_lesion_size(tiny_bundle_path, split):
    from dataclasses import replace

    from bigl.adapt.selection import _predict_pair
    from bigl.infer import remove_small_lesions
    from bigl.preprocess import classes_to_labels
    from bigl.train import load_prepared

    bundle = load_bundle(tiny_bundle_path)
    vols = [replace(v, spacing=(4.0, 4.0, 4.0)) for v in load_prepared(split[1], "t2", labels=False)]
    cpu = torch.device("cpu")

    class Flip(torch.nn.Module):   # a "translator" whose Φ(x_t→s) differs from Φ(x_t)
        stride = 1

        def forward(self, x, mask=None):
            return -x

    for inference in ("direct", "translate", "ensemble"):
        labelled = pseudo_labels(bundle.segmenter, Flip(), vols, threshold=0.0, device=cpu, inference=inference,
                                 min_lesion_ml=0.1)
        for v, lab in zip(vols, labelled):
            p_t, p_t2s = _predict_pair(bundle.segmenter, Flip(), v, cpu)
            p = {"direct": p_t, "translate": p_t2s, "ensemble": 0.5 * (p_t + p_t2s)}[inference]
            want = np.where(remove_small_lesions(classes_to_labels(p.argmax(0)), v.spacing, 0.1) > 0, p.argmax(0), 0)
            assert np.array_equal(lab.target[v.mask], want[v.mask]) and (lab.target[~v.mask] == 0).all()
    strict = pseudo_labels(bundle.segmenter, Flip(), vols, threshold=1.01, device=cpu)
    assert all((v.target[v.mask] == -1).all() for v in strict)
    assert all((v.target[~v.mask] == 0).all() for v in strict)
    # every whole-tumour component under the size floor becomes background
    no_floor = pseudo_labels(bundle.segmenter, Flip(), vols, threshold=0.0, device=cpu, min_lesion_ml=0.0)
    assert any((v.target > 0).any() for v in no_floor)    # the untrained model predicts some "tumour"
    huge_floor = pseudo_labels(bundle.segmenter, Flip(), vols, threshold=0.0, device=cpu, min_lesion_ml=1e9)
    assert all((v.target[v.mask] == 0).all() for v in huge_floor)


def test_l_seg_keeps_the_source_models_dice_unless_told(tiny_bundle_path, split, monkeypatch):
    source = load_bundle(tiny_bundle_path)
    used = []
    real = bigl.adapt.alignment.segmentation_loss
    monkeypatch.setattr(bigl.adapt.alignment, "segmentation_loss",
                        lambda logits, target, dice: used.append(dice) or real(logits, target, dice=dice))
    for trained_with, asked, expected in ((None, None, "classes"), ("regions", None, "regions"),
                                          ("regions", "classes", "classes")):
        source.provenance["config"] = {} if trained_with is None else {"dice": trained_with}
        used.clear()
        res = adapt(source, split[0], "t1", split[1], "t2", _cfg(method="adaptseg", steps=1, dice=asked),
                    device="cpu")
        assert set(used) == {expected} and res.bundle.provenance["config"]["dice"] == expected
    with pytest.raises(BiglError, match="unknown Dice kind"):
        AdaptConfig(dice="voxels")
    with pytest.raises(ValueError, match="for_source"):     # a direct caller must resolve it
        bigl.adapt.alignment.alignment_step(source.segmenter, None, None, None, None, None, None, None, None,
                                            AdaptConfig(), 1.0)


def test_lesion_contrast_follows_the_source_model_and_moves_only_the_images_l_seg_reads(tiny_bundle_path, split,
                                                                                       monkeypatch):
    from bigl.adapt import alignment
    from bigl.models.translator import Generator

    source = load_bundle(tiny_bundle_path)
    calls, fed, translated = [], [], []
    monkeypatch.setattr(alignment, "lesion_contrast", lambda x, y, p, shift: calls.append((x, y, p)) or x + 7.0)
    real_s2t = alignment.source_to_target
    monkeypatch.setattr(alignment, "source_to_target", lambda g, x, y: translated.append(x) or real_s2t(g, x, y))
    for trained_with, asked, expected in ((None, None, 0.0), (0.5, None, 0.5), (0.5, 0.0, 0.0), (None, 1.0, 1.0)):
        source.provenance["config"] = {} if trained_with is None else {
            "augmentation": {"p_lesion_contrast": trained_with}}
        calls.clear()
        res = adapt(source, split[0], "t1", split[1], "t2", _cfg(method="adaptseg", steps=1, lesion_contrast=asked),
                    device="cpu")
        assert res.bundle.provenance["config"]["lesion_contrast"] == expected
        assert [p for *_, p in calls] == ([expected] if expected else [])   # once per step, on x_s only
    # one step by hand: Φ reads the moved x_s, and x_s→t is made from the unmoved one
    cfg = _cfg(lesion_contrast=1.0).for_source(source)
    seg = source.segmenter
    disc, teacher, opt_seg, opt_d = alignment.alignment_setup(seg, cfg, torch.device("cpu"))
    hook = seg.register_forward_hook(lambda mod, args, out: fed.append(args[0]))
    xs, xt = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    ys = torch.randint(0, 4, (2, 32, 32))
    g = Generator(TranslatorConfig(width=8, n_res_blocks=1))
    translated.clear()
    alignment.alignment_step(seg, disc, opt_seg, opt_d, xs, ys, xt, g, g, cfg, 1.0, None, teacher)
    hook.remove()
    assert torch.equal(translated[0], xs) and torch.equal(fed[0][:2], xs + 7.0)
    with pytest.raises(BiglError, match="lesion_contrast"):
        AdaptConfig(lesion_contrast=1.5)


def test_bad_config_and_inputs(tiny_bundle_path, split):
    with pytest.raises(BiglError, match="unknown adaptation method"):
        AdaptConfig(method="magic")
    with pytest.raises(BiglError, match="starts"):
        TranslatorTrainConfig(starts=0)
    with pytest.raises(BiglError, match="screen_steps"):
        TranslatorTrainConfig(screen_steps=-1)
    with pytest.raises(BiglError, match="unknown target sequence"):
        adapt(load_bundle(tiny_bundle_path), split[0], "t1", split[1], "T9", _cfg(), device="cpu")
    with pytest.raises(BiglError, match="3D"):
        adapt(load_bundle(tiny_bundle_path), split[0], "t1", [np.zeros((3, 3))], "t2", _cfg(), device="cpu")


def test_anchor_and_translated_source_loss_are_switchable(tiny_bundle_path, split, monkeypatch):
    from bigl.adapt import driver

    seen = []
    real = driver.alignment_step

    def spy(*args):
        terms = real(*args)
        seen.append((terms, args[12]))   # (loss terms, teacher)
        return terms

    monkeypatch.setattr(driver, "alignment_step", spy)
    source = load_bundle(tiny_bundle_path)
    before = {k: v.clone() for k, v in source.segmenter.state_dict().items()}
    adapt(source, split[0], "t1", split[1], "t2", _cfg(steps=1), device="cpu")       # defaults
    terms, teacher = seen[-1]
    assert terms["anchor"] > 0 and "seg_s2t" not in terms and "seg_s" in terms
    # the teacher is the frozen source model, not the segmenter being adapted
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())
    adapt(source, split[0], "t1", split[1], "t2", _cfg(steps=1, lambda_anchor=0.0, lambda_seg_s2t=1.0), device="cpu")
    terms, teacher = seen[-1]
    assert "anchor" not in terms and terms["seg_s2t"] > 0 and teacher is None


def test_sifa_learns_from_translated_source_and_aligns_features_and_outputs(tiny_bundle_path, split, monkeypatch):
    from bigl.adapt import alignment, driver

    seen, made = [], {}
    real_step, real_disc = driver.alignment_step, alignment._alignment_discriminators

    def disc_spy(*args):
        made["disc"] = real_disc(*args)
        made["before"] = {k: v.clone() for k, v in made["disc"].state_dict().items()}
        return made["disc"]

    monkeypatch.setattr(driver, "alignment_step", lambda *args: seen.append(real_step(*args)) or seen[-1])
    monkeypatch.setattr(alignment, "_alignment_discriminators", disc_spy)
    adapt(load_bundle(tiny_bundle_path), split[0], "t1", split[1], "t2", _cfg(steps=2, method="sifa"), device="cpu")
    disc, before = made["disc"], made["before"]
    assert set(disc) == {"out", "feat_t"}
    terms = seen[-1]
    # labels reach Φ only through x_s→t (image alignment); no anchor, no output consistency (BiGL's terms)
    assert terms["seg_s2t"] > 0 and "seg_s" not in terms and "anchor" not in terms and "out" not in terms
    assert terms["adv"] > 0 and terms["disc"] > 0
    for name in ("out", "feat_t"):
        assert any(not torch.equal(before[k], v) for k, v in disc.state_dict().items() if k.startswith(name))
    cfg = AdaptConfig(lambda_gtl=0.3, lambda_adv_out=0.002)
    assert alignment._adversarial_weight("feat_t", cfg) == 0.3 and alignment._adversarial_weight("out", cfg) == 0.002


def test_anchor_teacher_follows_the_segmenter_with_anchor_ema(tiny_bundle_path, split, monkeypatch):
    from bigl.adapt import driver

    seen = []
    real = driver.alignment_step
    monkeypatch.setattr(driver, "alignment_step", lambda *args: seen.append(args[12]) or real(*args))
    source = load_bundle(tiny_bundle_path)
    before = {k: v.clone() for k, v in source.segmenter.state_dict().items()}
    res = adapt(source, split[0], "t1", split[1], "t2", _cfg(steps=1, anchor_ema=0.75, weight_ema=0.0), device="cpu")
    teacher, after = seen[-1].state_dict(), res.bundle.segmenter.state_dict()
    for name, _ in seen[-1].named_parameters():   # one step: teacher = 0.75 source + 0.25 adapted
        torch.testing.assert_close(teacher[name], 0.75 * before[name] + 0.25 * after[name])
    for name, _ in seen[-1].named_buffers():       # BatchNorm statistics are the segmenter's
        assert torch.equal(teacher[name], after[name])
    assert not torch.equal(teacher[name], before[name])
    with pytest.raises(BiglError, match="anchor_ema"):
        AdaptConfig(anchor_ema=1.0)


def test_weight_ema_keeps_the_moving_average_of_the_segmenter(tiny_bundle_path, split, monkeypatch):
    from bigl.adapt import driver

    trained = {}
    real = driver.alignment_step

    def spy(*args):
        terms = real(*args)
        trained.update({k: v.clone() for k, v in args[0].state_dict().items()})
        return terms

    monkeypatch.setattr(driver, "alignment_step", spy)
    source = load_bundle(tiny_bundle_path)
    before = {k: v.clone() for k, v in source.segmenter.state_dict().items()}
    res = adapt(source, split[0], "t1", split[1], "t2", _cfg(steps=1, weight_ema=0.75), device="cpu")
    kept = res.bundle.segmenter
    for name, p in kept.named_parameters():      # one step: kept = 0.75 source + 0.25 Φ
        torch.testing.assert_close(p.detach(), 0.75 * before[name] + 0.25 * trained[name])
        assert p.requires_grad
    assert not torch.equal(next(kept.parameters()), trained[next(iter(dict(kept.named_parameters())))])
    assert res.snapshots[-1].state.keys() == before.keys()


def test_round_trip_shows_the_segmenter_g_t2s_rendering_of_moved_labelled_lesions(tiny_bundle_path, split,
                                                                                  monkeypatch):
    from bigl.adapt import alignment
    from bigl.models.translator import Generator

    source = load_bundle(tiny_bundle_path)
    moved, fed_t2s = [], []
    monkeypatch.setattr(alignment, "lesion_contrast",
                        lambda x, y, p, shift: moved.append((x, y, p, shift)) or x + 7.0)
    monkeypatch.setattr(alignment, "source_to_target", lambda g, x, y: x * 0 + 3.0)
    g_t2s = Generator(TranslatorConfig(width=8, n_res_blocks=1))
    g_t2s.register_forward_hook(lambda mod, args, out: fed_t2s.append(args[0]))
    xs, xt = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    ys = torch.randint(0, 4, (2, 32, 32))
    # only BiGL has the stream (the baselines keep their published losses)
    for method, weight in (("bigl", 1.0), ("bigl", 0.0), ("cycada", 1.0)):
        cfg = _cfg(method=method, lambda_round_trip=weight, round_trip_shift=2.0).for_source(source)
        seg = source.segmenter
        disc, teacher, opt_seg, opt_d = alignment.alignment_setup(seg, cfg, torch.device("cpu"))
        moved.clear(), fed_t2s.clear()
        terms = alignment.alignment_step(seg, disc, opt_seg, opt_d, xs, ys, xt, g_t2s, g_t2s, cfg, 1.0, None,
                                         teacher)
        if method == "bigl" and weight:
            # every x_s→t slice has its lesion moved (p = 1) by up to the configured shift, with y_s's classes,
            # then goes through G_t→s, and Φ learns it with y_s
            (x, y, p, shift), = moved
            assert torch.equal(x, xs * 0 + 3.0) and torch.equal(y, ys) and (p, shift) == (1.0, 2.0)
            assert any(torch.equal(f, xs * 0 + 10.0) for f in fed_t2s)
            assert terms["seg_s2t2s"] > 0
        else:
            assert not moved and "seg_s2t2s" not in terms
            assert not any(torch.equal(f, xs * 0 + 10.0) for f in fed_t2s)
    with pytest.raises(BiglError, match="lambda_round_trip"):
        AdaptConfig(lambda_round_trip=-1.0)
