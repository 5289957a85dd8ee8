"""Which stage-2 loss term moves Φ away from the source model: a few alignment steps, test DSC every few.

Starts Φ from the source bundle of one `bigl benchmark` split (``--split-seed``), reuses
that run's saved translator (``--translators``), runs :func:`bigl.adapt.alignment_step`
with a constant learning rate and full adversarial weight (no ramp), and every
``--every`` steps prints the loss terms and the test-set average DSC (%) of Φ(x_t→s)
("translate") and Φ(x_t) ("direct"). Step 0 is the source model itself.

    python benchmarks/shortcut_probe.py --model SRC.safetensors --translators ADAPTED.safetensors \\
        --data DATA --source t1 --target t2 --split-seed 1 --steps 60 --every 20 \\
        --adapt '{"lr": 1e-4, "lambda_anchor": 0, "lambda_seg_s2t": 1}'
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import replace


def main() -> None:
    import torch
    from _split_args import add_split_args

    import bigl.adapt as A
    from bigl.benchmark import split_dataset
    from bigl.checkpoint import load_bundle
    from bigl.evaluate import evaluate_dataset
    from bigl.io import list_cases
    from bigl.preprocess import SliceSampler, patch_size_for
    from bigl.train import load_prepared, sample_batch, seed_everything

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_args(p)
    p.add_argument("--translators", required=True, help="adapted bundle whose G_s→t / G_t→s are reused")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--test-cases", type=int, default=3, help="first N test cases scored")
    p.add_argument("--adapt", default="{}", help="AdaptConfig overrides (JSON)")
    args = p.parse_args()

    dev = torch.device("cpu")
    splits = split_dataset(list_cases(args.data), args.split_seed)
    source, tr = load_bundle(args.model), load_bundle(args.translators)
    cfg = A.AdaptConfig(**{"seed": args.split_seed, **json.loads(args.adapt)}).for_source(source)
    rng = seed_everything(cfg.seed)
    test = splits.test[:args.test_cases]
    seg = copy.deepcopy(source.segmenter)

    def dsc(mode: str) -> float:
        probe = replace(tr, segmenter=seg, inference=mode)
        return round(100 * evaluate_dataset(probe, test, args.target, device=dev)["summary"]["average"]["dice_mean"], 2)

    src = load_prepared(splits.source, args.source, labels=True)
    tgt = load_prepared(splits.target, args.target, labels=False)   # images only
    patch = patch_size_for(src + tgt, seg.stride)
    disc, teacher, opt, opt_d = A.alignment_setup(seg, cfg, dev)
    samp_s, samp_t = SliceSampler(src, cfg.tumour_fraction), SliceSampler(tgt, 0.0)
    print(json.dumps({"step": 0, "translate": dsc("translate"), "direct": dsc("direct")}), flush=True)
    for step in range(1, args.steps + 1):
        xs, ys = sample_batch(src, samp_s, patch, cfg.batch_size, rng, jitter=cfg.jitter, augment=True)
        xt, _ = sample_batch(tgt, samp_t, patch, cfg.batch_size, rng, jitter=cfg.jitter, augment=True)
        terms = A.alignment_step(seg, disc, opt, opt_d, xs, ys, xt, tr.translator_s2t, tr.translator_t2s, cfg,
                                 1.0, None, teacher)
        if step % args.every == 0:
            print(json.dumps({"step": step, "terms": {k: round(v, 3) for k, v in terms.items()},
                              "translate": dsc("translate"), "direct": dsc("direct")}), flush=True)


if __name__ == "__main__":
    main()
