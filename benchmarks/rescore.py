"""Score the row bundles a `bigl benchmark` run wrote again, with the library's inference as it is now.

`bigl benchmark` scores each row when it trains it; when inference changes later (e.g. mirrored
test-time augmentation became `segment_volume`'s default), this re-scores the saved bundles on
each seed's test subjects (the split drawn exactly as the benchmark draws it) without training
anything. One JSON line per seed and row, then the mean over seeds per row:

    python benchmarks/rescore.py --runs /tmp/bench/T12_0 /tmp/bench/T12_12 --data /tmp/bench3031 --target t2 \\
        [--rows source_only translate_only]

The rows of a run are those its ``results.json`` records for each seed, found where `bigl benchmark`
saved them (``bigl.benchmark.row_bundle_path``); ``--rows`` names bundle files of the seed folders to score
instead, the trained models the rows start from included (``--rows source_t1 --target t1``: the source
model on the test subjects' own source images).
A multi-sequence bundle is scored on its own sequences, every other one on ``--target``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def row_bundles(run: Path, results: dict, seed: int, names: list[str] | None) -> list[Path]:
    """The bundles to score for one seed of a run: its recorded rows, or the files named ``names``."""
    from bigl.benchmark import row_bundle_path, seed_rows

    seed_dir = run / f"seed{seed}"
    if names is None:
        paths = [row_bundle_path(seed_dir, row) for row in seed_rows(results, seed)]
    else:
        paths = [seed_dir / f"{name}.safetensors" for name in names]
    return [p for p in paths if p.exists()]     # e.g. the "as bundled" row shares the BiGL row's bundle


def main() -> None:
    from bigl.benchmark import split_dataset
    from bigl.checkpoint import load_bundle
    from bigl.evaluate import evaluate_dataset
    from bigl.io import list_cases

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="`bigl benchmark --out` folders (results.json, seedN/)")
    p.add_argument("--data", required=True, help="the dataset the benchmark split")
    p.add_argument("--target", required=True, help="target sequence the rows are scored on")
    p.add_argument("--rows", nargs="+", default=None,
                   help="bundle file names (no suffix) to score (default: every row of results.json)")
    p.add_argument("--device", default="auto")
    a = p.parse_args()

    cases = list_cases(a.data)
    per_row: dict[str, list[float]] = {}
    for run in map(Path, a.runs):
        results = json.loads((run / "results.json").read_text())
        for seed in results["seeds"]:
            test = split_dataset(cases, seed).test
            for path in row_bundles(run, results, seed, a.rows):
                bundle = load_bundle(path)
                sequence = None if len(bundle.sequences) > 1 else a.target
                s = evaluate_dataset(bundle, test, sequence, device=a.device)["summary"]
                dice = {r: round(100 * s[r]["dice_mean"], 1) for r in ("WT", "TC", "ET", "average")}
                per_row.setdefault(path.stem, []).append(dice["average"])
                print(json.dumps({"seed": seed, "row": path.stem, **dice}), flush=True)
    for row, values in per_row.items():
        print(json.dumps({"row": row, "seeds": len(values), "mean average Dice": round(sum(values) / len(values), 1)}))


if __name__ == "__main__":
    main()
