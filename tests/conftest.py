"""Shared fixtures: a tiny phantom dataset and a briefly trained bundle, made once per test session."""

from __future__ import annotations

import pytest
import torch

from bigl.phantom import write_dataset


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Four labelled 4 mm phantom cases (36 x 50 x 42 voxels) in BraTS layout."""
    root = tmp_path_factory.mktemp("tiny_dataset")
    write_dataset(root, n_cases=4, seed=7, preset="tiny")
    return root


@pytest.fixture(scope="session")
def tiny_bundle_path(tiny_dataset, tmp_path_factory):
    """A t1 bundle trained for a few steps on the tiny dataset (not a useful model; shapes and plumbing only)."""
    from bigl.models.segmenter import SegmenterConfig
    from bigl.train import TrainConfig, train

    out = tmp_path_factory.mktemp("bundle") / "tiny_t1.safetensors"
    cfg = TrainConfig(steps=6, batch_size=4, val_every=3, segmenter=SegmenterConfig(widths=(8, 16, 32)))
    train(tiny_dataset, "t1", out, cfg, device="cpu")
    return out
