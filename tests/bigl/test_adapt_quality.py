"""Adaptation quality through the CLI contract on unseen phantom data (slow: ~30 min on 2 CPU cores).

Run with `bash scripts/test.sh -m slow`. Data come from a phantom seed used
nowhere else; source, target and test subjects are disjoint.
"""

import json

import pytest

from bigl.cli import main


@pytest.mark.slow
def test_bigl_beats_source_only_through_the_cli(tmp_path):
    d = tmp_path
    for name, seed, n in (("src", 7001, 12), ("tgt", 7002, 12), ("test", 7003, 6)):
        assert main(["phantom", "--out", str(d / name), "--n-cases", str(n), "--seed", str(seed)]) == 0
    assert main(["train", "--data", str(d / "src"), "--modality", "t1", "--out", str(d / "t1.safetensors")]) == 0
    assert main(["adapt", "--model", str(d / "t1.safetensors"), "--source-data", str(d / "src"),
                 "--source-modality", "t1", "--target-data", str(d / "tgt"), "--target-modality", "t2",
                 "--out", str(d / "t1_t2.safetensors")]) == 0
    scores = {}
    for name in ("t1", "t1_t2"):
        assert main(["evaluate", "--model", str(d / f"{name}.safetensors"), "--data", str(d / "test"),
                     "--modality", "t2", "--json", str(d / f"{name}.json")]) == 0
        scores[name] = json.loads((d / f"{name}.json").read_text())["summary"]["average"]["dice_mean"]
    assert scores["t1_t2"] >= scores["t1"] + 0.10, scores
