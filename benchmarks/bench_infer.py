"""Volume-inference speed and memory on a BraTS-size (155 x 240 x 240, 1 mm) phantom.

Two measurements.

``--cli`` (issue 15, "CPU inference speed"): `bigl segment` of one whole-brain
1 mm T1 volume end to end, process start to file written, in a subprocess;
its wall time as a ratio to a matmul reference (20 float32 2048 x 2048
matmuls on 2 threads) timed in this process just before and just after each
run, so that the ratio holds on a loaded machine; the child's peak RSS
(``os.wait4``); the network's FLOPs (``torch.utils.flop_counter``) over its
time in process (GFLOP/s); the labels against a saved baseline (Dice per label
and region). ``--compare-src`` runs an older tree (e.g. ``git archive HEAD
src``) the same way, interleaved, for a before/after in one run. ``--profile``
adds a cProfile breakdown of one run by stage.

    python benchmarks/bench_infer.py --cli [--input T1.nii.gz | --workdir DIR] [--crop-pad Z Y X] \
        [--repeats 3] [--baseline BASE.nii.gz | --save-baseline BASE.nii.gz] [--compare-src OLD/src] [--profile]

Default (no ``--cli``): `bigl.infer.segment_volume` in process (brain slices
only, cropped to the brain's bounding box, batched, inference mode) against
the same model run naively (every slice, full 240 x 240, one slice at a time,
no cropping), each in its own subprocess so that peak RSS is measured
separately. Also reports the model's GFLOPs per slice.

    python benchmarks/bench_infer.py [--model BUNDLE] [--device cpu] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from _bench_cli import network_worker, run_cli_benchmark


def _flops_per_slice(model, h: int, w: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 1, h, w)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x, return_extras=True)
    return counter.get_total_flops() / 1e9


def _worker(mode: str, model_path: str | None, device: str, repeats: int) -> dict:
    import numpy as np
    import torch

    from bigl.checkpoint import load_bundle
    from bigl.infer import resolve_device, segment_volume
    from bigl.phantom import make_case
    from bigl.preprocess import prepare

    case = make_case(seed=0, config="brats")
    image = case.images["t1"]
    bundle = load_bundle(model_path)
    dev = resolve_device(device)
    model = bundle.segmenter.to(dev).eval()
    times = []
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if mode == "optimized":
            segment_volume(bundle, image, device=dev)
            n_slices = int((image != 0).any(axis=(1, 2)).sum())
        else:   # naive: every slice, full size padded to the stride, batch 1, attention too
            vol = prepare(image)
            s = model.stride
            H, W = image.shape[1:]
            ph, pw = -H % s, -W % s
            labels = np.zeros(image.shape, np.uint8)
            with torch.no_grad():
                for k in range(image.shape[0]):
                    x = torch.from_numpy(np.pad(vol.image[k], ((0, ph), (0, pw))))[None, None].to(dev)
                    out = model(x, return_extras=True)
                    labels[k] = out.logits[0, :, :H, :W].argmax(0).cpu().numpy()
            n_slices = image.shape[0]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "seconds": min(times), "all_seconds": [round(t, 2) for t in times],
            "peak_rss_mb": round(peak_mb), "slices_run": n_slices, "threads": torch.get_num_threads(),
            "device": str(dev), "shape": list(image.shape)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="bundle (default: the bundled demo model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cli", action="store_true", help="time `bigl segment` end to end against a matmul reference")
    ap.add_argument("--input", default=None, help="--cli: 1 mm T1 volume (default: a brats phantom, seed 2027)")
    ap.add_argument("--workdir", default=None, help="--cli: folder for the phantom and outputs (default: a temp dir)")
    ap.add_argument("--crop-pad", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                    help="--cli: crop/pad the volume (centred) to this (z, y, x) shape first, e.g. 189 233 197")
    ap.add_argument("--baseline", default=None, help="--cli: labels to compare with (Dice per label)")
    ap.add_argument("--save-baseline", default=None,
                    help="--cli: keep the labels here (those of --compare-src when given, else the current tree's)")
    ap.add_argument("--compare-src", default=None, help="--cli: also time this source tree (PYTHONPATH), interleaved")
    ap.add_argument("--threads", type=int, default=2, help="--cli: threads of the matmul reference")
    ap.add_argument("--profile", action="store_true", help="--cli: also break one run down by stage (cProfile)")
    args = ap.parse_args()
    if args.cli:
        text = json.dumps(run_cli_benchmark(args), indent=2)
        if args.json:
            Path(args.json).write_text(text + "\n")
        print(text)
        return
    if args.worker == "network":
        print(json.dumps(network_worker(Path(args.input), args.threads)))
        return
    if args.worker:
        print(json.dumps(_worker(args.worker, args.model, args.device, args.repeats)))
        return

    from bigl.checkpoint import load_bundle

    bundle = load_bundle(args.model)
    result = {"model": str(bundle.path), "params": sum(p.numel() for p in bundle.segmenter.parameters()),
              "gflops_per_slice_240x240": round(_flops_per_slice(bundle.segmenter, 240, 240), 3),
              "gflops_per_slice_144x176": round(_flops_per_slice(bundle.segmenter, 144, 176), 3)}
    for mode in ("optimized", "naive"):
        cmd = [sys.executable, __file__, "--worker", mode, "--device", args.device, "--repeats", str(args.repeats)]
        if args.model:
            cmd += ["--model", args.model]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        result[mode] = json.loads(out.strip().splitlines()[-1])
    result["speedup"] = round(result["naive"]["seconds"] / result["optimized"]["seconds"], 2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
