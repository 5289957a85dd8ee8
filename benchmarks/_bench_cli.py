"""`bigl segment` end to end against a matmul reference: the ``--cli`` part of ``bench_infer.py``.

Every figure that depends on the machine's speed is given as a ratio to the
reference measured in this process right before and right after the run it
belongs to: the project's machines are shared (a training job beside the
benchmark is normal), and a ratio taken this way moves far less than seconds.
"""

from __future__ import annotations

import argparse
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REF_N, REF_SIZE = 20, 2048
REF_GFLOP = 2 * REF_SIZE ** 3 * REF_N / 1e9          # 343.6 GFLOP
PHANTOM = ("--preset", "brats", "--n-cases", "1", "--seed", "2027")

# cProfile entries reported by --profile: (label, function name); the file is not matched (modules move)
STAGES = (("read input (read_input)", "read_input"), ("load model (load_bundle)", "load_bundle"),
          ("input checks (warn_about_input)", "warn_about_input"),
          ("in-plane resampling to the model (resample_inplane)", "resample_inplane"),
          ("mask + normalisation (prepare)", "prepare"), ("network (predict_prepared)", "predict_prepared"),
          ("back to the input grid + argmax (_back_to_grid)", "_back_to_grid"),
          ("small-lesion removal (remove_small_lesions)", "remove_small_lesions"),
          ("region volumes (region_volumes)", "region_volumes"), ("write NIfTI (write_many)", "write_many"),
          ("segment_volume in all", "segment_volume"), ("bigl.cli.main in all", "main"))


def matmul_reference(threads: int) -> float:
    """Seconds for 20 float32 2048 x 2048 matmuls on ``threads`` threads (one warm-up product first)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(REF_SIZE, REF_SIZE), torch.randn(REF_SIZE, REF_SIZE)
    a @ b
    t0 = time.perf_counter()
    for _ in range(REF_N):
        a @ b
    return time.perf_counter() - t0


def make_input(args: argparse.Namespace, work: Path) -> Path:
    """The 1 mm T1 volume to segment: ``--input``, or the seed-2027 brats phantom; crop/padded if asked."""
    if args.input:
        src = Path(args.input)
    else:
        phantom = work / "phantom"
        if not phantom.exists():
            subprocess.run([sys.executable, "-m", "bigl", "phantom", *PHANTOM, "--out", str(phantom)], check=True,
                           capture_output=True)
        src = next(phantom.glob("*/*_t1.nii.gz"))
    if not args.crop_pad:
        return src
    from bigl.io import read_input, save_nifti

    vol, _ = read_input(src, "t1")
    out = np.zeros(args.crop_pad, np.float32)
    take, put = [], []
    for n_in, n_out in zip(vol.data.shape, args.crop_pad):      # centred: crop where larger, pad where smaller
        lo_in, lo_out = max((n_in - n_out) // 2, 0), max((n_out - n_in) // 2, 0)
        n = min(n_in, n_out)
        take.append(slice(lo_in, lo_in + n))
        put.append(slice(lo_out, lo_out + n))
    out[tuple(put)] = vol.data[tuple(take)]
    path = work / f"croppad_{'x'.join(map(str, args.crop_pad))}_t1.nii.gz"
    save_nifti(out, path, vol.spacing, overwrite=True)
    return path


def run_segment(inp: Path, out: Path, src: str | None = None, profile: Path | None = None) -> dict:
    """One `bigl segment` in a fresh process: wall seconds (start to exit) and the child's own peak RSS."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve())
    cmd = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else []) + [
        "-m", "bigl", "segment", "--input", str(inp), "--modality", "t1", "--out", str(out), "--overwrite"]
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read().decode(errors="replace")
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text}")
    return {"seconds": round(seconds, 3), "peak_rss_mb": round(usage.ru_maxrss / 1024), "output": text.strip()}


def dice_table(pred: np.ndarray, ref: np.ndarray) -> dict:
    """Dice (%) per BraTS label and region; both empty counts 100 %. Also the share of identical voxels."""
    def dice(a: np.ndarray, b: np.ndarray) -> float:
        s = int(a.sum()) + int(b.sum())
        return 100.0 if s == 0 else round(200.0 * int((a & b).sum()) / s, 4)

    sets = {"label 1": (1,), "label 2": (2,), "label 4": (4,), "WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
    return {"identical_voxels_pct": round(100.0 * float((pred == ref).mean()), 5),
            "voxels_differing": int((pred != ref).sum()),
            "dice_pct": {k: dice(np.isin(pred, v), np.isin(ref, v)) for k, v in sets.items()}}


def network_worker(inp: Path, threads: int) -> dict:
    """In a child started like the CLI (its OpenMP setting first): the network's FLOPs and seconds over the volume."""
    import bigl._openmp  # noqa: F401, I001  (before torch, as in bigl.cli)
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bigl.bundles import T1_MODEL
    from bigl.checkpoint import load_bundle
    from bigl.infer import predict_prepared
    from bigl.io import read_input
    from bigl.preprocess import bounding_box, inplane_factor, prepare, resample_inplane, round_up

    torch.set_num_threads(threads)
    bundle = load_bundle(T1_MODEL)
    vol, _ = read_input(inp, "t1")
    factor = inplane_factor(vol.spacing, bundle.normalization.get("inplane_spacing_mm"))
    prepared = prepare(resample_inplane(vol.data, factor) if factor else vol.data)
    net = bundle.segmenter.eval()
    ys, xs = bounding_box(prepared.mask.any(axis=0), margin=4)       # the window predict_prepared runs
    h, w = round_up(ys.stop - ys.start, net.stride), round_up(xs.stop - xs.start, net.stride)
    n = int(prepared.mask.any(axis=(1, 2)).sum())
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(torch.zeros(1, net.config.in_channels, h, w))
    t0 = time.perf_counter()
    predict_prepared(net, prepared, device=torch.device("cpu"), with_attention=False)
    return {"slices": n, "window_hw": [h, w], "gflop": round(counter.get_total_flops() * n / 1e9, 2),
            "seconds": round(time.perf_counter() - t0, 3), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def network_rate(inp: Path, threads: int, repeats: int) -> dict:
    """The network's GFLOP/s as `bigl segment` runs it, against the matmul reference timed around each child."""
    import json

    runs = []
    for _ in range(repeats):
        before = matmul_reference(threads)
        out = subprocess.run([sys.executable, str(Path(__file__).with_name("bench_infer.py")), "--worker", "network",
                              "--input", str(inp), "--threads", str(threads)], capture_output=True, text=True,
                             check=True).stdout
        net = json.loads(out.strip().splitlines()[-1])
        ref = (before + matmul_reference(threads)) / 2
        runs.append((net["seconds"] / ref, ref, net))
    ratio, ref, net = min(runs, key=lambda r: r[0])
    rate = net["gflop"] / net["seconds"]
    return net | {"ratio_to_reference": round(ratio, 3), "gflop_per_s": round(rate, 1),
                  "reference_gflop_per_s": round(REF_GFLOP / ref, 1),
                  "share_of_matmul_rate_pct": round(100 * rate / (REF_GFLOP / ref), 1)}


def stage_profile(path: Path) -> dict:
    """Cumulative seconds per stage from a cProfile dump of one `bigl segment` (profiling overhead included)."""
    stats = pstats.Stats(str(path)).stats       # {(file, line, name): (cc, nc, tt, ct, callers)}
    total = max(ct for *_, ct, _callers in stats.values())
    out = {}
    for label, name in STAGES:
        hits = [v[3] for (file, _, fn), v in stats.items() if fn == name and "bigl" in file]
        if hits:
            out[label] = round(max(hits), 3)
    main = out.get("bigl.cli.main in all")
    if main is not None:
        out["imports and start-up (profiled process total - main)"] = round(total - main, 3)
    out["profiled process total"] = round(total, 3)
    return out


def _summary(runs: list[dict]) -> dict:
    ratios = [r["ratio"] for r in runs]
    return {"best_ratio": min(ratios), "median_ratio": round(statistics.median(ratios), 3),
            "best_seconds": min(r["seconds"] for r in runs),
            "median_seconds": round(statistics.median(r["seconds"] for r in runs), 3),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


def run_cli_benchmark(args: argparse.Namespace) -> dict:
    """The ``--cli`` measurement (see bench_infer.py's docstring); returns everything as one JSON-able dict."""
    import nibabel as nib

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_infer_"))
    work.mkdir(parents=True, exist_ok=True)
    inp = make_input(args, work)
    trees = {"current": None} | ({"compare": args.compare_src} if args.compare_src else {})
    from bigl.io import read_input

    result: dict = {"input": str(inp), "shape_zyx": list(read_input(inp, "t1")[0].data.shape),
                    "threads": args.threads, "python": sys.executable,
                    "loadavg_start": [round(x, 2) for x in os.getloadavg()], "runs": []}
    outs = {name: work / f"labels_{name}.nii.gz" for name in trees}
    ref = matmul_reference(args.threads)
    for rep in range(args.repeats):
        for name, src in trees.items():
            run = run_segment(inp, outs[name], src)
            after = matmul_reference(args.threads)
            run.update(tree=name, repeat=rep, ref_before=round(ref, 3), ref_after=round(after, 3),
                       ratio=round(run["seconds"] / ((ref + after) / 2), 3))
            result["runs"].append(run)
            print(f"{name:8s} {run['seconds']:6.2f} s  ratio {run['ratio']:.2f}  (reference {ref:.2f} / "
                  f"{after:.2f} s)  peak RSS {run['peak_rss_mb']} MB", file=sys.stderr, flush=True)
            ref = after
    result["summary"] = {name: _summary([r for r in result["runs"] if r["tree"] == name]) for name in trees}
    labels = {name: np.asarray(nib.load(str(p)).dataobj) for name, p in outs.items()}
    if args.save_baseline:      # the labels of the code being replaced: --compare-src's when given
        Path(args.save_baseline).write_bytes(outs["compare" if "compare" in outs else "current"].read_bytes())
    if args.baseline:
        result["labels_vs_baseline"] = dice_table(labels["current"], np.asarray(nib.load(args.baseline).dataobj))
    if "compare" in labels:
        result["labels_vs_compare_src"] = dice_table(labels["current"], labels["compare"])
    result["network"] = network_rate(inp, args.threads, max(1, min(args.repeats, 2)))
    if args.profile:
        for name, src in trees.items():
            prof = work / f"segment_{name}.prof"
            run_segment(inp, outs[name], src, profile=prof)
            result[f"profile_{name}"] = stage_profile(prof)
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result
