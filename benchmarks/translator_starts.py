"""Show stage 1's screened starts on one benchmark split: each start's unsupervised score, and a check.

Runs the screening of :func:`bigl.adapt.train_translator` exactly as `bigl adapt`
does (same seed, same starts), stopping when the chosen start would continue,
and prints one JSON line per start: its ``translation_distance`` (what the
method uses, no target labels; more starts are screened while none is clearly under the identity
map's distance, printed last) and, as an outside check the method never sees,
the correlation of G_t→s's output with its input inside the brain (about −1 when
T2's contrast is inverted into T1's, +1 for a near-identity map).

    python benchmarks/translator_starts.py --model SRC.safetensors --data DATA --source t1 --target t2 \\
        [--split-seed 1] [--seed 1] [--translator '{"starts": 4, "screen_steps": 100}']
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace


def main() -> None:
    import numpy as np
    import torch
    from _split_args import add_split_args

    import bigl.adapt as A
    from bigl.benchmark import split_dataset
    from bigl.checkpoint import load_bundle
    from bigl.io import list_cases
    from bigl.preprocess import patch_size_for
    from bigl.train import load_prepared, seed_everything

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_args(p, "source bundle (trained on the split's source cases)")
    p.add_argument("--seed", type=int, default=0, help="adaptation seed (`bigl benchmark` uses the split seed)")
    p.add_argument("--translator", default="{}", help="TranslatorTrainConfig overrides (JSON)")
    args = p.parse_args()

    splits = split_dataset(list_cases(args.data), args.split_seed)
    src = load_prepared(splits.source, args.source, labels=True)
    tgt = load_prepared(splits.target, args.target, labels=False)
    seg = load_bundle(args.model).segmenter.eval()
    cfg = A.TranslatorTrainConfig(**json.loads(args.translator))
    scored = []
    original = A.translator_stage.translation_distance

    def distance(g_s2t, g_t2s, xs, ys, xt):
        d = original(g_s2t, g_t2s, xs, ys, xt)
        with torch.no_grad():
            y = g_t2s(xt, (xt != 0).float())
        m = xt != 0
        corr = float(np.corrcoef(xt[m].cpu().numpy(), y[m].cpu().numpy())[0, 1])
        scored.append({"start": len(scored), "distance": round(d, 4), "check_corr_input_output": round(corr, 3)})
        print(json.dumps(scored[-1]), flush=True)
        return d

    floor = []
    original_floor = A.translator_stage.identity_distance

    def identity(xs, xt):
        floor.append(original_floor(xs, xt))
        return floor[-1]

    rng = seed_everything(args.seed)
    screen = min(cfg.screen_steps, cfg.steps)
    # the steps after screening only train the chosen start further: not needed to see the choice
    cfg = replace(cfg, steps=screen)
    A.translator_stage.translation_distance, A.translator_stage.identity_distance = distance, identity
    try:
        A.train_translator(src, tgt, patch_size_for(src + tgt, seg.stride), cfg, rng, torch.device("cpu"),
                           segmenter=seg)
    finally:
        A.translator_stage.translation_distance, A.translator_stage.identity_distance = original, original_floor
    best = min(scored, key=lambda r: r["distance"])
    print(json.dumps({"chosen_start": best["start"], "after_steps": screen, "starts": len(scored),
                      "identity_distance": round(floor[0], 4)}))


if __name__ == "__main__":
    main()
