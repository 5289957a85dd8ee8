import pytest
import torch

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


def test_training_is_reproducible(tiny_dataset, tmp_path):
    a = train(tiny_dataset, "t1", tmp_path / "a.safetensors", TrainConfig(steps=3, **SMALL), device="cpu")
    b = train(tiny_dataset, "t1", tmp_path / "b.safetensors", TrainConfig(steps=3, **SMALL), device="cpu")
    for (k, va), vb in zip(load_bundle(a.last_path).segmenter.state_dict().items(),
                           load_bundle(b.last_path).segmenter.state_dict().values()):
        assert torch.equal(va, vb), k


def test_cancel_stops_and_keeps_a_valid_last_checkpoint(tiny_dataset, tmp_path):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) >= 2

    with pytest.raises(Cancelled):
        train(tiny_dataset, "t1", tmp_path / "m.safetensors", TrainConfig(steps=50, **SMALL), device="cpu",
              cancel=cancel)
    assert load_bundle(tmp_path / "m.last.safetensors").provenance["steps"] == 2


def test_refuses_to_overwrite(tiny_dataset, tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"precious")
    with pytest.raises(BiglError, match="already exists"):
        train(tiny_dataset, "t1", tmp_path / "m.safetensors", TrainConfig(steps=1, **SMALL), device="cpu")
    assert (tmp_path / "m.safetensors").read_bytes() == b"precious"


@pytest.mark.slow
def test_training_reaches_a_useful_model(tmp_path):
    """The documented CPU recipe on 'small' phantoms: WT Dice >= 0.8 on held-out cases (several minutes)."""
    from bigl.phantom import write_dataset

    write_dataset(tmp_path / "data", n_cases=10, seed=3, preset="small")
    res = train(tmp_path / "data", "t1", tmp_path / "m.safetensors", TrainConfig(), device="cpu")
    assert res.history[-1]["WT_dice"] >= 0.8 or max(h["WT_dice"] for h in res.history) >= 0.8
