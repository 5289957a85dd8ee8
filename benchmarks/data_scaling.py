"""Does training memory stay flat as the dataset grows? Peak RSS and steady slices/s of training on N cases.

One whole-brain 1 mm phantom case (`bigl phantom --preset brats`, 155 x 240 x 240
voxels) is linked under N case names (N = 4, 24, 100 by default); each N is
trained in its own process with the `bigl train` defaults except the number of
steps, one validation case and one validation at the end. The first run of a
dataset builds its preprocessed cache (timed separately), as `bigl train` does.

``--link-cache``: the cache entries of the N copies are hard links to the
first copy's entry (the copies are one volume, so their entries are the same
bytes); only that first entry is built. ``--loader-only``: instead of training,
draw ``--steps`` batches through the data path alone (cache + loader
processes) — what grows with N if anything does, without the network's cost.

Reported per N: cache build seconds, peak RSS of the training process
(VmHWM), peak of the summed RSS of the training process and its data-loading
workers (sampled every 0.1 s), and slices/s over the steps after the first few.

    nice -n 10 python benchmarks/data_scaling.py --root /tmp/bigl_scaling [--cases 4 24 100] [--steps 30]
        [--batch-size 8] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

WARMUP = 5   # steps left out of the steady rate (worker start, first allocations)


def _dataset(root: Path, n: int, seed: int) -> Path:
    """``root/n<N>``: N case folders whose files link to one phantom case (made once under ``root/source``)."""
    from bigl.io import list_cases
    from bigl.phantom import write_dataset

    src_dir = root / "source"
    if not src_dir.exists():
        write_dataset(src_dir, n_cases=1, seed=seed, preset="brats")
    (case,) = list_cases(src_dir)
    out = root / f"n{n}"
    for i in range(n):
        folder = out / f"Case_{i:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for key in ("t1", "seg"):
            link = folder / f"Case_{i:04d}_{key}.nii.gz"
            if not link.exists():
                link.symlink_to(case.files[key].resolve())
    return out


def _link_cache(data: Path) -> None:
    """Hard-link the first case's cache entry under every other case's entry name (see --link-cache)."""
    import os

    from bigl.data.cache import _entry_prefix, cache_cases, cache_key, default_cache_dir
    from bigl.io import list_cases

    cases = list_cases(data)
    (first,) = cache_cases(cases[:1], "t1", labels=True, inplane_mm=(1.0, 1.0))
    root = default_cache_dir(data)
    for case in cases[1:]:
        folder = root / (_entry_prefix(case, ["t1"], True) + cache_key(case, ["t1"], True, (1.0, 1.0)))
        if not folder.exists():
            folder.mkdir()
            for f in ("image.npy", "mask.npy", "target.npy"):
                os.link(first.folder / f, folder / f)
            meta = json.loads((first.folder / "meta.json").read_text()) | {"name": case.case_id}
            (folder / "meta.json").write_text(json.dumps(meta))


def _loader_only(data: str, steps: int, workers: int, batch_size: int) -> dict:
    import resource

    from bigl.data.cache import cache_cases
    from bigl.data.slices import batches
    from bigl.io import list_cases
    from bigl.preprocess import patch_size_for

    t0 = time.perf_counter()
    vols = cache_cases(list_cases(data), "t1", labels=True, inplane_mm=(1.0, 1.0))
    patch = patch_size_for(vols, 16)
    stamps = []
    for _ in batches(vols, patch, batch_size=batch_size, n_batches=steps, seed=(0, 0), tumour_fraction=0.6,
                     jitter=8, augment=False, workers=workers):
        stamps.append(time.perf_counter())
    steady = (stamps[-1] - stamps[WARMUP]) / (len(stamps) - 1 - WARMUP)
    return {"cache_build_s": 0.0, "seconds": round(time.perf_counter() - t0, 1),
            "steady_s_per_step": round(steady, 4), "slices_per_s": round(batch_size / steady, 1),
            "patch": list(patch), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _worker(data: str, out: str, steps: int, workers: int, batch_size: int) -> dict:
    import resource

    import torch

    from bigl.train import TrainConfig, train

    torch.set_num_threads(2)
    stamps: dict[str, list[float]] = {"cache": [], "train": []}

    def progress(p) -> None:
        stamps.setdefault(p.stage, []).append(time.perf_counter())

    cfg = TrainConfig(steps=steps, val_every=steps, max_val_cases=1, workers=workers, batch_size=batch_size)
    t0 = time.perf_counter()
    train(data, "t1", out, cfg, device="cpu", overwrite=True, progress=progress)
    train_t = stamps["train"]
    steady = (train_t[-2] - train_t[WARMUP]) / (len(train_t) - 2 - WARMUP)   # last step includes validation
    return {"cache_build_s": round(stamps["cache"][-1] - stamps["cache"][0], 1) if stamps["cache"] else 0.0,
            "seconds": round(time.perf_counter() - t0, 1), "steady_s_per_step": round(steady, 3),
            "slices_per_s": round(cfg.batch_size / steady, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _tree_rss_mb(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
        return sum(p.memory_info().rss for p in procs) / 2**20
    except psutil.Error:
        return 0.0


def run(data: Path, steps: int, workers: int, batch_size: int, loader_only: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(data), "--steps", str(steps), "--workers", str(workers),
           "--batch-size", str(batch_size)] + (["--loader-only"] if loader_only else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    stdout, _ = proc.communicate()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"training on {data} failed ({proc.returncode})")
    return json.loads(stdout.strip().splitlines()[-1]) | {"peak_tree_rss_mb": round(peak[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/bigl_scaling", help="where the linked datasets and caches go")
    ap.add_argument("--cases", type=int, nargs="+", default=[4, 24, 100])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--link-cache", action="store_true", help="build one cache entry, hard-link it for the copies")
    ap.add_argument("--loader-only", action="store_true", help="draw batches through the data path, no training")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        out = Path(args.worker).parent / f"{Path(args.worker).name}.safetensors"
        if args.loader_only:
            print(json.dumps(_loader_only(args.worker, args.steps, args.workers, args.batch_size)))
        else:
            print(json.dumps(_worker(args.worker, str(out), args.steps, args.workers, args.batch_size)))
        return
    rows = {}
    for n in args.cases:
        data = _dataset(Path(args.root), n, args.seed)
        if args.link_cache:
            _link_cache(data)
        rows[n] = run(data, args.steps, args.workers, args.batch_size, args.loader_only)
        print(json.dumps({"cases": n} | rows[n]), flush=True)
    base = rows[args.cases[0]]
    for n, r in rows.items():
        print(f"{n:4d} cases: peak RSS {r['peak_rss_mb']} MB ({r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x), "
              f"with workers {r['peak_tree_rss_mb']} MB ({r['peak_tree_rss_mb'] / base['peak_tree_rss_mb']:.2f}x), "
              f"{r['slices_per_s']} slices/s ({r['slices_per_s'] / base['slices_per_s']:.2f}x), "
              f"cache built in {r['cache_build_s']} s")


if __name__ == "__main__":
    main()
