import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from bigl.checkpoint import load_bundle
from bigl.cli import main
from bigl.errors import BiglError
from bigl.evaluate import evaluate_dataset
from bigl.infer import segment_volume
from bigl.io import read_nifti


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "bigl", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("phantom", "train", "segment", "evaluate", "adapt", "benchmark", "demo"):
        assert cmd in out


def test_segment_writes_on_the_input_grid(tiny_dataset, tiny_bundle_path, tmp_path, capsys):
    case = sorted(p for p in tiny_dataset.iterdir() if p.is_dir())[0]
    src = next(case.glob("*_t1.nii.gz"))
    out, att, prob = tmp_path / "seg.nii.gz", tmp_path / "att.nii.gz", tmp_path / "p.nii.gz"
    rc = main(["segment", "--model", str(tiny_bundle_path), "--input", str(src), "--out", str(out),
               "--attention", str(att), "--probabilities", str(prob), "--device", "cpu"])
    assert rc == 0
    ref = nib.load(src)
    for p in (out, att, prob):
        img = nib.load(p)
        np.testing.assert_allclose(img.affine, ref.affine)
        assert img.shape[:3] == ref.shape
    assert set(np.unique(np.asarray(nib.load(out).dataobj))) <= {0, 1, 2, 4}
    assert nib.load(prob).shape == ref.shape + (4,)
    assert "segmented" in capsys.readouterr().out


def test_segment_labels_alone_match_labels_with_extras(tiny_dataset, tiny_bundle_path, tmp_path):
    src = next(sorted(p for p in tiny_dataset.iterdir() if p.is_dir())[0].glob("*_t1.nii.gz"))
    common = ["segment", "--model", str(tiny_bundle_path), "--input", str(src), "--device", "cpu"]
    assert main(common + ["--out", str(tmp_path / "a.nii.gz"), "--probabilities", str(tmp_path / "p.nii.gz")]) == 0
    assert main(common + ["--out", str(tmp_path / "b.nii.gz")]) == 0    # without extras: not computed at all
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "a.nii.gz").dataobj),
                                  np.asarray(nib.load(tmp_path / "b.nii.gz").dataobj))


def test_mirror_option_reaches_segment_volume(tiny_dataset, tiny_bundle_path, tmp_path):
    src = next(sorted(p for p in tiny_dataset.iterdir() if p.is_dir())[0].glob("*_t1.nii.gz"))
    probs = {}
    for mode in ("auto", "on", "off"):
        out = tmp_path / mode
        assert main(["segment", "--model", str(tiny_bundle_path), "--input", str(src), "--out", f"{out}.nii.gz",
                     "--probabilities", f"{out}_p.nii.gz", "--mirror", mode, "--device", "cpu"]) == 0
        probs[mode] = np.asarray(nib.load(f"{out}_p.nii.gz").dataobj)
    expected = segment_volume(load_bundle(tiny_bundle_path), read_nifti(src), device="cpu", mirror=False)
    np.testing.assert_array_equal(read_nifti(tmp_path / "off.nii.gz").data, expected.labels)
    np.testing.assert_array_equal(probs["auto"], probs["on"])           # one network: mirrored by default
    assert np.abs(probs["off"] - probs["on"]).max() > 1e-3
    # the dataset-folder path and evaluate take it too
    assert main(["segment", "--model", str(tiny_bundle_path), "--input", str(tiny_dataset), "--modality", "t1",
                 "--out", str(tmp_path / "folder"), "--mirror", "off", "--device", "cpu"]) == 0
    folder_labels = np.asarray(nib.load(tmp_path / "folder" / f"{src.parent.name}.nii.gz").dataobj)
    np.testing.assert_array_equal(folder_labels, np.asarray(nib.load(tmp_path / "off.nii.gz").dataobj))
    assert not np.array_equal(folder_labels, np.asarray(nib.load(tmp_path / "on.nii.gz").dataobj))
    scores = {}
    for mode in ("on", "off"):
        assert main(["evaluate", "--model", str(tiny_bundle_path), "--data", str(tiny_dataset), "--modality", "t1",
                     "--mirror", mode, "--json", str(tmp_path / f"{mode}.json"), "--device", "cpu"]) == 0
        scores[mode] = json.loads((tmp_path / f"{mode}.json").read_text())["per_case"]
    library = evaluate_dataset(load_bundle(tiny_bundle_path), tiny_dataset, "t1", device="cpu", mirror=False)
    assert scores["off"] == json.loads(json.dumps(library["per_case"], default=float))
    assert scores["on"] != scores["off"]


@pytest.mark.parametrize("user_policy", [None, "ACTIVE"])
def test_cli_makes_openmp_threads_sleep_before_torch_loads(user_policy):
    """OpenMP reads OMP_WAIT_POLICY when torch loads: the CLI must have set it by then, keeping a user's own."""
    code = ("import importlib.abc, os, sys\n"
            "seen = []\n"
            "class Spy(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' and not seen:\n"
            "            seen.append(os.environ.get('OMP_WAIT_POLICY'))\n"
            "sys.meta_path.insert(0, Spy())\n"
            "import bigl.cli\n"
            "print(seen)\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user_policy:
        env["OMP_WAIT_POLICY"] = user_policy
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == repr([user_policy or "PASSIVE"])


def test_segment_case_folder_needs_and_uses_modality(tiny_dataset, tiny_bundle_path, tmp_path, capsys):
    case = sorted(p for p in tiny_dataset.iterdir() if p.is_dir())[0]
    rc = main(["segment", "--model", str(tiny_bundle_path), "--input", str(case), "--out",
               str(tmp_path / "s.nii.gz"), "--device", "cpu"])
    assert rc == 2 and "t1" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="Adapt to this modality"):
        rc = main(["segment", "--model", str(tiny_bundle_path), "--input", str(case), "--modality", "t2",
                   "--out", str(tmp_path / "s.nii.gz"), "--device", "cpu"])
    assert rc == 0


def test_segment_refuses_to_overwrite(tiny_dataset, tiny_bundle_path, tmp_path, capsys):
    src = next(sorted(p for p in tiny_dataset.iterdir() if p.is_dir())[0].glob("*_t1.nii.gz"))
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"keep me")
    rc = main(["segment", "--model", str(tiny_bundle_path), "--input", str(src), "--out", str(out)])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep me"


def test_benchmark_refuses_to_replace_results(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "res"
    out.mkdir()
    (out / "results.json").write_text("keep me")
    rc = main(["benchmark", "--data", str(tiny_dataset), "--source", "t1", "--target", "t2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "--resume" in err and "--overwrite" in err and (out / "results.json").read_text() == "keep me"


def test_user_errors_print_a_message_not_a_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bigl", "segment", "--model", str(tmp_path / "missing.safetensors"),
                        "--input", "x.nii.gz", "--out", str(tmp_path / "o.nii.gz")], capture_output=True, text=True)
    assert r.returncode == 2
    assert "missing.safetensors" in r.stderr and "Traceback" not in r.stderr


def test_evaluate_prints_table_and_writes_json(tiny_dataset, tiny_bundle_path, tmp_path, capsys):
    rc = main(["evaluate", "--model", str(tiny_bundle_path), "--data", str(tiny_dataset), "--modality", "t1",
               "--json", str(tmp_path / "r.json"), "--device", "cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| DSC (%) |" in out and "| HD95 (mm) |" in out
    result = json.loads((tmp_path / "r.json").read_text())
    assert len(result["per_case"]) == 4 and set(result["summary"]) == {"WT", "TC", "ET", "average"}


def test_evaluate_reports_tumour_cases_apart_from_cases_without_tumour(tiny_dataset, tiny_bundle_path, tmp_path,
                                                                       capsys):
    from bigl.metrics import summarize

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    seg_path = sorted(data.glob("*/*_seg.nii.gz"))[0]
    seg = nib.load(seg_path)
    nib.save(nib.Nifti1Image(np.zeros(seg.shape, np.uint8), seg.affine, seg.header), seg_path)
    healthy = seg_path.parent.name
    assert main(["evaluate", "--model", str(tiny_bundle_path), "--data", str(data), "--modality", "t1",
                 "--json", str(tmp_path / "r.json"), "--device", "cpu", "--mirror", "off"]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "r.json").read_text())
    tumour = [{k: v for k, v in c.items() if k != "case"} for c in result["per_case"] if c["case"] != healthy]
    assert len(tumour) == 3 and result["tumour_cases"] == summarize(tumour)
    found = next(c["WT"]["pred_ml"] for c in result["per_case"] if c["case"] == healthy)
    assert result["no_tumour_cases"] == [{"case": healthy, "wt_found_ml": found}]
    assert "over the 3 case(s) with a tumour" in out and f"{healthy} {found:.1f} ml" in out
    # a set where every case has a tumour prints the table alone
    assert main(["evaluate", "--model", str(tiny_bundle_path), "--data", str(tiny_dataset), "--modality", "t1",
                 "--device", "cpu", "--mirror", "off"]) == 0
    out = capsys.readouterr().out
    assert "| DSC (%) |" in out and "with a tumour" not in out


def test_phantom_command(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "d"), "--n-cases", "1", "--preset", "tiny"]) == 0
    assert len(list((tmp_path / "d").iterdir())) == 1
    assert main(["phantom", "--out", str(tmp_path / "d"), "--n-cases", "1", "--preset", "tiny"]) == 2


@pytest.fixture(scope="module")
def tiny_multi_path(tiny_dataset, tmp_path_factory):
    from bigl.models.segmenter import SegmenterConfig
    from bigl.train import TrainConfig, train

    out = tmp_path_factory.mktemp("multi") / "multi.safetensors"
    cfg = TrainConfig(steps=2, batch_size=4, val_every=2, segmenter=SegmenterConfig(widths=(8, 16, 32)))
    train(tiny_dataset, ["t1", "t1ce", "t2", "flair"], out, cfg, device="cpu")
    return out


def test_segment_chooses_the_bundled_model(tiny_dataset, tiny_bundle_path, tiny_multi_path, tmp_path, capsys,
                                           monkeypatch):
    """A case folder without --modality -> the four-sequence model; T2 (--modality t2 or a *_t2 file) -> the adapted
    T2 model; --modality X or one file of another sequence -> the T1 model."""
    import shutil

    import bigl.bundles

    adapted = tmp_path / "adapted_t2.safetensors"
    shutil.copy(tiny_bundle_path, adapted)       # stands in for the bundled T1 -> T2 model: only its name is read
    monkeypatch.setattr(bigl.bundles, "MULTI_MODEL", tiny_multi_path)
    monkeypatch.setattr(bigl.bundles, "T1_MODEL", tiny_bundle_path)
    monkeypatch.setattr(bigl.bundles, "ADAPTED_T2_MODEL", adapted)
    case = sorted(p for p in tiny_dataset.iterdir() if p.is_dir())[0]
    assert main(["segment", "--input", str(case), "--out", str(tmp_path / "a.nii.gz"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "t1+t1ce+t2+flair" in out and tiny_multi_path.name in out
    assert main(["segment", "--input", str(case), "--modality", "t1", "--out", str(tmp_path / "b.nii.gz"),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "(t1;" in out and tiny_bundle_path.name in out
    for i, args in enumerate([["--input", str(case), "--modality", "t2"],
                              ["--input", str(next(case.glob("*_t2.nii.gz")))]]):
        assert main(["segment", *args, "--out", str(tmp_path / f"t2_{i}.nii.gz"), "--device", "cpu"]) == 0
        out = capsys.readouterr().out
        assert "(t2;" in out and adapted.name in out, out
    flair = next(case.glob("*_flair.nii.gz"))
    assert main(["segment", "--input", str(flair), "--out", str(tmp_path / "f.nii.gz"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "(flair;" in out and tiny_bundle_path.name in out
    # the four-sequence model given for one file: one clear line, no output written
    src = next(case.glob("*_t2.nii.gz"))
    rc = main(["segment", "--model", str(tiny_multi_path), "--input", str(src), "--out", str(tmp_path / "c.nii.gz"),
               "--device", "cpu"])
    assert rc == 2 and "reads 4 sequences" in capsys.readouterr().err and not (tmp_path / "c.nii.gz").exists()


def test_train_and_evaluate_several_sequences(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tiny_dataset), "--modality", "t2", "--out", str(out), "--lesion-contrast", "1.5"])
    assert "must be from 0 to 1" in capsys.readouterr().err and not out.exists()
    assert main(["train", "--data", str(tiny_dataset), "--modality", "t2", "flair", "--out", str(out), "--steps", "2",
                 "--val-every", "2", "--batch-size", "2", "--device", "cpu", "--lesion-contrast", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "t2+flair" in printed
    assert load_bundle(out).provenance["config"]["augmentation"]["p_lesion_contrast"] == 0.5
    # one validation case: the last model is written, and the message says whose Dice it prints
    written = load_bundle(out).provenance["val_metrics"]["average_dice"]
    assert f"the written (last) model's validation mean Dice {100 * written:.1f} %" in printed
    assert main(["evaluate", "--model", str(out), "--data", str(tiny_dataset), "--device", "cpu"]) == 0
    assert "(t2+flair, 4 cases)" in capsys.readouterr().out


def test_adapt_passes_lesion_contrast_and_round_trip_or_leaves_them_to_their_defaults(tiny_bundle_path, tmp_path,
                                                                                    monkeypatch, capsys):
    import bigl.adapt

    seen = []

    def stop(source, src, s_seq, tgt, t_seq, cfg, **kw):
        seen.append((cfg.lesion_contrast, cfg.lambda_round_trip))
        raise BiglError("stopped by the test")

    monkeypatch.setattr(bigl.adapt, "adapt", stop)
    base = ["adapt", "--model", str(tiny_bundle_path), "--source-data", "s", "--source-modality", "t1",
            "--target-data", "t", "--target-modality", "t2", "--out", str(tmp_path / "a.safetensors")]
    assert main(base) == 2 and main(base + ["--lesion-contrast", "0.25", "--round-trip", "0"]) == 2
    assert seen == [(None, bigl.adapt.AdaptConfig.lambda_round_trip), (0.25, 0.0)]
    with pytest.raises(SystemExit):
        main(base + ["--lesion-contrast", "2"])
    assert "must be from 0 to 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--round-trip", "-1"])
    assert "must be a finite number >= 0" in capsys.readouterr().err


def test_progress_bars_one_per_stage_on_a_terminal(capsys):
    from bigl.cli import TextProgress
    from bigl.progress import Progress

    bar = TextProgress(enabled=True)
    for stage, total in (("translator", 4), ("align", 3)):
        for step in range(1, total + 1):
            bar(Progress(stage, step, total, {"loss": 0.5}))
    err = capsys.readouterr().err
    assert "translator" in err and "4/4" in err and "align" in err and "3/3" in err and "loss=0.5" in err
    TextProgress(enabled=False)(Progress("x", 1, 1))
    assert capsys.readouterr().err == ""


def test_ensemble_command_combines_bundles_and_refuses_mismatches(tiny_dataset, tiny_bundle_path, tiny_multi_path,
                                                                  tmp_path, capsys):
    from bigl.checkpoint import save_bundle

    b = load_bundle(tiny_bundle_path)
    with torch.no_grad():
        for p in b.segmenter.parameters():
            p.mul_(1.1)
    other = save_bundle(b, tmp_path / "other.safetensors")
    out = tmp_path / "ens.safetensors"
    assert main(["ensemble", "--models", str(tiny_bundle_path), str(other), "--out", str(out)]) == 0
    assert "2 t1 segmenters" in capsys.readouterr().out
    ens = load_bundle(out)
    assert len(ens.segmenters) == 2 and ens.provenance["models"] == [str(tiny_bundle_path), str(other)]
    src = next(sorted(p for p in tiny_dataset.iterdir() if p.is_dir())[0].glob("*_t1.nii.gz"))
    assert main(["segment", "--model", str(out), "--input", str(src), "--out", str(tmp_path / "s.nii.gz"),
                 "--device", "cpu"]) == 0
    before = out.read_bytes()
    assert main(["ensemble", "--models", str(tiny_bundle_path), str(other), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["ensemble", "--models", str(tiny_bundle_path), str(tiny_multi_path), "--out",
                 str(tmp_path / "mixed.safetensors")]) == 2
    err = capsys.readouterr().err
    assert str(tiny_multi_path) in err and "differs" in err and not (tmp_path / "mixed.safetensors").exists()
