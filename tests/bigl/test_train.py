import pytest
import torch

import bigl.train

from bigl.checkpoint import load_bundle, read_document
from bigl.errors import BiglError
from bigl.models.segmenter import SegmenterConfig
from bigl.progress import Cancelled
from bigl.train import TrainConfig, train

SMALL = dict(batch_size=4, val_every=3, segmenter=SegmenterConfig(widths=(8, 16, 32)))


def test_train_writes_best_and_last_with_provenance(tiny_dataset, tmp_path):
    events = []
    res = train(tiny_dataset, "t1", tmp_path / "m.safetensors", TrainConfig(steps=6, **SMALL), device="cpu",
                progress=events.append)
    assert res.best_path.exists() and res.last_path.name == "m.last.safetensors" and res.last_path.exists()
    assert [h["step"] for h in res.history] == [3, 6]
    assert events[-1].step == 6 and events[-1].total == 6 and "loss" in events[-1].metrics
    doc = read_document(res.best_path)
    assert doc["sequences"] == ["t1"]
    assert doc["provenance"]["config"]["seed"] == 0 and len(doc["provenance"]["val_cases"]) == 1
    assert doc["provenance"]["steps"] in (3, 6)


def test_with_few_validation_cases_the_last_model_is_written(tiny_dataset, tmp_path):
    res = train(tiny_dataset, "t1", tmp_path / "m.safetensors", TrainConfig(steps=6, **SMALL), device="cpu")
    assert len(res.history) == 2 and read_document(res.best_path)["provenance"]["steps"] == 6 and res.written == "last"
    for (k, va), vb in zip(load_bundle(res.best_path).segmenter.state_dict().items(),
                           load_bundle(res.last_path).segmenter.state_dict().values()):
        assert torch.equal(va, vb), k


def test_with_enough_validation_cases_the_best_model_is_written(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(bigl.train, "MIN_SELECTION_CASES", 1)     # the tiny dataset validates on one case
    res = train(tiny_dataset, "t1", tmp_path / "m.safetensors", TrainConfig(steps=6, **SMALL), device="cpu")
    best = max(res.history, key=lambda h: h["average_dice"])       # the first of equal scores, as train keeps
    assert read_document(res.best_path)["provenance"]["steps"] == best["step"]
    assert res.best_dice == best["average_dice"] and res.written == "best"


def test_cases_over_the_validation_cap_train():
    cases = [f"case{i:03d}" for i in range(96)]
    train_cases, val_cases = bigl.train.split_cases(cases, 0.2, seed=0, max_val=4)
    assert len(val_cases) == 4 and len(train_cases) == 92          # the other 15 of the 20 % train
    assert sorted(train_cases + val_cases) == cases
    assert [len(p) for p in bigl.train.split_cases(cases[:12], 0.2, seed=0, max_val=4)] == [10, 2]
    assert [len(p) for p in bigl.train.split_cases(cases[:2], 0.2, seed=0, max_val=4)] == [1, 1]


def test_weight_average_is_what_gets_validated_and_saved(tiny_dataset, tmp_path):
    plain = train(tiny_dataset, "t1", tmp_path / "a.safetensors", TrainConfig(steps=3, **SMALL), device="cpu")
    avg = train(tiny_dataset, "t1", tmp_path / "b.safetensors", TrainConfig(steps=3, weight_ema=0.5, **SMALL),
                device="cpu")
    a, b = (load_bundle(r.last_path).segmenter.state_dict() for r in (plain, avg))
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    with pytest.raises(BiglError, match="weight_ema"):
        TrainConfig(weight_ema=1.0)


def test_init_fine_tunes_from_a_bundle(tiny_dataset, tmp_path, monkeypatch):
    from bigl.cli import main

    first = train(tiny_dataset, "t1", tmp_path / "a.safetensors", TrainConfig(steps=3, **SMALL), device="cpu")
    start = load_bundle(first.last_path).segmenter.state_dict()
    seen = {}
    real = bigl.train.DualAttentionUNet.load_state_dict

    def spy(self, state, *a, **k):      # the weights the fine-tuning starts from
        seen.setdefault("state", {k_: v.clone() for k_, v in state.items()})
        return real(self, state, *a, **k)

    monkeypatch.setattr(bigl.train.DualAttentionUNet, "load_state_dict", spy)
    # the initial model's architecture wins over the config's (widths 8-16-32, not the default 16-...-128)
    res = train(tiny_dataset, "t2", tmp_path / "b.safetensors", TrainConfig(steps=2, batch_size=4, val_every=2),
                device="cpu", init=first.last_path)
    assert all(torch.equal(seen["state"][k], v) for k, v in start.items())
    tuned = load_bundle(res.last_path)
    assert tuned.segmenter.config.widths == (8, 16, 32) and tuned.sequences == ("t2",)
    assert tuned.provenance["init"] == str(first.last_path)
    assert any(not torch.equal(start[k], v) for k, v in tuned.segmenter.state_dict().items()
               if v.is_floating_point())
    with pytest.raises(BiglError, match="input channel"):
        train(tiny_dataset, ["t1", "t2"], tmp_path / "c.safetensors", TrainConfig(steps=1, **SMALL), device="cpu",
              init=first.last_path)
    monkeypatch.undo()
    assert main(["train", "--data", str(tiny_dataset), "--modality", "t2", "--out", str(tmp_path / "d.safetensors"),
                 "--steps", "1", "--init", str(first.last_path)]) == 0
    assert load_bundle(tmp_path / "d.safetensors").provenance["init"] == str(first.last_path)


def test_deep_supervision_heads_and_loss():
    from bigl.models.segmenter import DualAttentionUNet
    from bigl.train import DeepSupervised, deep_supervision_loss
    from bigl.losses import segmentation_loss

    net = DualAttentionUNet(SegmenterConfig(in_channels=1, widths=(8, 16, 32, 64)))
    x = torch.randn(2, 1, 32, 24)
    outs = DeepSupervised(net)(x)
    assert torch.allclose(outs[0], net(x), atol=1e-6)          # the finest level is Φ's own output
    assert [tuple(o.shape) for o in outs] == [(2, 4, 32, 24), (2, 4, 16, 12), (2, 4, 8, 6)]
    target = torch.randint(0, 4, (2, 32, 24))
    levels = [segmentation_loss(o, target[:, ::s, ::s], dice="regions") for o, s in zip(outs, (1, 2, 4))]
    expected = (levels[0] + 0.5 * levels[1] + 0.25 * levels[2]) / 1.75
    assert deep_supervision_loss(outs, target, "regions").item() == pytest.approx(expected.item(), rel=1e-5)


def test_deep_supervision_and_region_dice_train_a_plain_segmenter(tiny_dataset, tmp_path):
    cfg = TrainConfig(steps=2, deep_supervision=True, dice="regions", **SMALL)
    res = train(tiny_dataset, "t1", tmp_path / "m.safetensors", cfg, device="cpu")
    bundle = load_bundle(res.best_path)               # the heads stay behind: the bundle is Φ alone
    assert not any(k.startswith("heads") for k in bundle.segmenter.state_dict())
    config = read_document(res.best_path)["provenance"]["config"]
    assert config["deep_supervision"] is True and config["dice"] == "regions"
    with pytest.raises(BiglError, match="dice must be one of"):
        TrainConfig(dice="voxels")


def test_region_head_trains_saves_and_segments(tiny_dataset, tmp_path):
    import numpy as np

    from bigl.cli import main
    from bigl.infer import segment_volume
    from bigl.io import read_nifti

    out = tmp_path / "r.safetensors"
    assert main(["train", "--data", str(tiny_dataset), "--modality", "t1", "--out", str(out), "--steps", "2",
                 "--val-every", "2", "--head", "regions", "--deep-supervision"]) == 0
    bundle = load_bundle(out)
    assert bundle.segmenter.config.head == "regions" and bundle.segmenter.head.out_channels == 3
    t1 = read_nifti(sorted(tiny_dataset.glob("*/*_t1.nii.gz"))[0])
    result = segment_volume(bundle, t1, device="cpu")
    assert set(np.unique(result.labels)) <= {0, 1, 2, 4}
    assert np.allclose(result.probabilities.sum(axis=0), 1, atol=1e-4)


def test_training_is_reproducible(tiny_dataset, tmp_path):
    a = train(tiny_dataset, "t1", tmp_path / "a.safetensors", TrainConfig(steps=3, **SMALL), device="cpu")
    b = train(tiny_dataset, "t1", tmp_path / "b.safetensors", TrainConfig(steps=3, **SMALL), device="cpu")
    for (k, va), vb in zip(load_bundle(a.last_path).segmenter.state_dict().items(),
                           load_bundle(b.last_path).segmenter.state_dict().values()):
        assert torch.equal(va, vb), k


def test_cancel_stops_and_leaves_only_the_partial_best(tiny_dataset, tmp_path):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) >= 4

    with pytest.raises(Cancelled):
        train(tiny_dataset, "t1", tmp_path / "m.safetensors", TrainConfig(steps=50, **SMALL), device="cpu",
              cancel=cancel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.partial.safetensors"]   # nothing looks finished
    assert load_bundle(tmp_path / "m.partial.safetensors").provenance["steps"] == 3  # the validated best so far


def test_refuses_to_overwrite(tiny_dataset, tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"precious")
    with pytest.raises(BiglError, match="already exists"):
        train(tiny_dataset, "t1", tmp_path / "m.safetensors", TrainConfig(steps=1, **SMALL), device="cpu")
    assert (tmp_path / "m.safetensors").read_bytes() == b"precious"


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="not met on the new phantom engine: 12-case single-sequence models "
                   "reach WT 39-65 % (docs/training.md); strict, so it fails once the recipe gets there")
def test_training_reaches_a_useful_model(tmp_path):
    """The documented CPU recipe on 'small' phantoms: WT Dice >= 0.8 on held-out cases (several minutes)."""
    from bigl.phantom import write_dataset

    write_dataset(tmp_path / "data", n_cases=10, seed=3, preset="small")
    res = train(tmp_path / "data", "t1", tmp_path / "m.safetensors", TrainConfig(), device="cpu")
    assert res.history[-1]["WT_dice"] >= 0.8 or max(h["WT_dice"] for h in res.history) >= 0.8


def test_multi_sequence_model_round_trip_and_inputs(tiny_dataset, tmp_path):
    """A t1+t2 model records its channel order; segmenting needs both sequences on one grid."""
    import numpy as np

    from bigl.infer import segment_volume
    from bigl.io import list_cases, load_images

    res = train(tiny_dataset, ["t2", "t1"], tmp_path / "m.safetensors", TrainConfig(steps=2, **SMALL), device="cpu")
    doc = read_document(res.best_path)
    assert doc["sequences"] == ["t2", "t1"] and doc["segmenter"]["in_channels"] == 2
    bundle = load_bundle(res.best_path)
    assert bundle.sequences == ("t2", "t1")
    images = load_images(list_cases(tiny_dataset)[0])
    seg = segment_volume(bundle, images, device="cpu")
    assert seg.labels.shape == images["t1"].data.shape and seg.probabilities.shape[0] == 4
    with pytest.raises(BiglError, match="t2 is missing"):
        segment_volume(bundle, {"t1": images["t1"]}, device="cpu")
    with pytest.raises(BiglError, match="got one volume"):
        segment_volume(bundle, images["t1"], device="cpu")
    with pytest.raises(BiglError, match="do not share one voxel grid"):
        segment_volume(bundle, {"t1": images["t1"].data, "t2": np.pad(images["t2"].data, 1)}, device="cpu")


def test_2p5d_model_reads_neighbouring_slices(tiny_dataset, tmp_path):
    from bigl.infer import segment_volume
    from bigl.io import list_cases, load_images

    cfg = TrainConfig(steps=2, batch_size=4, val_every=3,
                      segmenter=SegmenterConfig(widths=(8, 16, 32), context_slices=1))
    res = train(tiny_dataset, "t1", tmp_path / "m.safetensors", cfg, device="cpu")
    bundle = load_bundle(res.best_path)
    assert bundle.segmenter.config.in_channels == 3 and bundle.segmenter.config.context_slices == 1
    image = load_images(list_cases(tiny_dataset)[0], ["t1"])["t1"]
    assert segment_volume(bundle, image, device="cpu").labels.shape == image.data.shape


def test_stack_slices_layout():
    import numpy as np

    from bigl.preprocess import stack_slices

    vol = np.arange(5)[:, None, None] * np.ones((5, 3, 4))                 # slice k holds k
    out = stack_slices(vol, np.array([0, 2, 4]), context=1)
    assert out.shape == (3, 3, 3, 4)
    assert out[:, :, 0, 0].tolist() == [[0, 0, 1], [1, 2, 3], [3, 4, 4]]  # clamped at the ends
    multi = np.stack([vol, -vol], axis=1)                                  # (z, C=2, y, x)
    out = stack_slices(multi, np.array([2]), context=1)
    assert out.shape == (1, 6, 3, 4) and out[0, :, 0, 0].tolist() == [1, -1, 2, -2, 3, -3]


def test_bad_training_settings_fail_before_work(tiny_dataset, tmp_path):
    with pytest.raises(BiglError, match="steps must be a positive integer"):
        TrainConfig(steps=0)
    with pytest.raises(BiglError, match="distinct sequences"):
        train(tiny_dataset, ["t1", "t1"], tmp_path / "m.safetensors", TrainConfig(steps=1, **SMALL), device="cpu")
    with pytest.raises(BiglError, match="must end in .safetensors"):
        train(tiny_dataset, "t1", tmp_path / "m.pt", TrainConfig(steps=1, **SMALL), device="cpu")
    assert not list(tmp_path.iterdir())


def test_adaptation_refuses_a_multi_sequence_model(tiny_dataset, tmp_path):
    from bigl.adapt import adapt

    res = train(tiny_dataset, ["t1", "t2"], tmp_path / "m.safetensors", TrainConfig(steps=1, **SMALL), device="cpu")
    with pytest.raises(BiglError, match="single-sequence, single-slice model"):
        adapt(load_bundle(res.best_path), tiny_dataset, "t1", tiny_dataset, "t2", device="cpu")
