"""bigl.io: orientation round trips, BraTS case discovery, and one real bad file per error."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bigl import io
from bigl.errors import BiglError

SPACING = (3.0, 2.0, 1.5)  # (z, y, x) mm, all different so a swapped axis shows
SHAPE = (4, 5, 6)  # (z, y, x)


def anatomy() -> np.ndarray:
    """A (z, y, x) volume whose every voxel value is distinct."""
    return np.arange(1, np.prod(SHAPE) + 1, dtype=np.float32).reshape(SHAPE)


def _save(data: np.ndarray, affine: np.ndarray, path: Path, dtype=np.float32) -> Path:
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.set_data_dtype(dtype)
    nib.save(img, str(path))
    return path


def write_ras(a: np.ndarray, path: Path) -> Path:
    """File voxel axes (i, j, k) = (L->R, P->A, I->S)."""
    sz, sy, sx = SPACING
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = (-10.0, 20.0, 5.0)
    return _save(a.transpose(2, 1, 0), affine, path)


def write_lps(a: np.ndarray, path: Path) -> Path:
    """Same anatomy, voxel axes (R->L, A->P, I->S) as DICOM-derived files often are."""
    sz, sy, sx = SPACING
    nz, ny, nx = a.shape
    data = a.transpose(2, 1, 0)[::-1, ::-1, :]
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = (-10.0 + sx * (nx - 1), 20.0 + sy * (ny - 1), 5.0)
    return _save(data, affine, path)


def write_permuted(a: np.ndarray, path: Path) -> Path:
    """Same anatomy stored as (z, x, y) with the z axis flipped (S->I)."""
    sz, sy, sx = SPACING
    nz = a.shape[0]
    data = a[::-1].transpose(0, 2, 1)  # (z flipped, x, y)
    affine = np.zeros((4, 4))
    affine[2, 0] = -sz  # file axis 0 -> world z, superior->inferior
    affine[0, 1] = sx  # file axis 1 -> world x
    affine[1, 2] = sy  # file axis 2 -> world y
    affine[:3, 3] = (-10.0, 20.0, 5.0 + sz * (nz - 1))
    affine[3, 3] = 1.0
    return _save(data, affine, path)


WRITERS = {"ras": write_ras, "lps": write_lps, "permuted": write_permuted}


# --------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("kind", list(WRITERS))
def test_read_gives_canonical_array_and_spacing(tmp_path, kind):
    path = WRITERS[kind](anatomy(), tmp_path / f"{kind}.nii.gz")
    vol = io.read_nifti(path)
    np.testing.assert_array_equal(vol.data, anatomy())  # same (z, y, x) array for every storage order
    assert vol.data.dtype == np.float32
    assert vol.spacing == pytest.approx(SPACING)
    assert np.allclose(vol.affine, nib.load(path).affine)  # original affine kept
    # canonical affine: index (z, y, x) -> same world point whatever the storage
    assert np.allclose(vol.canonical_affine @ [1, 2, 3, 1], write_ras_point((1, 2, 3)))


def write_ras_point(zyx):
    sz, sy, sx = SPACING
    z, y, x = zyx
    return np.array([-10.0 + sx * x, 20.0 + sy * y, 5.0 + sz * z, 1.0])


@pytest.mark.parametrize("kind", list(WRITERS))
def test_write_like_round_trip_matches_reference_file(tmp_path, kind):
    ref_path = WRITERS[kind](anatomy(), tmp_path / f"{kind}.nii.gz")
    vol = io.read_nifti(ref_path)
    out = io.write_like(vol.data, vol, tmp_path / "out" / "copy.nii.gz")
    ref, back = nib.load(ref_path), nib.load(out)
    assert back.shape == ref.shape
    np.testing.assert_array_equal(back.affine, ref.affine)
    assert nib.aff2axcodes(back.affine) == nib.aff2axcodes(ref.affine)
    np.testing.assert_array_equal(back.get_fdata(), ref.get_fdata())
    assert back.get_data_dtype() == np.float32


def test_write_like_labels_stay_uint8_and_probabilities_are_channel_last(tmp_path):
    vol = io.read_nifti(write_permuted(anatomy(), tmp_path / "p.nii.gz"))
    labels = (vol.data.astype(np.int64) % 3).astype(np.uint8)
    out = io.write_like(labels, vol, tmp_path / "seg.nii.gz")
    assert nib.load(out).get_data_dtype() == np.uint8
    np.testing.assert_array_equal(io.read_nifti(out, label=True).data, labels)
    out = io.write_like(labels.astype(np.int64), vol, tmp_path / "seg64.nii.gz")
    assert nib.load(out).get_data_dtype() == np.uint8
    out = io.write_like(vol.data.astype(np.int16) * 100, vol, tmp_path / "img16.nii.gz")
    assert nib.load(out).get_data_dtype() == np.int16

    probs = np.stack([vol.data / vol.data.max(), 1 - vol.data / vol.data.max()])  # (C, z, y, x)
    out = io.write_like(probs, vol, tmp_path / "prob.nii")
    img = nib.load(out)
    assert img.shape == nib.load(vol.path).shape + (2,)
    assert img.get_data_dtype() == np.float32
    for c in range(2):
        single = io.write_like(probs[c], vol, tmp_path / f"c{c}.nii.gz")
        np.testing.assert_allclose(img.get_fdata()[..., c], nib.load(single).get_fdata())


def test_write_like_refuses_to_overwrite(tmp_path):
    vol = io.read_nifti(write_ras(anatomy(), tmp_path / "a.nii.gz"))
    target = io.write_like(vol.data, vol, tmp_path / "seg.nii.gz")
    with pytest.raises(BiglError, match="--overwrite") as exc:
        io.write_like(vol.data * 2, vol, target)
    assert "seg.nii.gz" in str(exc.value)
    np.testing.assert_array_equal(io.read_nifti(target).data, vol.data)  # untouched
    io.write_like(vol.data * 2, vol, target, overwrite=True)
    np.testing.assert_array_equal(io.read_nifti(target).data, vol.data * 2)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_save_nifti_and_volume_from_array(tmp_path):
    a = anatomy()
    path = io.save_nifti(a, tmp_path / "new.nii.gz", SPACING)
    vol = io.read_nifti(path)
    np.testing.assert_array_equal(vol.data, a)
    assert vol.spacing == pytest.approx(SPACING)
    mem = io.volume_from_array(a, SPACING)
    np.testing.assert_array_equal(mem.affine, vol.affine)
    labels = (a.astype(np.uint8) % 2) * 4
    out = io.write_like(labels, mem, tmp_path / "mem.nii.gz")
    np.testing.assert_array_equal(io.read_nifti(out, label=True).data, labels)


# --------------------------------------------------------------------------- cases


def make_case(root: Path, case_id: str, naming: str, seg: np.ndarray | None = None, keys=io.SEQUENCES) -> Path:
    suffix = {
        "brats2021": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
        "brats2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
    }[naming]
    folder = root / case_id
    for n, key in enumerate(keys):
        io.save_nifti(anatomy() + n, folder / f"{case_id}{suffix[key]}.nii.gz", SPACING)
    if seg is not None:
        io.save_nifti(seg.astype(np.uint8), folder / f"{case_id}{suffix['seg']}.nii", SPACING)
    return folder


def toy_seg(et_value: int) -> np.ndarray:
    seg = np.zeros(SHAPE, np.uint8)
    seg[1, 1:3, 1:3] = 2
    seg[2, 2, 2] = 1
    seg[2, 3, 3] = et_value
    return seg


def test_brats2021_case(tmp_path):
    folder = make_case(tmp_path, "BraTS2021_00001", "brats2021", seg=toy_seg(4))
    case = io.find_case(folder)
    assert (case.case_id, case.naming, case.sequences, case.has_labels) == (
        "BraTS2021_00001",
        "brats2021",
        io.SEQUENCES,
        True,
    )
    images = io.load_images(case)
    assert list(images) == list(io.SEQUENCES)
    np.testing.assert_array_equal(images["t2"].data, anatomy() + 2)
    labels = io.load_labels(case)
    assert labels.data.dtype == np.uint8
    np.testing.assert_array_equal(labels.data, toy_seg(4))


def test_brats2023_case_maps_label_3_to_4(tmp_path):
    folder = make_case(tmp_path, "BraTS-GLI-00002-000", "brats2023", seg=toy_seg(3), keys=("t1", "flair"))
    case = io.find_case(folder)
    assert (case.case_id, case.naming, case.sequences) == ("BraTS-GLI-00002-000", "brats2023", ("t1", "flair"))
    np.testing.assert_array_equal(io.load_labels(case).data, toy_seg(4))
    np.testing.assert_array_equal(io.load_images(case, ["flair"])["flair"].data, anatomy() + 1)


def test_list_cases_sorted_and_skips_foreign_folders(tmp_path):
    make_case(tmp_path, "B_002", "brats2021", keys=("t1",))
    make_case(tmp_path, "A_001", "brats2021", keys=("t1",), seg=toy_seg(4))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("x")
    cases = io.list_cases(tmp_path)
    assert [(c.case_id, c.has_labels) for c in cases] == [("A_001", True), ("B_002", False)]


def test_read_input_file_and_folder(tmp_path):
    folder = make_case(tmp_path, "C_003", "brats2023", keys=("t1", "t2"))
    vol, seq = io.read_input(folder / "C_003-t2w.nii.gz")
    assert seq == "t2"
    np.testing.assert_array_equal(vol.data, anatomy() + 1)
    assert io.read_input(folder / "C_003-t2w.nii.gz", "flair")[1] == "flair"  # the given one wins
    vol, seq = io.read_input(folder, "t1")
    assert seq == "t1"
    np.testing.assert_array_equal(vol.data, anatomy())
    with pytest.raises(BiglError, match=r"several sequences \(t1, t2\).*--modality") as exc:
        io.read_input(folder)
    assert "C_003" in str(exc.value)
    single = make_case(tmp_path / "s", "D_004", "brats2021", keys=("flair",))
    assert io.read_input(single)[1] == "flair"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("BraTS19_001_t1ce.nii.gz", "t1ce"),
        ("BraTS19_001_t1.nii", "t1"),
        ("x-t2f", "flair"),
        ("T2w", "t2"),
        ("FLAIR", "flair"),
        ("T2-FLAIR", "flair"),
        ("T1 post-contrast", "t1ce"),
        ("t1c", "t1ce"),
        ("t1gd", "t1ce"),
        ("T1-Gd [1]", "t1ce"),
        ("t1n", "t1"),
        ("BraTS-GLI-00000-000-t2w.nii.gz", "t2"),
        ("case_seg.nii.gz", None),
        ("dwi", None),
        ("", None),
    ],
)
def test_sequence_from_name(name, expected):
    assert io.sequence_from_name(name) == expected


# --------------------------------------------------------------------------- errors (real bad files)


def _raises(fn, *must_contain: str) -> str:
    with pytest.raises(BiglError) as exc:
        fn()
    msg = str(exc.value)
    for part in must_contain:
        assert part.lower() in msg.lower(), f"{part!r} not in {msg!r}"
    return msg


def test_error_truncated_gzip(tmp_path):
    noise = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32) + 1  # incompressible
    raw = _save(noise, np.eye(4), tmp_path / "g.nii.gz").read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(raw[: int(len(raw) * 0.8)])  # header survives, voxels do not
    assert nib.load(bad).shape == (20, 20, 20)  # nibabel itself only fails lazily, on the voxels
    _raises(lambda: io.read_nifti(bad), "cut.nii.gz", "truncated")
    stub = tmp_path / "stub.nii.gz"
    stub.write_bytes(raw[:200])  # not even a whole header: fails on load
    _raises(lambda: io.read_nifti(stub), "stub.nii.gz", "truncated")


def test_error_not_a_nifti(tmp_path):
    bad = tmp_path / "notes.nii.gz"
    bad.write_text("this is a text file, renamed\n" * 20)
    _raises(lambda: io.read_nifti(bad), "notes.nii.gz", "not a NIfTI")
    plain = tmp_path / "plain.nii"
    plain.write_bytes(gzip.compress(b"x" * 400))
    _raises(lambda: io.read_nifti(plain), "plain.nii", "NIfTI")
    _raises(lambda: io.read_nifti(tmp_path / "scan.mha"), "scan.mha", "no such")
    (tmp_path / "scan.mha").write_text("x")
    _raises(lambda: io.read_nifti(tmp_path / "scan.mha"), "scan.mha", ".nii.gz")


def test_error_nan_voxel(tmp_path):
    a = anatomy()
    a[1, 2, 3] = np.nan
    _raises(lambda: io.read_nifti(write_ras(a, tmp_path / "nan.nii.gz")), "nan.nii.gz", "NaN")


def test_error_2d_and_4d(tmp_path):
    flat = _save(np.ones((5, 6)), np.eye(4), tmp_path / "slice.nii.gz")
    _raises(lambda: io.read_nifti(flat), "slice.nii.gz", "2D", "3D")
    four = _save(np.ones((6, 5, 4, 2)), np.eye(4), tmp_path / "series.nii.gz")
    _raises(lambda: io.read_nifti(four), "series.nii.gz", "4D", "one 3D file per sequence")
    squeezable = _save(np.ones((6, 5, 4, 1)), np.eye(4), tmp_path / "one.nii.gz")
    assert io.read_nifti(squeezable).data.shape == (4, 5, 6)


def test_error_all_zero(tmp_path):
    _raises(lambda: io.read_nifti(write_ras(np.zeros(SHAPE), tmp_path / "zero.nii.gz")), "zero.nii.gz", "all zeros")


def test_error_label_out_of_range(tmp_path):
    seg = toy_seg(4)
    seg[0, 0, 0] = 5
    path = io.save_nifti(seg, tmp_path / "x_seg.nii.gz", SPACING)
    _raises(lambda: io.read_nifti(path, label=True), "x_seg.nii.gz", "[5]", "allowed")
    # 3 is not allowed without the BraTS 2023 mapping
    path3 = io.save_nifti(toy_seg(3), tmp_path / "y_seg.nii.gz", SPACING)
    _raises(lambda: io.read_nifti(path3, label=True), "y_seg.nii.gz", "[3]")
    np.testing.assert_array_equal(io.read_nifti(path3, label=True, label_map={3: 4}).data, toy_seg(4))


def test_error_mismatched_shapes(tmp_path):
    folder = make_case(tmp_path, "E_005", "brats2021", keys=("t1",))
    io.save_nifti(np.ones((4, 5, 7)), folder / "E_005_t2.nii.gz", SPACING)
    _raises(lambda: io.load_images(io.find_case(folder)), "E_005_t2.nii.gz", "E_005_t1.nii.gz", "shape")


def test_error_mismatched_affines(tmp_path):
    folder = make_case(tmp_path, "F_006", "brats2021", keys=("t1",))
    io.save_nifti(anatomy(), folder / "F_006_flair.nii.gz", (3.0, 2.0, 1.0))
    _raises(lambda: io.load_images(io.find_case(folder)), "F_006_flair.nii.gz", "F_006_t1.nii.gz", "affine")


def test_error_label_grid_differs_from_images(tmp_path):
    folder = make_case(tmp_path, "G_007", "brats2021", keys=("t1",))
    io.save_nifti(np.zeros((4, 5, 7), np.uint8), folder / "G_007_seg.nii.gz", SPACING)
    _raises(lambda: io.load_labels(io.find_case(folder)), "G_007_seg.nii.gz", "grid")


def test_error_missing_sequence_and_labels(tmp_path):
    folder = make_case(tmp_path, "H_008", "brats2021", keys=("t1", "flair"))
    case = io.find_case(folder)
    _raises(lambda: io.load_images(case, ["t1", "t2"]), "H_008", "no t2 file", "*_t2.nii.gz", "*-t2w.nii.gz")
    _raises(lambda: io.load_labels(case), "H_008", "no segmentation")


def test_error_empty_dataset_and_missing_paths(tmp_path):
    empty = tmp_path / "dataset"
    empty.mkdir()
    _raises(lambda: io.list_cases(empty), "dataset", "no BraTS case folders")
    _raises(lambda: io.list_cases(tmp_path / "nope"), "nope", "no such")
    _raises(lambda: io.find_case(tmp_path / "nope"), "nope", "no such")
    _raises(lambda: io.find_case(empty), "dataset", "no recognised BraTS files")
    case = make_case(tmp_path, "I_009", "brats2021", keys=("t1",))
    _raises(lambda: io.list_cases(case), "I_009", "single case folder")
    _raises(lambda: io.read_input(tmp_path / "missing.nii.gz"), "missing.nii.gz", "no such")


def test_error_ambiguous_case_folders(tmp_path):
    folder = make_case(tmp_path, "J_010", "brats2021", keys=("t1",))
    io.save_nifti(anatomy(), folder / "J_010-t2w.nii.gz", SPACING)
    _raises(lambda: io.find_case(folder), "J_010", "mixes")
    other = make_case(tmp_path, "K_011", "brats2021", keys=("t1",))
    io.save_nifti(anatomy(), other / "L_012_t2.nii.gz", SPACING)
    _raises(lambda: io.find_case(other), "K_011_t1.nii.gz", "L_012_t2.nii.gz", "different cases")


@pytest.mark.parametrize("dtype", [np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]), np.complex64])
def test_non_scalar_voxels_are_refused_with_the_fix(tmp_path, dtype):
    """An RGB (NIfTI datatype 128) or complex image: one clear error naming the file, not a numpy TypeError."""
    data = np.zeros((4, 4, 4), dtype=dtype)
    path = tmp_path / "colour.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    with pytest.raises(BiglError, match="grayscale") as err:
        io.read_nifti(path)
    assert str(path) in str(err.value)
