import numpy as np
import pytest
import torch
from torch import nn

from bigl.checkpoint import load_bundle
from bigl.errors import BiglError
from bigl.io import list_cases, load_images
from bigl.models.translator import Generator, TranslatorConfig
from bigl.preprocess import prepare
from bigl.translate import translate_volume


class Doubler(nn.Module):
    """A stand-in G_t→s with a known output: 2·x inside the mask."""

    def __init__(self, n_down: int = 2) -> None:
        super().__init__()
        self.config = TranslatorConfig(n_down=n_down)
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x, mask):
        self.shapes.append(tuple(x.shape))
        return 2 * x * mask


@pytest.fixture(scope="module")
def case_t2(tiny_dataset):
    return load_images(list_cases(tiny_dataset)[0], ["t2"])["t2"]


def _with_translator(bundle_path, generator):
    bundle = load_bundle(bundle_path)
    bundle.translator_t2s = generator
    return bundle


def test_known_translator_gives_its_output_on_the_input_grid(tiny_bundle_path, case_t2):
    gen = Doubler(n_down=4)
    out = translate_volume(_with_translator(tiny_bundle_path, gen), case_t2, device="cpu")
    assert out.shape == case_t2.data.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, 2 * prepare(case_t2.data).image, rtol=1e-6, atol=1e-6)
    # the window is padded for the coarser of the two networks (translator stride 16 > segmenter stride 4)
    assert all(s[-2] % 16 == 0 and s[-1] % 16 == 0 for s in gen.shapes)


def test_real_generator_background_stays_zero_and_batching_is_invisible(tiny_bundle_path, case_t2):
    torch.manual_seed(0)
    bundle = _with_translator(tiny_bundle_path, Generator(TranslatorConfig(width=4, n_res_blocks=1)).eval())
    a = translate_volume(bundle, case_t2, device="cpu", batch_size=1)
    b = translate_volume(bundle, case_t2.data, device="cpu", batch_size=64)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert (a[case_t2.data == 0] == 0).all() and np.abs(a).max() > 0


def test_progress_and_cancel(tiny_bundle_path, case_t2):
    from bigl.progress import Cancelled

    bundle = _with_translator(tiny_bundle_path, Doubler())
    seen = []
    translate_volume(bundle, case_t2, device="cpu", batch_size=8, progress=seen.append)
    assert seen[0].stage == "translate" and seen[-1].fraction == 1.0
    with pytest.raises(Cancelled):
        translate_volume(bundle, case_t2, device="cpu", cancel=lambda: True)


def test_bundle_without_translator_and_bad_input(tiny_bundle_path, case_t2):
    with pytest.raises(BiglError, match=r"tiny_t1\.safetensors.*no translator.*adapt it first"):
        translate_volume(load_bundle(tiny_bundle_path), case_t2, device="cpu")
    with pytest.raises(BiglError, match="3D"):
        translate_volume(_with_translator(tiny_bundle_path, Doubler()), np.zeros((4, 4)), device="cpu")
