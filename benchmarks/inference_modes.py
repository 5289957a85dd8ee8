"""Score an adapted bundle on labelled target data in every inference mode, next to translate-only.

Translate-only here is the source model segmenting G_t→s(x_t) with the adapted
bundle's own stage-1 translator — what `bigl adapt --method translate` builds
with the same seed and data (stage 1 is deterministic on one machine), without
training it again. Prints one JSON line per probe: DSC (%) per region and average.

    python benchmarks/inference_modes.py --adapted ADAPTED.safetensors --source-model SRC.safetensors \\
        --data TEST_DIR --target t2
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace


def main() -> None:
    from bigl.checkpoint import load_bundle
    from bigl.evaluate import evaluate_dataset
    from bigl.io import list_cases

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapted", required=True, help="bundle written by `bigl adapt` (with a translator)")
    p.add_argument("--source-model", required=True, help="the source bundle it was adapted from")
    p.add_argument("--data", required=True, help="labelled target-sequence cases (scoring only)")
    p.add_argument("--target", required=True, help="target sequence")
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    adapted, source = load_bundle(args.adapted), load_bundle(args.source_model)
    probes = {mode: replace(adapted, inference=mode) for mode in ("ensemble", "direct", "translate")}
    probes["translate-only"] = replace(adapted, segmenter=source.segmenter, inference="translate")
    cases = list_cases(args.data)
    for name, bundle in probes.items():
        summary = evaluate_dataset(bundle, cases, args.target, device=args.device)["summary"]
        print(json.dumps({"probe": name} | {r: round(100 * summary[r]["dice_mean"], 2)
                                            for r in ("WT", "TC", "ET", "average")}), flush=True)


if __name__ == "__main__":
    main()
