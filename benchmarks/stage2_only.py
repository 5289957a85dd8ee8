"""Stage 2 of `bigl adapt` alone, from the stage-1 translators of an adapted bundle.

Stage 1 is deterministic and takes about half of an adaptation; a stage-2 setting is compared fairly by running
stage 2 with and without it from the same translators (both sides then draw the same random numbers).

    python benchmarks/stage2_only.py --model SRC.safetensors --translators ADAPTED.safetensors \\
        --source-data SRC_DIR --source-modality t1 --target-data TGT_DIR --target-modality t2 \\
        --out M.safetensors [--adapt '{"lambda_round_trip": 0, "seed": 1}']
    bigl evaluate --model M.safetensors --data TEST_DIR --modality t2

Used for "The round trip" in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    from bigl.adapt import AdaptConfig, adapt
    from bigl.checkpoint import load_bundle, save_bundle

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="source model bundle")
    p.add_argument("--translators", required=True, help="adapted bundle whose G_s→t / G_t→s are reused")
    p.add_argument("--source-data", required=True)
    p.add_argument("--source-modality", required=True)
    p.add_argument("--target-data", required=True)
    p.add_argument("--target-modality", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--adapt", default="{}", help="AdaptConfig overrides (JSON)")
    a = p.parse_args()
    stage1 = load_bundle(a.translators)
    if stage1.translator_s2t is None or stage1.translator_t2s is None:
        raise SystemExit(f"{a.translators} holds no pair of translators; pass a bundle made by bigl adapt (BiGL)")
    cfg = AdaptConfig(**json.loads(a.adapt))
    t0 = time.perf_counter()
    result = adapt(load_bundle(a.model), a.source_data, a.source_modality, a.target_data, a.target_modality, cfg,
                   device="cpu", translators=(stage1.translator_s2t, stage1.translator_t2s))
    save_bundle(result.bundle, a.out)
    print(f"wrote {a.out}: stage 2 in {time.perf_counter() - t0:.0f} s, chosen step {result.chosen_step}")


if __name__ == "__main__":
    main()
