"""Score every stage-2 snapshot of one adaptation run: the unsupervised selection score next to test DSC.

Runs :func:`bigl.adapt.adapt` on one `bigl benchmark` split (``--split-seed``) with
the benchmark's seed and a saved stage-1 translator (``--translators``, e.g. the
run's ``translate_only.safetensors``), which reproduces that run's stage 2, then
prints one JSON line per snapshot: the selection score and the test-set average
DSC (%) of each inference mode, and finally the step the selection chose.

    python benchmarks/snapshot_scores.py --model SRC.safetensors --translators ADAPTED.safetensors \\
        --data DATA --source t1 --target t2 --split-seed 1 [--adapt '{"steps": 600}']
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace


def main() -> None:
    from _split_args import add_split_args

    from bigl.adapt import AdaptConfig, adapt
    from bigl.benchmark import split_dataset
    from bigl.checkpoint import load_bundle
    from bigl.evaluate import evaluate_dataset
    from bigl.io import list_cases

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_args(p)
    p.add_argument("--translators", required=True, help="adapted bundle whose G_s→t / G_t→s are reused")
    p.add_argument("--method", default="bigl")
    p.add_argument("--adapt", default="{}", help="AdaptConfig overrides (JSON)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    splits = split_dataset(list_cases(args.data), args.split_seed)
    tr = load_bundle(args.translators)
    cfg = AdaptConfig(**{"method": args.method, "seed": args.split_seed, **json.loads(args.adapt)})
    res = adapt(load_bundle(args.model), splits.source, args.source, splits.target, args.target, cfg,
                device=args.device, translators=(tr.translator_s2t, tr.translator_t2s))
    bundle = res.bundle
    for snap in res.snapshots:
        bundle.segmenter.load_state_dict(snap.state)
        row = {"step": snap.step, "selection_score": round(snap.score, 4)}
        for mode in ("direct", "ensemble", "translate"):
            probe = replace(bundle, inference=mode)
            summary = evaluate_dataset(probe, splits.test, args.target, device=args.device)["summary"]
            row[mode] = round(100 * summary["average"]["dice_mean"], 2)
        print(json.dumps(row), flush=True)
    print(json.dumps({"chosen_step": res.chosen_step}))


if __name__ == "__main__":
    main()
