"""Arguments shared by the benchmark scripts that work on one `bigl benchmark` split."""

from __future__ import annotations

import argparse


def add_split_args(p: argparse.ArgumentParser, model_help: str = "source bundle of the split") -> None:
    """--model, --data, --source, --target, --split-seed (the split exactly as `bigl benchmark` draws it)."""
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--data", required=True, help="labelled dataset folder, split by subject as `bigl benchmark` does")
    p.add_argument("--source", required=True, help="source sequence (t1, t1ce, t2, flair)")
    p.add_argument("--target", required=True, help="target sequence")
    p.add_argument("--split-seed", type=int, default=0, help="the benchmark seed whose split is used")
