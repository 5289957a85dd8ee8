"""The research commands of `bigl`: benchmark, gap-matrix, merge-results."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bigl.cli._args import TextProgress, common_options, positive_int
from bigl.errors import BiglError
from bigl.io import SEQUENCES
from bigl.train import TrainConfig


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from bigl.adapt import AdaptConfig
    from bigl.benchmark import run_benchmark

    if (Path(args.out) / "results.json").exists() and not (args.resume or args.overwrite):
        raise BiglError(f"{args.out} already holds benchmark results; pass --resume to add rows to them (reusing "
                        f"their source models and translators), --overwrite to start again, or choose another --out")
    tcfg = TrainConfig(**({"steps": args.train_steps} if args.train_steps else {}))
    acfg = AdaptConfig(**({"steps": args.steps} if args.steps else {}))
    results = run_benchmark(args.data, args.source, args.target, args.out, seeds=tuple(args.seeds),
                            rows=tuple(args.methods) if args.methods else None, train_config=tcfg, adapt_config=acfg,
                            lambda_gtl=tuple(args.lambda_gtl), device=args.device, progress=TextProgress(),
                            resume=args.resume)
    print((Path(args.out) / "results.md").read_text())
    print(f"benchmark took {results['seconds']:.0f} s; wrote {args.out}/results.md, results.json, figure.png")
    return 0


def _cmd_gap_matrix(args: argparse.Namespace) -> int:
    from bigl._fs import atomic_path, check_output
    from bigl.benchmark import gap_matrix_markdown

    out = check_output(args.out, suffix=".md", overwrite=args.overwrite, what="gap matrix")
    text = gap_matrix_markdown(args.results)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text)
    print(text)
    return 0


def _cmd_merge_results(args: argparse.Namespace) -> int:
    from bigl.benchmark import merge_results, results_markdown

    out = Path(args.out)
    targets = [out / "results.json", out / "results.md"]
    if any(t.exists() for t in targets) and not args.overwrite:
        raise BiglError(f"{out} already holds results.json/results.md; pass --overwrite or choose another --out")
    merged = merge_results(args.results)
    out.mkdir(parents=True, exist_ok=True)
    targets[0].write_text(json.dumps(merged, indent=2))
    targets[1].write_text(results_markdown(merged))
    print(targets[1].read_text())
    print(f"merged {len(args.results)} result files (seeds {', '.join(map(str, merged['seeds']))}); wrote {out}")
    return 0


def add_parsers(sub) -> None:
    """Add the benchmark, gap-matrix and merge-results subcommands to ``sub`` (argparse subparsers)."""
    p = sub.add_parser("benchmark", help="compare BiGL with baselines and ablations on one dataset")
    p.add_argument("--data", required=True, help="labelled dataset folder (split into source/target/test by subject)")
    p.add_argument("--source", required=True, choices=SEQUENCES)
    p.add_argument("--target", required=True, choices=SEQUENCES)
    p.add_argument("--out", required=True, help="results folder (results.md, results.json, figure.png)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=None, metavar="KEY",
                   help="rows to run (default all): source-only adaptseg translate cycada bigl-out bigl-out-feat "
                        "bigl bigl-st bigl-no-rt bigl-paper sifa target-only source-only-contrast target-only-multi")
    p.add_argument("--lambda-gtl", type=float, nargs="+", default=(), metavar="W",
                   help="also run BiGL once per feature/attention weight W (the paper's Table 5), e.g. 0.02 0.1 0.5")
    p.add_argument("--steps", type=positive_int, default=None, help="alignment steps per method")
    p.add_argument("--train-steps", type=positive_int, default=None, help="supervised steps for source/target-only models")
    p.add_argument("--resume", action="store_true",
                   help="reuse the source models and stage-1 translators already in --out (same data, seeds and "
                        "settings) and add the rows run now to its results")
    common_options(p)
    p.set_defaults(func=_cmd_benchmark)

    p = sub.add_parser("gap-matrix", help="a table of the share of the gap each method closes, one column per "
                                          "direction, from `bigl benchmark` results.json files")
    p.add_argument("results", nargs="+", help="results.json files written by `bigl benchmark` (any directions)")
    p.add_argument("--out", required=True, help="markdown file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_cmd_gap_matrix)

    p = sub.add_parser("merge-results", help="combine benchmark results.json files (e.g. seeds run apart) "
                                              "into one table")
    p.add_argument("results", nargs="+", help="results.json files written by `bigl benchmark`")
    p.add_argument("--out", required=True, help="folder for the merged results.json and results.md")
    p.add_argument("--overwrite", action="store_true", help="replace an existing merged results.json/results.md")
    p.set_defaults(func=_cmd_merge_results)
