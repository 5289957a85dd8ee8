"""Can stage 1's translator carry one sequence into another at all? Translate-only with a *paired* translator.

Stage 1 normally learns unpaired (CycleGAN objective). Here it also gets Eq. 1's L1 to the real target
slice of the same subject (`TranslatorTrainConfig(paired=True)`): the split's source subjects serve as
both domains, in the source and the target sequence. If even this translate-only row stays near
source-only, the generator cannot express the mapping, whatever the unpaired objective does.

    python benchmarks/paired_translator.py --model SRC.safetensors --data DATA --source flair --target t1 \\
        [--split-seed 0] [--out paired.safetensors]

Prints the test split's mean Dice (target sequence, as `bigl benchmark` scores it); --out keeps the bundle
(its translator: `bigl translate`).
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    from _split_args import add_split_args

    from bigl.adapt import AdaptConfig, TranslatorTrainConfig, adapt
    from bigl.benchmark import split_dataset
    from bigl.checkpoint import load_bundle, save_bundle
    from bigl.evaluate import evaluate_dataset
    from bigl.io import list_cases

    p = argparse.ArgumentParser()
    add_split_args(p)
    p.add_argument("--out", default=None, help="write the adapted bundle (with its paired translator) here")
    a = p.parse_args()
    bundle = load_bundle(a.model)
    split = split_dataset(list_cases(a.data), a.split_seed)
    cfg = AdaptConfig(method="translate", translator=TranslatorTrainConfig(paired=True, starts=1)).for_source(bundle)
    result = adapt(bundle, split.source, a.source, split.source, a.target, cfg, device="cpu")
    summary = evaluate_dataset(result.bundle, split.test, a.target, device="cpu")["summary"]
    print(json.dumps({"paired translate-only": {r: round(100 * summary[r]["dice_mean"], 1)
                                                for r in ("WT", "TC", "ET", "average")}}))
    if a.out:
        save_bundle(result.bundle, a.out)


if __name__ == "__main__":
    main()
