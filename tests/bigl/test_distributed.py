"""torchrun / DistributedDataParallel: two CPU processes (gloo) train and adapt to identical weights."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from bigl.checkpoint import load_bundle, read_document
from bigl.distributed import Dist, autocast_dtype, broadcast, current, unwrap, wrap

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path

    import torch
    from safetensors.torch import save_file

    from bigl.adapt import AdaptConfig, TranslatorTrainConfig, adapt
    from bigl.checkpoint import load_bundle
    from bigl.distributed import current, shutdown
    from bigl.io import list_cases
    from bigl.models.segmenter import SegmenterConfig
    from bigl.models.translator import TranslatorConfig
    from bigl.train import TrainConfig, train

    torch.set_num_threads(1)
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = TrainConfig(steps=3, batch_size=2, val_every=3, workers=0, segmenter=SegmenterConfig(widths=(8, 16, 32)))
    res = train(data, "t1", out / "m.safetensors", cfg, device="cpu", cache_dir=out / "cache")
    rank = current().rank
    save_file(res.bundle.segmenter.state_dict() if rank else load_bundle(res.last_path).segmenter.state_dict(),
              out / f"train_rank{rank}.safetensors")
    cases = list_cases(data)
    translator = TranslatorTrainConfig(steps=2, batch_size=2, starts=2, screen_steps=1,
                                       translator=TranslatorConfig(width=8, n_res_blocks=1))
    acfg = AdaptConfig(steps=2, batch_size=2, checkpoint_every=1, selection_volumes=1, workers=0,
                       translator=translator)
    bundle = adapt(load_bundle(res.last_path), cases[:2], "t1", cases[2:], "t2", acfg, device="cpu",
                   cache_dir=out / "cache").bundle
    state = {f"seg.{k}": v for k, v in bundle.segmenter.state_dict().items()}
    state |= {f"t2s.{k}": v for k, v in bundle.translator_t2s.state_dict().items()}
    save_file(state, out / f"adapt_rank{rank}.safetensors")
    assert bundle.provenance["world_size"] == 2
    shutdown()
""")


def test_two_gloo_processes_train_and_adapt_to_identical_weights(tiny_dataset, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tiny_dataset), str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for stage in ("train", "adapt"):
        a, b = (load_file(tmp_path / f"{stage}_rank{r}.safetensors") for r in (0, 1))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (stage, k)
    doc = read_document(tmp_path / "m.safetensors")
    assert doc["provenance"]["world_size"] == 2
    # the ranks trained (weights moved from the seeded initialisation), and rank 0 alone wrote
    assert sorted(p.name for p in tmp_path.glob("m*.safetensors")) == ["m.last.safetensors", "m.safetensors"]
    assert load_bundle(tmp_path / "m.last.safetensors").provenance["steps"] == 3


def test_without_torchrun_nothing_changes():
    net = torch.nn.Linear(2, 2)
    assert current() == Dist() and not Dist().active and Dist().is_main
    assert wrap(net, Dist()) is net and unwrap(net) is net and broadcast(7, Dist()) == 7


@pytest.mark.parametrize("device, bf16, expected", [("cpu", True, None), ("cuda", True, torch.bfloat16),
                                                      ("cuda", False, torch.float16), ("mps", True, None)])
def test_autocast_dtype(device, bf16, expected):
    assert autocast_dtype(device, bf16) is expected


def test_single_process_provenance_records_world_size_one(tiny_bundle_path):
    assert read_document(tiny_bundle_path)["provenance"]["world_size"] == 1
