"""Bad input, as a new user would give it: every case ends in one clear message and an intact disk (issue 18).

Each test writes the real bad file to ``tmp_path`` and goes through the library
or the CLI. docs/reliability.md lists them as a table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from scipy import ndimage

from bigl import io
from bigl._fs import clean_stale_temps
from bigl.checkpoint import DEMO_BUNDLE, Bundle, load_bundle, partial_path, promote_partial, save_bundle
from bigl.checks import skull_problem, warn_about_input
from bigl.cli import main
from bigl.errors import BiglError, InputWarning
from bigl.evaluate import evaluate_dataset
from bigl.infer import segment_volume
from bigl.models.segmenter import DualAttentionUNet, SegmenterConfig

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "sample_data"


# --------------------------------------------------------------------------- helpers


def brain(shape=(20, 24, 22)) -> np.ndarray:
    """An ellipsoid 'brain' of positive intensities in a zero background, (z, y, x)."""
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = zz**2 + yy**2 + xx**2 < 0.7
    return np.where(inside, 100 + 10 * xx, 0).astype(np.float32)


def nifti(path: Path, data: np.ndarray, affine=None, dtype=None) -> Path:
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    if dtype is not None:
        img.set_data_dtype(dtype)
    img.to_filename(path)
    return path


def claims(path: Path, shape, dtype=np.int16, payload=b"\0" * 1024) -> Path:
    """A NIfTI file whose header claims ``shape`` but which holds only ``payload`` after the header."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_qform(np.eye(4), code=1)
    raw = hdr.binaryblock + b"\0" * 4 + payload
    if path.name.endswith(".gz"):
        import gzip

        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def tiny_bundle() -> Bundle:
    torch.manual_seed(0)
    return Bundle(segmenter=DualAttentionUNet(SegmenterConfig(widths=(4, 8))), sequences=("t1",), patch_size=(16, 16))


def with_document(path: Path, edit) -> Path:
    """Rewrite the bundle at ``path`` with its JSON document changed by ``edit(doc)`` (weights unchanged)."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    doc = json.loads(meta["document"])
    meta["document"] = json.dumps(edit(doc))
    save_file(load_file(str(path)), str(path), metadata=meta)
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bigl", *args], capture_output=True, text=True, timeout=120)


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


# --------------------------------------------------------------------------- NIfTI files


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_header_claiming_2000_cubed_is_refused_before_allocating(tmp_path, name):
    path = claims(tmp_path / name, (2000, 2000, 2000))
    assert path.stat().st_size < 4096
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(BiglError, match=rf"{name}.*claims .*8,000,000,000 voxels"):
        io.read_nifti(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20e6 and time.perf_counter() - t0 < 2


def test_header_claiming_more_than_the_file_holds(tmp_path):
    # 100^3 int16 = 2 MB claimed, under the voxel cap, but the file holds 1 KB
    with pytest.raises(BiglError, match=r"small.nii: .*claims.*truncated or its header is corrupt"):
        io.read_nifti(claims(tmp_path / "small.nii", (100, 100, 100)))
    with pytest.raises(BiglError, match="more than gzip can expand"):
        io.read_nifti(claims(tmp_path / "small.nii.gz", (400, 400, 400)))


def test_huge_header_through_the_cli_is_one_line(tmp_path):
    path = claims(tmp_path / "huge.nii.gz", (2000, 2000, 2000))
    r = run_cli("segment", "--input", str(path), "--modality", "t1", "--out", str(tmp_path / "o.nii.gz"))
    one_line_error(r, "huge.nii.gz", "voxels")
    assert not (tmp_path / "o.nii.gz").exists()


def test_4d_series_refused_from_the_header(tmp_path):
    path = claims(tmp_path / "dwi.nii", (10, 10, 10, 30), payload=b"\0" * (2 * 30000))
    with pytest.raises(BiglError, match="4D image.*one 3D file per sequence"):
        io.read_nifti(path)


def test_int16_with_overflowing_scale_factor_blames_the_header(tmp_path):
    img = nib.Nifti1Image(np.full((4, 4, 4), 30000, dtype=np.int16), np.eye(4))
    img.header.set_slope_inter(1e36, 0)
    img.to_filename(tmp_path / "scaled.nii.gz")
    with pytest.raises(BiglError, match=r"scaled.nii.gz: .*scale factor.*scl_slope=1e\+36") as info:
        io.read_nifti(tmp_path / "scaled.nii.gz")
    assert "NaN" not in str(info.value)


def test_labels_checked_against_every_sequence_not_only_the_first(tmp_path):
    case = tmp_path / "C1"
    case.mkdir()
    data = brain()
    shifted = np.eye(4)
    shifted[0, 3] = 10.0  # T2 sits 10 mm off
    nifti(case / "C1_t1.nii.gz", data)
    nifti(case / "C1_t2.nii.gz", data, shifted)
    nifti(case / "C1_seg.nii.gz", (data > 105).astype(np.uint8))
    with pytest.raises(BiglError, match=r"C1_seg.nii.gz is not on the grid of .*C1_t2.nii.gz.*10.0 mm apart"):
        io.load_labels(io.find_case(case))


def test_brats2024_resection_cavity_is_refused_or_mapped_out(tmp_path):
    case = tmp_path / "BraTS-GLI-00001-100"
    case.mkdir()
    data = brain()
    seg = np.zeros(data.shape, dtype=np.uint8)
    seg[8:10, 10:12, 10:12] = 3   # ET in 2023 numbering
    seg[12:14, 10:12, 10:12] = 4  # resection cavity in BraTS 2024 post-treatment files
    nifti(case / f"{case.name}-t1n.nii.gz", data)
    nifti(case / f"{case.name}-seg.nii.gz", seg)
    c = io.find_case(case)
    with pytest.raises(BiglError, match=r"-seg.nii.gz .*label 4.*resection cavity.*--resection-cavity background"):
        io.load_labels(c)
    labels = io.load_labels(c, cavity="background").data
    assert int((labels == 4).sum()) == 8 and set(np.unique(labels)) == {0, 4}  # 3 -> ET, cavity -> background


def test_unrecognised_case_folders_are_warned_about(tmp_path, caplog):
    good = tmp_path / "A"
    good.mkdir()
    nifti(good / "A_t1.nii.gz", brain())
    odd = tmp_path / "patient7"
    odd.mkdir()
    nifti(odd / "patient7_T1w_MPRAGE.nii.gz", brain())
    (tmp_path / "notes").mkdir()
    with caplog.at_level("WARNING"):
        cases = io.list_cases(tmp_path)
    assert [c.case_id for c in cases] == ["A"]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "patient7" in warned[0] and "notes" not in warned[0] and "_t1.nii.gz" in warned[0]


def test_evaluate_shape_mismatch_names_the_files(tmp_path):
    case = tmp_path / "C1"
    case.mkdir()
    nifti(case / "C1_t1.nii.gz", brain((20, 24, 22)))
    nifti(case / "C1_seg.nii.gz", np.zeros((20, 24, 20), dtype=np.uint8))
    with pytest.raises(BiglError, match=r"C1_seg.nii.gz is not on the grid of .*C1_t1.nii.gz.*Register/resample"):
        evaluate_dataset(tiny_bundle(), tmp_path, "t1", device="cpu")


def test_anisotropic_and_oblique_volumes_are_warned_about(tmp_path):
    aniso = np.diag([0.5, 0.5, 6.0, 1.0])  # file axes x, y, z
    rot = np.eye(4)
    a = np.radians(20)
    rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    vol_a = io.read_nifti(nifti(tmp_path / "aniso.nii.gz", brain().transpose(2, 1, 0), aniso))
    vol_o = io.read_nifti(nifti(tmp_path / "oblique.nii.gz", brain().transpose(2, 1, 0), rot))
    bundle = tiny_bundle()
    with pytest.warns(InputWarning, match=r"aniso.nii.gz has anisotropic voxels \(6, 0.5, 0.5 mm.*Resample"):
        segment_volume(bundle, vol_a, device="cpu")
    with pytest.warns(InputWarning, match=r"oblique.nii.gz is oblique \(voxel axes 20 degrees"):
        segment_volume(bundle, vol_o, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        segment_volume(bundle, io.read_nifti(nifti(tmp_path / "ok.nii.gz", brain().transpose(2, 1, 0),
                                                   np.diag([2.0, 2.0, 2.0, 1.0]))), device="cpu")


def _phantom_t1() -> io.Volume:
    case = io.list_cases(SAMPLE_DIR)[0]
    return io.load_images(case, ["t1"])["t1"]


def test_whole_head_input_is_told_to_skull_strip_first(tmp_path):
    vol = _phantom_t1()
    brain_mask = vol.data != 0
    rng = np.random.default_rng(0)
    # (a) scanner noise left in the background
    noisy = np.where(brain_mask, vol.data, np.abs(rng.normal(0, 5, vol.shape))).astype(np.float32)
    # (b) zero background, but a dark skull and a bright scalp around the brain (spacing 2 mm: 6 mm, 6 mm)
    skull = ndimage.binary_dilation(brain_mask, iterations=3)
    head = ndimage.binary_dilation(skull, iterations=3)
    top = vol.data.max()
    scalp = np.where(brain_mask, vol.data, np.where(skull, 0.02 * top, np.where(head, top, 0))).astype(np.float32)
    for name, data in (("noisy_head.nii.gz", noisy), ("scalp_head.nii.gz", scalp)):
        path = io.write_like(data, vol, tmp_path / name)
        with pytest.warns(InputWarning, match=rf"{name} does not look skull-stripped.*HD-BET"):
            segment_volume(tiny_bundle(), io.read_nifti(path), device="cpu")


def test_skull_stripped_sample_data_is_not_flagged():
    for case in io.list_cases(SAMPLE_DIR):
        for vol in io.load_images(case).values():
            assert skull_problem(vol) is None
            with warnings.catch_warnings():
                warnings.simplefilter("error", InputWarning)
                warn_about_input(vol)


def test_sample_data_and_demo_bundle_are_intact():
    # Fails (does not skip) when sample_data/ or the demo bundle is missing or broken.
    cases = io.list_cases(SAMPLE_DIR)
    assert len(cases) >= 2
    for case in cases:
        assert set(case.sequences) == set(io.SEQUENCES) and case.has_labels
        vols = io.load_images(case)
        assert io.load_labels(case).shape == next(iter(vols.values())).shape
    assert load_bundle(DEMO_BUNDLE).sequences == ("t1",)


# --------------------------------------------------------------------------- model bundles


@pytest.fixture
def bundle_file(tmp_path):
    return save_bundle(tiny_bundle(), tmp_path / "m.safetensors")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d | {"segmenter": d["segmenter"] | {"widths": [16384, 32768, 65536, 131072]}},
     r"segmenter.widths \[16384, 32768, 65536, 131072\] is outside the supported range"),
    (lambda d: d | {"segmenter": d["segmenter"] | {"widths": [1024] * 8}}, r"implies [\d,]+ parameters, above the cap"),
    (lambda d: d | {"segmenter": d["segmenter"] | {"widths": [8, 16]}},
     r"weights do not match its segmenter config \(segmenter.encoders.0.0.weight is \[4, 1, 3, 3\] in the file "
     r"but \[8, 1, 3, 3\]"),
    (lambda d: d | {"segmenter": d["segmenter"] | {"in_channels": 65}}, r"in_channels = 65 is outside"),
    (lambda d: {k: v for k, v in d.items() if k != "sequences"}, r"no 'sequences' entry"),
    (lambda d: d | {"sequences": "t1"}, r"'sequences' must be a list"),
    (lambda d: d | {"sequences": ["t1", "t1"]}, r"'sequences' must be a list of 1-4 distinct"),
    (lambda d: d | {"patch_size": 5}, r"'patch_size' must be null or two ints"),
    (lambda d: d | {"inference": "magic"}, r"'inference' must be one of"),
    (lambda d: d | {"translator": {"width": 100000}}, r"translator.width = 100000 is outside"),
    (lambda d: [d], r"must be a JSON object"),
])
def test_bad_bundle_documents_are_refused_before_building(bundle_file, edit, message):
    with_document(bundle_file, edit)
    t0 = time.perf_counter()
    with pytest.raises(BiglError, match=rf"m.safetensors: .*{message}"):
        load_bundle(bundle_file)
    assert time.perf_counter() - t0 < 2


def test_multi_sequence_bundle_documents_are_accepted(tmp_path):
    seg = DualAttentionUNet(SegmenterConfig(widths=(4, 8), in_channels=12, context_slices=1))
    b = Bundle(segmenter=seg, sequences=("t1", "t1ce", "t2", "flair"))
    assert load_bundle(save_bundle(b, tmp_path / "m4.safetensors")).sequences == ("t1", "t1ce", "t2", "flair")


def test_bad_bundle_through_the_cli_is_one_line(bundle_file, tmp_path):
    with_document(bundle_file, lambda d: d | {"segmenter": d["segmenter"] | {"widths": [16384, 32768, 65536]}})
    img = nifti(tmp_path / "x_t1.nii.gz", brain())
    one_line_error(run_cli("segment", "--model", str(bundle_file), "--input", str(img), "--out",
                           str(tmp_path / "o.nii.gz")), "m.safetensors", "outside the supported range")


def test_partial_bundle_is_promoted_atomically(tmp_path):
    out = tmp_path / "m.safetensors"
    save_bundle(tiny_bundle(), partial_path(out))
    assert partial_path(out).name == "m.partial.safetensors" and not out.exists()
    promote_partial(out)
    assert load_bundle(out).sequences == ("t1",) and not partial_path(out).exists()


def test_stale_temps_of_dead_writers_are_cleaned_by_the_next_write(tmp_path):
    out = tmp_path / "m.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".m.safetensors.{int(dead.stdout)}.abcd1234.tmp"
    old_style = tmp_path / ".m.safetensors.k3j4h5g6.tmp"
    live = tmp_path / f".m.safetensors.{os.getpid()}.zzzz9999.tmp"
    other = tmp_path / ".m.safetensors.notes"
    probe = tmp_path / f".bigl-write-check.{int(dead.stdout)}.q1w2e3r4"    # a killed writer's writability probe
    live_probe = tmp_path / f".bigl-write-check.{os.getpid()}.a1s2d3f4"
    for p in (stale, old_style, live, other, probe, live_probe):
        p.write_bytes(b"half")
    save_bundle(tiny_bundle(), out)
    assert not stale.exists() and not old_style.exists() and not probe.exists()
    assert live.exists() and other.exists() and live_probe.exists()  # live writers' files, unrelated files stay
    live.unlink()
    live_probe.unlink()
    assert clean_stale_temps(out) == []


# --------------------------------------------------------------------------- CLI: outputs and arguments


@pytest.fixture
def unwritable(tmp_path):
    if os.geteuid() == 0:  # root writes through file modes; /sys refuses new files even to root
        return Path("/sys")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


def test_train_output_checked_before_any_work(tmp_path, unwritable, capsys):
    missing_data = str(tmp_path / "no_such_dataset")  # an output error must come first, before any data is read
    for out, needle in ((tmp_path / "model.pt", "must end in .safetensors"),
                        (unwritable / "m.safetensors", "is not writable"),
                        (tmp_path / "a_file" / "m.safetensors", "is a file, not a folder")):
        (tmp_path / "a_file").write_text("x")
        t0 = time.perf_counter()
        rc = main(["train", "--data", missing_data, "--modality", "t1", "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and str(out) in err and time.perf_counter() - t0 < 2
    (tmp_path / "m.last.safetensors").write_text("keep me")
    assert main(["train", "--data", missing_data, "--modality", "t1", "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "m.last.safetensors already exists" in capsys.readouterr().err


def test_adapt_output_checked_before_any_work(tmp_path, unwritable, capsys):
    base = ["adapt", "--model", "none", "--source-data", "x", "--source-modality", "t1", "--target-data", "y",
            "--target-modality", "t2"]
    assert main(base + ["--out", str(tmp_path / "model.pt")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
    assert main(base + ["--out", str(unwritable / "a.safetensors")]) == 2
    assert "is not writable" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--steps", "--val-every", "--batch-size"])
def test_zero_counts_are_refused_by_the_parser(tmp_path, flag, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", str(tmp_path), "--modality", "t1", "--out", str(tmp_path / "m.safetensors"),
              flag, "0"])
    assert info.value.code == 2 and f"argument {flag}: must be >= 1, got 0" in capsys.readouterr().err


def test_segment_bad_second_output_leaves_nothing(tmp_path, capsys):
    img = nifti(tmp_path / "x_t1.nii.gz", brain())
    a = tmp_path / "a.nii.gz"
    rc = main(["segment", "--input", str(img), "--out", str(a), "--attention", str(tmp_path / "b.txt")])
    assert rc == 2 and "b.txt: the NIfTI output must end in .nii.gz or .nii" in capsys.readouterr().err
    assert not a.exists()
    assert main(["segment", "--input", str(img), "--out", str(img), "--overwrite"]) == 2
    assert "given twice" in capsys.readouterr().err and nib.load(img).shape == brain().shape


def test_write_many_is_all_or_none(tmp_path):
    ref = io.volume_from_array(brain())
    with pytest.raises(BiglError, match="does not fit the grid"):
        io.write_many([(brain(), tmp_path / "a.nii.gz"), (np.zeros((3, 3, 3)), tmp_path / "b.nii.gz")], ref)
    assert list(tmp_path.iterdir()) == []


def test_evaluate_json_follows_the_output_rules(tiny_dataset, tiny_bundle_path, tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text("keep me")
    args = ["evaluate", "--model", str(tiny_bundle_path), "--data", str(tiny_dataset), "--modality", "t1",
            "--json", str(out), "--device", "cpu"]
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(args[:-4] + ["--json", str(tmp_path / "r.txt")]) == 2
    assert "must end in .json" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "None on" not in printed and f"{tiny_bundle_path} on" in printed and "(t1, 4 cases)" in printed
    assert len(json.loads(out.read_text())["per_case"]) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left
