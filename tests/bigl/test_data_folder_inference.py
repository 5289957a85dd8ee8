"""`bigl segment --input DATASET_DIR --out OUT_DIR`: one <case id>.nii.gz per case, existing outputs kept."""

import shutil

import numpy as np

from bigl.cli import main
from bigl.io import list_cases, read_nifti


def test_segment_a_dataset_folder(tiny_dataset, tiny_bundle_path, tmp_path, capsys):
    data = shutil.copytree(tiny_dataset, tmp_path / "data")
    out = tmp_path / "out"
    ids = [c.case_id for c in list_cases(data)]
    assert main(["segment", "--model", str(tiny_bundle_path), "--input", str(data), "--out", str(out),
                 "--modality", "t1", "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{i}.nii.gz" for i in ids)
    first = read_nifti(out / f"{ids[0]}.nii.gz", label=True)
    assert first.shape == read_nifti(list_cases(data)[0].files["t1"]).shape
    assert "segmented 4 case(s)" in capsys.readouterr().out

    # a second run keeps what exists; a broken case is reported, the others still written, exit non-zero
    before = (out / f"{ids[0]}.nii.gz").stat().st_mtime_ns
    (out / f"{ids[1]}.nii.gz").unlink()
    (list_cases(data)[2].files["t1"]).write_bytes(b"not a nifti")
    (out / f"{ids[2]}.nii.gz").unlink()
    assert main(["segment", "--model", str(tiny_bundle_path), "--input", str(data), "--out", str(out),
                 "--modality", "t1", "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "segmented 1 case(s)" in captured.out and "2 skipped" in captured.out
    assert f"failed {ids[2]}" in captured.err and "1 case(s) failed" in captured.err
    assert (out / f"{ids[0]}.nii.gz").stat().st_mtime_ns == before and (out / f"{ids[1]}.nii.gz").exists()
    assert not (out / f"{ids[2]}.nii.gz").exists()
    # --overwrite replaces
    assert main(["segment", "--model", str(tiny_bundle_path), "--input", str(data), "--out", str(out),
                 "--modality", "t1", "--device", "cpu", "--overwrite"]) == 1
    assert (out / f"{ids[0]}.nii.gz").stat().st_mtime_ns != before
    assert np.isin(read_nifti(out / f"{ids[0]}.nii.gz", label=True).data, [0, 1, 2, 4]).all()


def test_dataset_folder_needs_an_output_folder(tiny_dataset, tiny_bundle_path, tmp_path, capsys):
    assert main(["segment", "--model", str(tiny_bundle_path), "--input", str(tiny_dataset), "--out",
                 str(tmp_path / "x.nii.gz"), "--modality", "t1", "--device", "cpu"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()
