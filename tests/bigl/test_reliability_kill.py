"""SIGKILL at a random moment while bigl writes: no half-written file, temporary files cleaned by the next run.

The fast tests kill a process that writes bundles / NIfTI outputs in a loop
(the same writers `bigl train`, `bigl adapt` and `bigl segment` use); the slow
ones kill the real commands. The random delays come from a seed printed on
failure, so a failure can be replayed.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import pytest

from bigl.checkpoint import load_bundle, partial_path

SEED = random.randrange(2**32)
WRITER = textwrap.dedent("""
    import sys, torch, numpy as np
    from pathlib import Path
    from bigl.checkpoint import Bundle, save_bundle
    from bigl.io import volume_from_array, write_many
    from bigl.models.segmenter import DualAttentionUNet, SegmenterConfig
    out, kind = Path(sys.argv[1]), sys.argv[2]
    if kind == "bundle":
        b = Bundle(segmenter=DualAttentionUNet(SegmenterConfig(widths=(16, 32, 64, 128))), sequences=("t1",))
        write = lambda: save_bundle(b, out / "m.safetensors", overwrite=True)
    else:
        rng = np.random.default_rng(0)
        ref = volume_from_array(rng.random((60, 80, 80)).astype(np.float32))
        data = [(ref.data, out / "p.nii.gz"), (rng.random((4, 60, 80, 80)).astype(np.float32), out / "q.nii.gz")]
        write = lambda: write_many(data, ref, overwrite=True)
    write()
    print("ready", flush=True)
    while True:
        write()
""")


def _kill_writer(tmp_path: Path, kind: str, rng: random.Random) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), kind], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.4))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("kind", ["bundle", "nifti"])
def test_sigkill_while_writing_leaves_complete_files(tmp_path, kind):
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    for _ in range(2):
        _kill_writer(tmp_path, kind, rng)
        if kind == "bundle":
            assert load_bundle(tmp_path / "m.safetensors").sequences == ("t1",)   # complete, never half-written
        else:
            assert nib.load(tmp_path / "p.nii.gz").get_fdata().shape == (80, 80, 60)
            assert nib.load(tmp_path / "q.nii.gz").get_fdata().shape == (80, 80, 60, 4)
    # whatever temporary files the kills left, the next write of the same outputs removes them
    subprocess.run([sys.executable, "-c", WRITER.replace("while True:", "while False:"), str(tmp_path), kind],
                   check=True, capture_output=True)
    assert _temps(tmp_path) == []


def _kill_cli(args: list[str], rng: random.Random, *, after: float, within: float) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "bigl", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(after + rng.uniform(0, within))
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sigkill_during_segment(tiny_dataset, tiny_bundle_path, tmp_path):
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    src = next(sorted(p for p in tiny_dataset.iterdir() if p.is_dir())[0].glob("*_t1.nii.gz"))
    out, prob = tmp_path / "s.nii.gz", tmp_path / "p.nii.gz"
    args = ["segment", "--model", str(tiny_bundle_path), "--input", str(src), "--out", str(out),
            "--probabilities", str(prob), "--device", "cpu", "--overwrite"]
    for _ in range(3):
        _kill_cli(args, rng, after=2.0, within=4.0)
        assert out.exists() == prob.exists()   # written together or not at all
        for p in (out, prob):
            if p.exists():
                nib.load(p).get_fdata()
    subprocess.run([sys.executable, "-m", "bigl", *args], check=True, capture_output=True)
    assert _temps(tmp_path) == []


@pytest.mark.slow
def test_sigkill_during_train_leaves_nothing_finished_looking(tiny_dataset, tmp_path):
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    out = tmp_path / "m.safetensors"
    args = ["train", "--data", str(tiny_dataset), "--modality", "t1", "--out", str(out), "--steps", "400",
            "--val-every", "2", "--batch-size", "2", "--device", "cpu", "--overwrite"]
    _kill_cli(args, rng, after=8.0, within=4.0)
    assert partial_path(out).exists()       # the best so far is kept, under a name that says so
    assert not out.exists()                 # nothing at the final name looks finished


@pytest.mark.slow
def test_sigkill_during_train_temps_cleaned_by_next_run(tiny_dataset, tmp_path):
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    out = tmp_path / "m.safetensors"
    args = ["train", "--data", str(tiny_dataset), "--modality", "t1", "--out", str(out), "--val-every", "1",
            "--batch-size", "2", "--device", "cpu", "--overwrite"]
    for _ in range(2):
        _kill_cli(args + ["--steps", "400"], rng, after=6.0, within=6.0)
        for p in tmp_path.glob("*.safetensors"):
            load_bundle(p)                  # whatever is at a bundle name is complete
    subprocess.run([sys.executable, "-m", "bigl", *args, "--steps", "2"], check=True, capture_output=True)
    assert _temps(tmp_path) == [] and load_bundle(out).sequences == ("t1",)


@pytest.mark.slow
def test_sigkill_during_adapt(tiny_dataset, tiny_bundle_path, tmp_path):
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    out = tmp_path / "a.safetensors"
    args = ["adapt", "--model", str(tiny_bundle_path), "--source-data", str(tiny_dataset), "--source-modality", "t1",
            "--target-data", str(tiny_dataset), "--target-modality", "t2", "--out", str(out), "--steps", "2",
            "--device", "cpu", "--overwrite"]
    _kill_cli(args, rng, after=5.0, within=10.0)
    assert not out.exists() or load_bundle(out).translator_t2s is not None
    assert all(p.name.startswith(".a.safetensors.") for p in _temps(tmp_path))
