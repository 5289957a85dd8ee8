"""Tests of bigl.phantom: determinism, labels, masks, MR contrasts, dataset writing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from bigl import io
from bigl.errors import BiglError
from bigl.phantom import SEQUENCES, PhantomConfig, Tissue, case_seed, make_case, write_dataset
from bigl.phantom.contrast import SPIN_ECHO_MEANS, TISSUE_MEANS
from bigl.phantom.relaxation import physical_tables

SEEDS = range(8)


@pytest.fixture(scope="module")
def cases():
    return {s: make_case(s, "tiny") for s in SEEDS}


@pytest.fixture(scope="module")
def cases_2mm():
    return {s: make_case(s) for s in SEEDS}


def _mean(case, key, tissue):
    sel = case.tissues == tissue
    return float(case.images[key][sel].mean()) if sel.any() else np.nan


def _inner_mean(case, key, tissue):
    """Mean over the tissue's voxels whose neighbours are the same tissue (away from partial volume), where it has
    ten such voxels; else over all of them."""
    sel = case.tissues == tissue
    inner = ndimage.binary_erosion(sel)
    return float(case.images[key][inner].mean()) if inner.sum() >= 10 else _mean(case, key, tissue)


def test_same_seed_gives_identical_arrays(cases):
    again = make_case(3, "tiny")
    for key in SEQUENCES:
        np.testing.assert_array_equal(again.images[key], cases[3].images[key])
    np.testing.assert_array_equal(again.seg, cases[3].seg)
    np.testing.assert_array_equal(again.tissues, cases[3].tissues)


def test_different_seeds_differ(cases):
    assert not np.array_equal(cases[0].seg, cases[1].seg)
    assert not np.array_equal(cases[0].tissues > 0, cases[1].tissues > 0)
    assert not np.array_equal(cases[0].images["t1"], cases[1].images["t1"])


def test_shapes_dtypes_and_int16_range(cases):
    cfg = PhantomConfig.preset("tiny")
    for case in cases.values():
        assert case.spacing == cfg.spacing
        assert set(case.images) == set(SEQUENCES)
        for img in case.images.values():
            assert img.shape == cfg.shape and img.dtype == np.float32
            assert np.array_equal(img, np.rint(img)) and img.min() >= 0 and img.max() <= 32767
        assert case.seg.shape == cfg.shape and case.seg.dtype == np.uint8


def test_labels_are_brats_values_and_mostly_all_present(cases):
    full = 0
    for case in cases.values():
        labels = set(np.unique(case.seg).tolist())
        assert labels <= {0, 1, 2, 4}
        assert 2 in labels  # edema is always there
        full += labels == {0, 1, 2, 4}
    assert full >= 6, f"only {full} of {len(cases)} cases have NCR, ED and ET"


def test_seg_matches_tissue_map(cases):
    for case in cases.values():
        t = case.tissues
        assert np.all((case.seg == 2) == (t == Tissue.EDEMA))
        assert np.all((case.seg == 4) == (t == Tissue.ENHANCING))
        assert np.all((case.seg == 1) == np.isin(t, (Tissue.NECROSIS, Tissue.NET)))


def test_background_exactly_zero_and_same_mask_in_every_sequence(cases):
    for case in cases.values():
        brain = case.brain_mask
        assert 0.05 < brain.mean() < 0.6
        for key in SEQUENCES:
            assert np.array_equal(case.images[key] > 0, brain), key
        assert not case.seg[~brain].any()
        # Skull-stripped volume inside the field of view: the outer voxel layer is background.
        for ax in range(3):
            assert not np.take(brain, [0, -1], axis=ax).any()


@pytest.mark.parametrize(
    ("key", "bright", "dark"),
    [
        ("t1", Tissue.WM, Tissue.CSF),
        ("t1", Tissue.WM, Tissue.GM),
        ("t2", Tissue.CSF, Tissue.WM),
        ("t2", Tissue.GM, Tissue.WM),
        ("flair", Tissue.GM, Tissue.CSF),
        ("t2", Tissue.EDEMA, Tissue.WM),
        ("flair", Tissue.EDEMA, Tissue.WM),
        ("flair", Tissue.EDEMA, Tissue.GM),
        ("t1ce", Tissue.ENHANCING, Tissue.WM),
        ("t1", Tissue.WM, Tissue.ENHANCING),
        ("t1", Tissue.WM, Tissue.NECROSIS),
        ("t2", Tissue.NECROSIS, Tissue.WM),
    ],
)
def test_tissue_contrast(cases_2mm, key, bright, dark):
    # Each tissue away from its borders where it can be: partial volume with a dark neighbour dims a 2 mm enhancing
    # rim or a thin cortex (as in a real scan). Per-case jitter and thick-slice acquisitions may still hide a thin
    # structure in one case; the contrast must show in all the others.
    failures = []
    for seed, case in cases_2mm.items():
        b, d = _inner_mean(case, key, bright), _inner_mean(case, key, dark)
        if np.isnan(b) or np.isnan(d):
            continue  # e.g. a case without enhancing tumour
        if not b > 1.05 * d:
            failures.append(f"seed {seed} {key}: {bright.name} {b:.0f} not brighter than {dark.name} {d:.0f}")
    assert len(failures) <= 1, failures


def test_edema_in_t1_between_csf_and_white_matter(cases):
    ratios = [_mean(c, "t1", Tissue.EDEMA) / _mean(c, "t1", Tissue.WM) for c in cases.values()]
    assert 0.3 < np.median(ratios) < 0.8


@pytest.mark.parametrize("sequence", ["t1", "t1ce", "t2"])
def test_contrast_table_is_the_signal_equation(sequence):
    # The T1, T1ce and T2 columns are the MPRAGE / TSE signals of 3 T relaxation times (vessel row set by hand).
    signal = physical_tables()[sequence]
    for tissue, value in signal.items():
        assert TISSUE_MEANS[sequence][tissue] == pytest.approx(value, rel=0.04), tissue.name


@pytest.mark.parametrize("sequence", ["t1", "t1ce"])
def test_spin_echo_table_is_the_signal_equation(sequence):
    signal = physical_tables()[f"{sequence} spin echo"]
    for tissue, value in signal.items():
        assert SPIN_ECHO_MEANS[sequence][tissue] == pytest.approx(value, rel=0.04), tissue.name


def test_t1_spin_echo_weakens_t1_contrast_and_changes_nothing_else(cases_2mm):
    spin_echo = dataclasses.replace(PhantomConfig.preset("small"), t1_spin_echo=(1.0, 1.0))
    for seed in (1, 2):
        mprage, se = cases_2mm[seed], make_case(seed, spin_echo)
        assert np.array_equal(mprage.seg, se.seg)
        for key in ("t2", "flair"):
            assert np.array_equal(mprage.images[key], se.images[key])
        assert (mprage.info["t1_spin_echo"], se.info["t1_spin_echo"]) == (0.0, 1.0)
        for key in ("t1", "t1ce"):
            gm_wm = [np.log(_inner_mean(c, key, Tissue.GM) / _inner_mean(c, key, Tissue.WM)) for c in (mprage, se)]
            assert 0.25 < gm_wm[1] / gm_wm[0] < 0.75, (seed, key, gm_wm)


def test_t1_bright_edema_puts_edema_above_grey_matter_and_changes_nothing_else(cases_2mm):
    bright = dataclasses.replace(PhantomConfig.preset("small"), p_t1_bright_edema=1.0)
    ratios = {}
    for seed in (1, 2, 3):
        mprage, other = cases_2mm[seed], make_case(seed, bright)
        assert np.array_equal(mprage.seg, other.seg)
        for key in ("t2", "flair"):
            assert np.array_equal(mprage.images[key], other.images[key])
        assert (mprage.info["t1_bright_edema"], other.info["t1_bright_edema"]) == (False, True)
        for key in ("t1", "t1ce"):
            edema_gm = [_inner_mean(c, key, Tissue.EDEMA) / _inner_mean(c, key, Tissue.GM) for c in (mprage, other)]
            if not np.isnan(edema_gm).any():
                ratios[seed, key] = edema_gm
    assert len(ratios) >= 4, ratios
    assert all(m < 1.0 < b for m, b in ratios.values()), ratios


def test_t1_bright_edema_share_is_drawn_per_case_after_everything_else():
    tiny = PhantomConfig.preset("tiny")
    half, every = (dataclasses.replace(tiny, p_t1_bright_edema=p) for p in (0.5, 1.0))
    drawn = []
    for seed in range(8):
        plain, mixed = make_case(seed, tiny), make_case(seed, half)
        assert np.array_equal(plain.seg, mixed.seg) and np.array_equal(plain.images["t2"], mixed.images["t2"])
        same_as = make_case(seed, every) if mixed.info["t1_bright_edema"] else plain
        assert np.array_equal(mixed.images["t1"], same_as.images["t1"])
        drawn.append(mixed.info["t1_bright_edema"])
    assert set(drawn) == {True, False}, drawn


def test_flair_table_keeps_the_signal_order():
    # FLAIR is a milder version of its signal: the same order of the tissues.
    flair = physical_tables()["flair"]
    assert sorted(flair, key=flair.get) == sorted(flair, key=lambda k: TISSUE_MEANS["flair"][k])


def test_same_anatomy_on_every_grid():
    tiny, small = make_case(5, "tiny"), make_case(5, "small")
    assert tiny.info["tumour_centre_mm"] == small.info["tumour_centre_mm"]
    brain_ml = [c.brain_mask.sum() * np.prod(c.spacing) / 1000 for c in (tiny, small)]
    assert brain_ml[0] == pytest.approx(brain_ml[1], rel=0.03)
    assert tiny.info["wt_ml"] == pytest.approx(small.info["wt_ml"], rel=0.2)


def test_wt_volume_follows_config():
    tiny = PhantomConfig.preset("tiny")
    vols = {}
    for target in (15.0, 60.0):
        cfg = dataclasses.replace(tiny, wt_volume_ml=(target, target), p_lesions=(1.0, 0.0, 0.0), p_healthy=0.0)
        vols[target] = np.array([make_case(s, cfg).info["wt_ml"] for s in range(4)])
    # Edema does not enter CSF and less the cortex, so volumes scatter around the target.
    assert 25 < np.median(vols[60.0]) < 110, vols
    # (edema fills the white matter around the core, so how far it reaches depends on the anatomy around it)
    assert np.median(vols[60.0]) > 2.0 * np.median(vols[15.0]), vols


def test_presets_and_bad_config():
    assert PhantomConfig.preset("brats").shape == (155, 240, 240)
    assert PhantomConfig.preset("brats").spacing == (1.0, 1.0, 1.0)
    assert PhantomConfig.preset("small").spacing == (2.0, 2.0, 2.0)
    with pytest.raises(BiglError, match="brats, small, tiny"):
        PhantomConfig.preset("huge")
    with pytest.raises(BiglError, match="unknown phantom preset"):
        make_case(0, "huge")
    with pytest.raises(BiglError, match="spacing"):
        make_case(0, dataclasses.replace(PhantomConfig.preset("tiny"), spacing=(4.0, 0.0, 4.0)))
    with pytest.raises(BiglError, match="t1_spin_echo"):
        make_case(0, dataclasses.replace(PhantomConfig.preset("tiny"), t1_spin_echo=(0.5, 1.5)))
    with pytest.raises(BiglError, match="p_t1_bright_edema"):
        make_case(0, dataclasses.replace(PhantomConfig.preset("tiny"), p_t1_bright_edema=1.5))
    with pytest.raises(BiglError, match="seed"):
        make_case(-1, "tiny")


def test_case_seeds_are_stable_and_distinct():
    seeds = [case_seed(0, i) for i in range(50)]
    assert len(set(seeds)) == 50
    assert seeds == [case_seed(0, i) for i in range(50)]
    assert case_seed(1, 0) != case_seed(0, 0)


def test_write_dataset_round_trips_through_io(tmp_path):
    folders = write_dataset(tmp_path / "ds", n_cases=2, seed=7, preset="tiny")
    assert [f.name for f in folders] == ["Phantom_7_000", "Phantom_7_001"]
    cases = io.list_cases(tmp_path / "ds")
    assert [c.case_id for c in cases] == ["Phantom_7_000", "Phantom_7_001"]
    for i, case in enumerate(cases):
        assert case.sequences == SEQUENCES and case.has_labels
        expected = make_case(case_seed(7, i), "tiny")
        images = io.load_images(case)
        for key in SEQUENCES:
            np.testing.assert_array_equal(images[key].data, expected.images[key])
            assert images[key].spacing == pytest.approx(expected.spacing)
        np.testing.assert_array_equal(io.load_labels(case).data, expected.seg)


def test_write_dataset_refuses_existing_case_folder(tmp_path):
    write_dataset(tmp_path, n_cases=1, seed=0, preset="tiny")
    before = (tmp_path / "Phantom_0_000" / "Phantom_0_000_t1.nii.gz").read_bytes()
    with pytest.raises(BiglError, match="overwrite"):
        write_dataset(tmp_path, n_cases=2, seed=0, preset="tiny")
    assert not (tmp_path / "Phantom_0_001").exists()  # refused before writing anything
    write_dataset(tmp_path, n_cases=1, seed=0, preset="tiny", overwrite=True)
    assert (tmp_path / "Phantom_0_000" / "Phantom_0_000_t1.nii.gz").read_bytes() == before


def test_write_dataset_bad_arguments(tmp_path):
    with pytest.raises(BiglError, match="n_cases"):
        write_dataset(tmp_path, n_cases=0, preset="tiny")
    with pytest.raises(BiglError, match="prefix"):
        write_dataset(tmp_path, n_cases=1, preset="tiny", prefix="a/b")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BiglError, match="not a folder"):
        write_dataset(tmp_path / "file", n_cases=1, preset="tiny")


def test_cli_phantom(tmp_path, capsys):
    from bigl.cli import main

    assert main(["phantom", "--out", str(tmp_path), "--n-cases", "1", "--preset", "tiny"]) == 0
    assert (tmp_path / "Phantom_0_000" / "Phantom_0_000_seg.nii.gz").exists()
    assert main(["phantom", "--out", str(tmp_path), "--n-cases", "1", "--preset", "tiny"]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(["phantom", "--out", str(tmp_path / "se"), "--n-cases", "1", "--preset", "tiny",
                 "--t1-spin-echo", "1", "1"]) == 0
    mprage, se = (io.load_images(io.list_cases(p)[0]) for p in (tmp_path, tmp_path / "se"))
    assert np.array_equal(mprage["t2"].data, se["t2"].data)
    assert not np.array_equal(mprage["t1"].data, se["t1"].data)


# --------------------------------------------------------------------------- the engine's variety


@pytest.fixture(scope="module")
def variety():
    """24 tiny cases of the default engine: enough to see every kind of draw."""
    return [make_case(case_seed(123, i), "tiny") for i in range(24)]


def test_variety_of_lesions(variety):
    counts = [c.info["n_lesions"] for c in variety]
    assert {1, 2}.issubset(counts), counts                      # several lesions happen
    kinds = {lesion["core_kind"] for c in variety for lesion in c.info["lesions"]}
    assert {"ring", "solid"}.issubset(kinds) and len(kinds) >= 3, kinds
    wt = np.array([c.info["wt_ml"] for c in variety if c.info["n_lesions"]])
    assert wt.min() < 30 and wt.max() > 100, wt                 # small and large tumours
    centres = np.array([c.info["tumour_centre_mm"] for c in variety if c.info["n_lesions"]])
    assert (centres[:, 2] > 0).any() and (centres[:, 2] < 0).any()   # both hemispheres
    assert np.ptp(centres[:, 1]) > 40                           # front and back
    et_free = [c for c in variety if c.info["n_lesions"] and not (c.seg == 4).any()]
    assert et_free, "no case without enhancement (low-grade looking)"


def test_variety_of_pose_and_acquisition(variety):
    rot = np.array([c.info["rotation_deg"] for c in variety])
    assert np.abs(rot).max() > 8 and np.abs(rot).max() <= 15
    acquired = [max(a) for c in variety for a in c.info["acquired_mm"].values()]
    assert max(acquired) > 1.3 * min(acquired)                  # some thick-slice acquisitions (4 mm grid here)
    noise = [n for c in variety for n in c.info["noise"].values()]
    assert min(noise) < 0.02 and max(noise) > 0.04             # clean to noisy
    brains = np.array([c.brain_mask.sum() for c in variety])
    assert brains.max() > 1.2 * brains.min()                    # brain size varies


def test_healthy_cases_have_no_labels():
    cfg = dataclasses.replace(PhantomConfig.preset("tiny"), p_healthy=1.0)
    case = make_case(4, cfg)
    assert case.info["n_lesions"] == 0 and not case.seg.any()
    assert not np.isin(case.tissues, (Tissue.EDEMA, Tissue.NECROSIS, Tissue.NET, Tissue.ENHANCING)).any()
    assert case.brain_mask.mean() > 0.05


def test_random_contrast_mode_redraws_the_tissue_order():
    """SynthSeg-style mode: tissue means drawn at random, so the T1 order WM > GM > CSF is often broken."""
    cfg = dataclasses.replace(PhantomConfig.preset("tiny"), p_random_contrast=1.0)
    broken = 0
    for s in range(8):
        case = make_case(s, cfg)
        assert case.info["random_contrast"]
        wm, gm, csf = (_mean(case, "t1", t) for t in (Tissue.WM, Tissue.GM, Tissue.CSF))
        broken += not (wm > gm > csf)
        assert np.array_equal(case.images["t1"] > 0, case.brain_mask)   # background still exactly 0
    assert broken >= 3


def test_hindbrain_on_lower_slices():
    case = make_case(2, dataclasses.replace(PhantomConfig.preset("small"), rotation_deg=0.0, offset_mm=0.0))
    brain = case.brain_mask
    z_brain = np.flatnonzero(brain.any(axis=(1, 2)))
    low = brain[z_brain[0]: z_brain[0] + 8]
    # the lowest slices hold cerebellum/brainstem: narrower than the cerebrum but present
    assert low.any() and low.sum(axis=(1, 2)).max() < 0.8 * brain.sum(axis=(1, 2)).max()
