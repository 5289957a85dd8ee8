"""Try adaptation settings on one benchmark split without running the whole comparison.

Used for the stage-1 / stage-2 design measurements in docs/results.md. Takes a
source bundle and a labelled dataset, splits it exactly as `bigl benchmark`
does (``--split-seed``), runs :func:`bigl.adapt.adapt` for each ``--methods``
entry with the given config overrides, and prints the test-set DSC of every
inference mode (direct Φ(x_t), translate Φ(G_t→s(x_t)), ensemble). A
translator trained by the first translating method is reused by the next
ones, or read from ``--translators BUNDLE``.

    python benchmarks/adapt_variants.py --model SRC.safetensors --data DATA --source t1 --target t2 \\
        --methods translate bigl [--translators ADAPTED.safetensors] [--out DIR] \\
        [--adapt '{"steps": 600, "lr": 1e-3}'] [--translator '{"steps": 1000}'] \\
        [--generator '{"width": 32, "n_down": 0, "n_res_blocks": 1, "kernel": 3, "norm": "none"}']
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path


def main() -> None:
    from _split_args import add_split_args

    from bigl.adapt import AdaptConfig, TranslatorTrainConfig, adapt
    from bigl.benchmark import split_dataset
    from bigl.checkpoint import load_bundle, save_bundle
    from bigl.evaluate import evaluate_dataset
    from bigl.io import list_cases
    from bigl.models.translator import TranslatorConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_args(p)
    p.add_argument("--methods", nargs="+", default=["bigl"])
    p.add_argument("--translators", default=None, help="reuse G_s→t/G_t→s from this adapted bundle")
    p.add_argument("--adapt", default="{}", help="AdaptConfig overrides (JSON)")
    p.add_argument("--translator", default="{}", help="TranslatorTrainConfig overrides (JSON)")
    p.add_argument("--generator", default=None, help="TranslatorConfig of the generators (JSON)")
    p.add_argument("--out", default=None, help="folder to save each adapted bundle in")
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    splits = split_dataset(list_cases(args.data), args.split_seed)
    source = load_bundle(args.model)
    tr_kw = json.loads(args.translator)
    if args.generator:
        tr_kw["translator"] = TranslatorConfig(**json.loads(args.generator))
    translators = None
    if args.translators:
        b = load_bundle(args.translators)
        translators = (b.translator_s2t, b.translator_t2s)
    for method in args.methods:
        cfg = AdaptConfig(method=method, translator=TranslatorTrainConfig(**tr_kw), **json.loads(args.adapt))
        t0 = time.perf_counter()
        res = adapt(source, splits.source, args.source, splits.target, args.target, cfg, device=args.device,
                    translators=translators)
        seconds = time.perf_counter() - t0
        bundle = res.bundle
        if bundle.translator_t2s is not None:
            translators = (bundle.translator_s2t, bundle.translator_t2s)
        if args.out:
            save_bundle(bundle, Path(args.out) / f"{method}.safetensors", overwrite=True)
        modes = ("direct", "translate", "ensemble") if bundle.translator_t2s is not None else ("direct",)
        for mode in modes:
            probe = replace(bundle, inference=mode)
            summary = evaluate_dataset(probe, splits.test, args.target, device=args.device)["summary"]
            dsc = {k: round(100 * v["dice_mean"], 2) for k, v in summary.items()}
            print(json.dumps({"method": method, "inference": mode, "seconds": round(seconds), "chosen_step":
                              res.chosen_step, "dice": dsc}), flush=True)


if __name__ == "__main__":
    main()
