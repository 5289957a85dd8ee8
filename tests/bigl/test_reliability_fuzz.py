"""Property-based fuzzing (hypothesis) of the NIfTI reader and the bundle loader.

Random headers, shapes, dtypes, affines, scale factors, byte flips and
truncations: the only allowed outcomes are a result or :class:`BiglError`.
Any other exception (or a hang) is a bug. ``CASES`` counts the examples run;
docs/reliability.md reports it.
"""

from __future__ import annotations

import gzip
import json
import struct
import warnings

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bigl import io
from bigl.checkpoint import Bundle, load_bundle, save_bundle
from bigl.errors import BiglError
from bigl.models.segmenter import DualAttentionUNet, SegmenterConfig

CASES = {"nifti": 0, "bundle": 0}
_HC = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=_HC)    # default suite: a few seconds
LONG = settings(max_examples=1500, deadline=None, suppress_health_check=_HC)  # pytest -m slow

DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.float32, np.float64, np.int64, np.complex64]
finite = st.floats(-1e3, 1e3, allow_nan=False)
any_float = st.one_of(finite, st.sampled_from([0.0, np.nan, np.inf, -np.inf, 1e38, -1e38, 1e-38]))


@st.composite
def nifti_bytes(draw) -> tuple[bytes, bool]:
    ndim = draw(st.integers(1, 5))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(DTYPES))
    # arrays(), not a list of prod(shape) floats: up to 7**5 voxels, over what a list strategy can draw
    data = draw(arrays(np.float64, shape, elements=finite))
    if draw(st.booleans()):
        data = np.zeros(shape)
    affine = np.eye(4)
    affine[:3, :] = np.asarray(draw(st.lists(any_float if draw(st.booleans()) else finite, min_size=12,
                                             max_size=12))).reshape(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = nib.Nifti1Image(data.astype(dtype), np.eye(4), dtype=dtype)
        img.header.set_sform(affine, code=draw(st.sampled_from([0, 1, 2])))  # stored as given, even singular
        if draw(st.booleans()):
            img.header["scl_slope"], img.header["scl_inter"] = draw(any_float), draw(any_float)
        raw = bytearray(img.to_bytes())
    # header mutations: dims, datatype, vox_offset, scale factors, or random bytes anywhere in the first 352
    for _ in range(draw(st.integers(0, 4))):
        what = draw(st.sampled_from(["dim", "datatype", "vox_offset", "slope", "byte"]))
        if what == "dim":
            i = draw(st.integers(0, 7))
            struct.pack_into("<h", raw, 40 + 2 * i, draw(st.integers(-32768, 32767)))
        elif what == "datatype":
            struct.pack_into("<h", raw, 70, draw(st.sampled_from([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 511, 2304,
                                                                  1536, 2048, 9999])))
        elif what == "vox_offset":
            struct.pack_into("<f", raw, 108, draw(st.sampled_from([0.0, 352.0, 1e9, -5.0, np.nan, 353.5])))
        elif what == "slope":
            struct.pack_into("<f", raw, 112, np.float32(draw(any_float)))
        else:
            raw[draw(st.integers(0, 351))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]
    compressed = draw(st.booleans())
    out = gzip.compress(bytes(raw)) if compressed else bytes(raw)
    if compressed and draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return out, compressed


def _nifti_property(tmp_path, case, label):
    CASES["nifti"] += 1
    raw, compressed = case
    path = tmp_path / ("f.nii.gz" if compressed else "f.nii")
    path.write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            vol = io.read_nifti(path, label=label)
        except BiglError as exc:
            assert str(path) in str(exc)
            return
    assert vol.data.ndim == 3 and vol.data.dtype == (np.uint8 if label else np.float32)
    assert np.all(np.isfinite(vol.data)) and all(s > 0 for s in vol.spacing)


test_fuzz_nifti_reader = FAST(given(case=nifti_bytes(), label=st.booleans())(_nifti_property))
test_fuzz_nifti_reader_long = pytest.mark.slow(LONG(given(case=nifti_bytes(), label=st.booleans())(_nifti_property)))


@pytest.fixture(scope="module")
def bundle_bytes(tmp_path_factory) -> bytes:
    b = Bundle(segmenter=DualAttentionUNet(SegmenterConfig(widths=(4, 8))), sequences=("t1",), patch_size=(16, 16))
    return save_bundle(b, tmp_path_factory.mktemp("b") / "m.safetensors").read_bytes()


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=10)
DOC_KEYS = ["segmenter", "sequences", "patch_size", "inference", "translator", "translator_s2t", "source_sequence",
            "normalization", "provenance"]
SEG_KEYS = ["in_channels", "num_classes", "widths", "norm", "attention", "attention_reduction", "dropout",
            "context_slices"]


@st.composite
def bundle_mutation(draw, original: bytes) -> bytes:
    n = struct.unpack("<Q", original[:8])[0]
    header = json.loads(original[8:8 + n])
    doc = json.loads(header["__metadata__"]["document"])
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(DOC_KEYS + ["segmenter." + k for k in SEG_KEYS]))
        target, leaf = (doc["segmenter"], key.split(".")[1]) if key.startswith("segmenter.") and isinstance(
            doc.get("segmenter"), dict) else (doc, key.split(".")[0])
        if draw(st.booleans()):
            target.pop(leaf, None)
        else:
            target[leaf] = draw(json_values)
    header["__metadata__"]["document"] = json.dumps(doc, allow_nan=True)
    if draw(st.booleans()):  # tensor shapes or offsets in the weights header
        name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        field = draw(st.sampled_from(["shape", "data_offsets", "dtype"]))
        header[name][field] = draw(json_values)
    body = json.dumps(header).encode()
    out = struct.pack("<Q", len(body)) + body + original[8 + n:]
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    if draw(st.booleans()):
        i = draw(st.integers(0, max(len(out) - 1, 0)))
        out = out[:i] + bytes([draw(st.integers(0, 255))]) + out[i + 1:]
    return out


def _bundle_property(tmp_path, bundle_bytes, data):
    CASES["bundle"] += 1
    path = tmp_path / "m.safetensors"
    path.write_bytes(data.draw(bundle_mutation(bundle_bytes)))
    try:
        bundle = load_bundle(path)
    except BiglError as exc:
        assert str(path) in str(exc)
        return
    assert bundle.segmenter is not None and bundle.sequences


test_fuzz_bundle_loader = FAST(given(data=st.data())(_bundle_property))
test_fuzz_bundle_loader_long = pytest.mark.slow(LONG(given(data=st.data())(_bundle_property)))


def test_fuzz_case_counts_reported():
    # runs after the two fuzz tests in file order; -p no:randomly keeps that order
    print(f"fuzzed {CASES['nifti']} NIfTI files and {CASES['bundle']} bundles")
    assert CASES["nifti"] >= 60 and CASES["bundle"] >= 60
