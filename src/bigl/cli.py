"""The `bigl` command line. argparse lives here only; every command is one call into the library."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bigl import __version__
from bigl.errors import BiglError


def _cmd_phantom(args: argparse.Namespace) -> int:
    from bigl.phantom import write_dataset

    paths = write_dataset(args.out, n_cases=args.n_cases, seed=args.seed, preset=args.preset,
                          overwrite=args.overwrite)
    print(f"wrote {len(paths)} phantom cases to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bigl", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bigl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("phantom", help="generate synthetic BraTS-layout brain-tumour cases")
    p.add_argument("--out", required=True, help="dataset folder to write case folders into")
    p.add_argument("--n-cases", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="small", help="size preset: tiny | small | brats")
    p.add_argument("--overwrite", action="store_true", help="replace existing case folders")
    p.set_defaults(func=_cmd_phantom)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except BiglError as exc:
        print(f"bigl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bigl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
