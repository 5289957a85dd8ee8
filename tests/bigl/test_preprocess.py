import numpy as np
from scipy import ndimage

from bigl.preprocess import brain_mask


def test_brain_mask_fills_holes_per_slice():
    image = np.zeros((3, 9, 9), np.float32)
    image[0, 2:7, 2:7] = 1.0
    image[0, 4, 4] = 0.0                    # a hole: filled
    image[1, 0:5, 0:5] = 2.0
    image[1, 0, 2] = 0.0                    # open to the slice border: not a hole
    image[1, 2, 2] = 0.0                    # a hole next to the border: filled
    mask = brain_mask(image)
    assert mask[0, 4, 4] and not mask[1, 0, 2] and mask[1, 2, 2]
    assert not mask[2].any()                # a slice without brain stays empty
    assert mask.sum() == 25 + 24


def test_brain_mask_is_the_whole_slice_fill_on_random_volumes():
    """It fills each slice inside its non-zero box only: the result must be that of filling the whole slice."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        shape = (2, int(rng.integers(1, 16)), int(rng.integers(1, 16)))
        image = (rng.random(shape) < rng.uniform(0.2, 0.9)).astype(np.float32)
        expected = np.stack([ndimage.binary_fill_holes(s) for s in image != 0])
        np.testing.assert_array_equal(brain_mask(image), expected)
