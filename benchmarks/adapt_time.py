"""Wall time of `bigl adapt` with the defaults (T1 -> T2, 12 + 12 cases at 2 mm), next to a fixed CPU reference.

    python benchmarks/adapt_time.py [--source-data DIR] [--target-data DIR]

The source model is the bundled T1 model; the source cases are read with labels in T1, the target cases' T2 images
only. The case caches are built inside the timed run, as a user's first `bigl adapt` builds them. The reference
(benchmarks/train_time.py's matmuls) runs before and after in the same process; the time scaled by the quiet
reference over the measured one is the estimate for a quiet machine (the 15-minute bar of docs/adaptation.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from train_time import QUIET_REFERENCE_S, reference


def main() -> None:
    from bigl.adapt import AdaptConfig, adapt
    from bigl.bundles import T1_MODEL
    from bigl.checkpoint import load_bundle
    from bigl.phantom import write_dataset

    p = argparse.ArgumentParser()
    p.add_argument("--source-data", default=None, help="12 labelled cases (default: bigl phantom, seed 21)")
    p.add_argument("--target-data", default=None, help="12 target cases (default: bigl phantom, seed 22)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = {}
        for name, given, seed in (("source", a.source_data, 21), ("target", a.target_data, 22)):
            data[name] = Path(given) if given else Path(tmp) / name
            if not given:
                write_dataset(data[name], 12, seed=seed, preset="small")
        ref0 = reference()
        t0 = time.perf_counter()
        adapt(load_bundle(T1_MODEL), data["source"], "t1", data["target"], "t2", AdaptConfig(), device="cpu",
              cache_dir=Path(tmp) / "cache")
        wall = time.perf_counter() - t0
        ref = 0.5 * (ref0 + reference())
    print(f"bigl adapt, 12 + 12 cases, defaults: {wall:.0f} s; reference {ref:.2f} s (quiet: {QUIET_REFERENCE_S} s)")
    print(f"{wall / 60:.1f} min as measured, {wall * QUIET_REFERENCE_S / ref / 60:.1f} min scaled to a quiet machine")


if __name__ == "__main__":
    main()
