import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from bigl.cli import main


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


def test_phantom_command(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "d"), "--n-cases", "1", "--preset", "tiny"]) == 0
    assert len(list((tmp_path / "d").iterdir())) == 1
    assert main(["phantom", "--out", str(tmp_path / "d"), "--n-cases", "1", "--preset", "tiny"]) == 2
