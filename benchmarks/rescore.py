"""Score the row bundles a `bigl benchmark` run wrote again, with the library's inference as it is now.

`bigl benchmark` scores each row when it trains it; when inference changes later (e.g. mirrored
test-time augmentation became `segment_volume`'s default), this re-scores the saved bundles on
each seed's test subjects (the split drawn exactly as the benchmark draws it) without training
anything. One JSON line per seed and row, then the mean over seeds per row:

    python benchmarks/rescore.py --runs /tmp/bench/T12_0 /tmp/bench/T12_12 --data /tmp/bench3031 --target t2 \\
        [--rows source_only translate_only]

A row bundle is every ``seedN/*.safetensors`` of a run except the trained models the rows start from
(``source_t1``, ``target_t2``, ``target_multi``, ``source_t1_gin``, ..., and ``.last`` files); ``--rows`` names
the bundles to score instead, those models included (``--rows source_t1 --target t1``: the source model on
the test subjects' own source images).
A multi-sequence bundle is scored on its own sequences, every other one on ``--target``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def row_bundles(seed_dir: Path, rows: list[str] | None) -> list[Path]:
    """The row bundles of one seed folder, by name (see the module docstring)."""
    out = []
    for p in sorted(seed_dir.glob("*.safetensors")):
        name = p.name.removesuffix(".safetensors")
        if rows is not None:
            if name in rows:
                out.append(p)
        elif not (name.endswith(".last") or re.fullmatch(r"(source|target)_(t1|t1ce|t2|flair|multi)(_\w+)?", name)):
            out.append(p)
    return out


def main() -> None:
    from bigl.benchmark import split_dataset
    from bigl.checkpoint import load_bundle
    from bigl.evaluate import evaluate_dataset
    from bigl.io import list_cases

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="`bigl benchmark --out` folders (with seedN/ inside)")
    p.add_argument("--data", required=True, help="the dataset the benchmark split")
    p.add_argument("--target", required=True, help="target sequence the rows are scored on")
    p.add_argument("--rows", nargs="+", default=None, help="bundle names to score (default: every row)")
    p.add_argument("--device", default="auto")
    a = p.parse_args()

    cases = list_cases(a.data)
    per_row: dict[str, list[float]] = {}
    for run in a.runs:
        for seed_dir in sorted(d for d in Path(run).glob("seed*") if d.is_dir()):
            seed = int(seed_dir.name.removeprefix("seed"))
            test = split_dataset(cases, seed).test
            for path in row_bundles(seed_dir, a.rows):
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
