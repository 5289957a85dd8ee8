import copy
import dataclasses

import numpy as np
import pytest
import torch

from bigl.checkpoint import ensemble, load_bundle
from bigl.errors import BiglError
from bigl.infer import (
    SequenceMismatchWarning,
    attention_query,
    predict_prepared,
    resolve_device,
    segment_volume,
    uncertainty,
)
from bigl.io import list_cases, load_images
from bigl.metrics import region_volumes
from bigl.preprocess import PreparedVolume


@pytest.fixture(scope="module")
def case_t1(tiny_dataset):
    return load_images(list_cases(tiny_dataset)[0], ["t1"])["t1"]


def test_outputs_lie_on_the_input_grid(tiny_bundle_path, case_t1):
    seg = segment_volume(load_bundle(tiny_bundle_path), case_t1, sequence="t1", device="cpu")
    shape = case_t1.data.shape
    assert seg.labels.shape == shape and seg.labels.dtype == np.uint8
    assert set(np.unique(seg.labels)) <= {0, 1, 2, 4}
    assert seg.probabilities.shape == (4,) + shape
    np.testing.assert_allclose(seg.probabilities.sum(0), 1.0, atol=1e-5)
    outside = case_t1.data == 0
    assert (seg.labels[outside] == 0).all() and (seg.probabilities[0][outside] == 1).all()
    assert seg.attention.shape == shape and (seg.attention[outside] == 0).all() and seg.attention.max() > 0
    assert seg.volumes_ml == region_volumes(seg.labels, case_t1.spacing)


def test_labels_are_the_argmax_of_probabilities(tiny_bundle_path, case_t1):
    # min_lesion_ml=0: small-lesion removal would rightly make labels differ from the argmax wherever it drops a speck
    seg = segment_volume(load_bundle(tiny_bundle_path), case_t1, sequence="t1", device="cpu", min_lesion_ml=0)
    np.testing.assert_array_equal(seg.labels, np.array([0, 1, 2, 4])[seg.probabilities.argmax(0)])


def test_batch_size_does_not_change_the_result(tiny_bundle_path, case_t1):
    b = load_bundle(tiny_bundle_path)
    a = segment_volume(b, case_t1, device="cpu", batch_size=1)
    c = segment_volume(b, case_t1, device="cpu", batch_size=64)
    np.testing.assert_allclose(a.probabilities, c.probabilities, atol=1e-5)


def test_mirror_averages_the_slice_and_its_mirror_image(tiny_bundle_path):
    net = load_bundle(tiny_bundle_path).segmenter
    image = np.random.default_rng(0).normal(size=(3, 32, 32)).astype(np.float32)   # window = whole slice
    mask = np.ones(image.shape, bool)
    kw = {"device": torch.device("cpu"), "with_attention": False}
    both, _ = predict_prepared(net, PreparedVolume(image, mask, None), mirror=True, **kw)
    direct, _ = predict_prepared(net, PreparedVolume(image, mask, None), **kw)
    mirrored, _ = predict_prepared(net, PreparedVolume(np.ascontiguousarray(image[..., ::-1]), mask, None), **kw)
    np.testing.assert_allclose(both, 0.5 * (direct + mirrored[..., ::-1]), atol=1e-5)
    assert np.abs(both - direct).max() > 1e-3       # the mirror pass changed the result
    # segment_volume mirrors by default; mirror=False is the single pass
    b = load_bundle(tiny_bundle_path)
    image3 = np.pad(np.abs(image) + 1, ((0, 0), (4, 4), (4, 4)))
    default, off = (segment_volume(b, image3, device="cpu", **kw).probabilities for kw in ({}, {"mirror": False}))
    np.testing.assert_allclose(default, segment_volume(b, image3, device="cpu", mirror=True).probabilities)
    assert np.abs(default - off).max() > 1e-3


def test_labels_alone_are_the_labels_of_the_full_result(tiny_bundle_path, case_t1):
    b = load_bundle(tiny_bundle_path)
    # a model at twice the voxel size: the volume goes to its grid and the probabilities come back (_back_to_grid)
    coarse = dataclasses.replace(b, normalization=b.normalization | {
        "inplane_spacing_mm": [2 * s for s in case_t1.spacing[1:]]})
    for bundle in (b, coarse):
        full = segment_volume(bundle, case_t1, device="cpu", min_lesion_ml=0)
        light = segment_volume(bundle, case_t1, device="cpu", min_lesion_ml=0, with_attention=False,
                               with_probabilities=False)
        assert full.probabilities.shape == (4,) + case_t1.data.shape and full.attention.max() > 0
        np.testing.assert_array_equal(full.labels, np.array([0, 1, 2, 4])[full.probabilities.argmax(0)])
        np.testing.assert_array_equal(light.labels, full.labels)
        assert light.probabilities is None and light.attention.shape == case_t1.data.shape
        assert not light.attention.any()
        assert light.labels.any()           # the comparison is not between two empty volumes


def test_other_sequence_warns_with_the_fix(tiny_bundle_path, case_t1):
    # on T2 the fix also names the shipped T1 -> T2 model; on FLAIR there is none to name
    with pytest.warns(SequenceMismatchWarning, match="Adapt to this modality.*bigl adapt.*t1_to_t2.safetensors"):
        segment_volume(load_bundle(tiny_bundle_path), case_t1, sequence="t2", device="cpu")
    with pytest.warns(SequenceMismatchWarning, match="without labels$"):
        segment_volume(load_bundle(tiny_bundle_path), case_t1, sequence="flair", device="cpu")


def test_attention_query_row(tiny_bundle_path, case_t1):
    b = load_bundle(tiny_bundle_path)
    z = int(np.argmax((case_t1.data != 0).sum(axis=(1, 2))))
    ys, xs = np.nonzero(case_t1.data[z])
    a = attention_query(b, case_t1, z, int(ys.min()) + 2, int(xs.min()) + 2, device="cpu")
    c = attention_query(b, case_t1, z, int(ys.max()) - 2, int(xs.max()) - 2, device="cpu")
    assert a.shape == case_t1.data.shape[1:] and a.max() > 0
    assert (a[case_t1.data[z] == 0] == 0).all()
    assert not np.allclose(a, c)            # different pixels look at different places
    assert attention_query(b, case_t1, z, 0, 0, device="cpu").max() == 0   # outside the brain: nothing


def test_bad_input_and_device(tiny_bundle_path):
    with pytest.raises(BiglError, match="3D"):
        segment_volume(load_bundle(tiny_bundle_path), np.zeros((4, 4)), device="cpu")
    with pytest.raises(BiglError, match="unknown device"):
        resolve_device("tpu")


def test_uncertainty_is_normalised_entropy():
    p = np.zeros((4, 1, 1, 3), np.float32)
    p[:, 0, 0, 0] = 0.25                    # all four classes equally likely: 1
    p[2, 0, 0, 1] = 1.0                     # certain: 0
    p[0, 0, 0, 2] = p[1, 0, 0, 2] = 0.5     # two classes: log 2 / log 4 = 0.5
    u = uncertainty(p)
    assert u.shape == (1, 1, 3) and u.dtype == np.float32
    np.testing.assert_allclose(u[0, 0], [1.0, 0.0, 0.5], atol=1e-6)
    with pytest.raises(BiglError, match="K >= 2"):
        uncertainty(np.ones((1, 2, 2, 2), np.float32))


def test_uncertainty_of_a_segmentation(tiny_bundle_path, case_t1):
    seg = segment_volume(load_bundle(tiny_bundle_path), case_t1, device="cpu")
    u = uncertainty(seg.probabilities)
    certain = seg.probabilities.max(axis=0) == 1          # e.g. every voxel outside the brain
    assert u.shape == case_t1.data.shape and certain.any() and (u[certain] == 0).all() and 0 < u.max() <= 1



def test_remove_small_lesions_drops_specks_keeps_lesions():
    from bigl.infer import remove_small_lesions

    labels = np.zeros((10, 20, 20), np.uint8)
    labels[2:6, 2:8, 2:8] = 2           # 144 voxels x 8 mm3 = 1.15 ml: kept
    labels[3:5, 4:6, 4:6] = 4           # inside the lesion: kept with it
    labels[8, 15, 15] = 1               # one voxel, 0.008 ml: dropped
    labels[8, 17:19, 2:4] = 2           # 4 voxels, 0.032 ml: dropped
    out = remove_small_lesions(labels, (2.0, 2.0, 2.0), 0.5)
    assert out.dtype == labels.dtype
    np.testing.assert_array_equal(out[:7], labels[:7])
    assert not out[7:].any()
    np.testing.assert_array_equal(remove_small_lesions(labels, (2.0, 2.0, 2.0), 0.0), labels)
    # the same lesion at 1 mm is 0.14 ml: below 0.5 ml it goes
    assert not remove_small_lesions(labels, (1.0, 1.0, 1.0), 0.5).any()


def _perturbed(bundle, seed):
    """A copy of ``bundle`` with every weight moved a little: a second member that disagrees with the first."""
    other = dataclasses.replace(bundle, segmenter=copy.deepcopy(bundle.segmenter), path=None)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.segmenter.parameters():
            p.add_(0.3 * p.abs().mean() * torch.randn(p.shape, generator=g))
    return other


def test_ensemble_probabilities_are_the_mean_of_its_segmenters(tiny_bundle_path, case_t1):
    first = load_bundle(tiny_bundle_path)
    second = _perturbed(first, 1)
    both = ensemble([first, second])
    # by default an ensemble runs each member once (no mirror pass), a single network mirrored
    for mirror, asked in ((False, {}), (True, {"mirror": True})):
        singles = [segment_volume(b, case_t1, device="cpu", mirror=mirror) for b in (first, second)]
        mixed = segment_volume(both, case_t1, device="cpu", **asked)
        np.testing.assert_allclose(mixed.probabilities, 0.5 * (singles[0].probabilities + singles[1].probabilities),
                                   atol=1e-5)
        assert np.abs(singles[0].probabilities - singles[1].probabilities).max() > 1e-2   # the members disagree
        np.testing.assert_array_equal(mixed.attention, singles[0].attention)               # attention: the first's
    mirrored_first = segment_volume(first, case_t1, device="cpu")
    np.testing.assert_array_equal(mirrored_first.probabilities, singles[0].probabilities)  # a single one: mirrored
