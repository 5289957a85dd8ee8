"""Wall time of `bigl train` with the defaults on 12 phantom cases at 2 mm, next to a fixed CPU reference.

    python benchmarks/train_time.py [--data DIR] [--steps N]

The reference (20 float32 2048x2048 matmuls on 2 threads, about 2.7 s on this 2-core machine when it is quiet)
runs before and after the training in the same process; the training time scaled by 2.7 s / reference is the
estimate for a quiet machine. With --steps the run is shortened and the full default run extrapolated.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

QUIET_REFERENCE_S = 2.7


def reference() -> float:
    torch.set_num_threads(2)
    a = torch.randn(2048, 2048)
    t0 = time.perf_counter()
    for _ in range(20):
        a @ a
    return time.perf_counter() - t0


def main() -> None:
    from bigl.phantom import write_dataset
    from bigl.train import TrainConfig, train

    p = argparse.ArgumentParser()
    p.add_argument("--data", default=None, help="12-case dataset (default: made with bigl phantom, seed 21)")
    p.add_argument("--steps", type=int, default=None, help="train fewer steps and extrapolate to the default")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(a.data) if a.data else Path(tmp) / "d12"
        if not a.data:
            write_dataset(data, 12, seed=21, preset="small")
        default = TrainConfig()
        cfg = TrainConfig(steps=a.steps or default.steps)
        ref0 = reference()
        t0 = time.perf_counter()
        train(data, "t2", Path(tmp) / "m.safetensors", cfg, device="cpu")
        wall = time.perf_counter() - t0
        ref = 0.5 * (ref0 + reference())
    full = wall * default.steps / cfg.steps
    print(f"bigl train, 12 cases, {cfg.steps} steps: {wall:.0f} s; reference {ref:.2f} s (quiet: {QUIET_REFERENCE_S} s)")
    print(f"default {default.steps} steps: {full / 60:.1f} min as measured, "
          f"{full * QUIET_REFERENCE_S / ref / 60:.1f} min scaled to a quiet machine")


if __name__ == "__main__":
    main()
