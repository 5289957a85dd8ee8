"""The `bigl` command line. argparse lives here only; every command is one call into the library."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from dataclasses import replace
from collections.abc import Sequence
from pathlib import Path

import bigl._openmp  # noqa: F401  (sets OMP_WAIT_POLICY: before anything below imports torch)
from bigl import __version__
from bigl.errors import BiglError
from bigl.io import SEQUENCES
from bigl.models.segmenter import HEADS
from bigl.cli._args import (MIRROR, TRAIN_DEFAULTS, TextProgress, bundle_outputs, common_options, data_options,
                            main_process, mirror_option, nonnegative_float, positive_float, positive_int,
                            probability)
from bigl.cli import research
from bigl.train import TrainConfig

__all__ = ["TextProgress", "build_parser", "main"]


def _cmd_phantom(args: argparse.Namespace) -> int:
    from bigl.phantom import PhantomConfig, write_dataset

    cfg = replace(PhantomConfig.preset(args.preset), p_random_contrast=args.random_contrast,
                  t1_spin_echo=tuple(args.t1_spin_echo), p_t1_bright_edema=args.t1_bright_edema,
                  p_healthy=args.healthy if args.healthy is not None else PhantomConfig.p_healthy).validate()
    paths = write_dataset(args.out, n_cases=args.n_cases, seed=args.seed, preset=cfg, overwrite=args.overwrite)
    print(f"wrote {len(paths)} phantom cases to {args.out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from bigl.models.segmenter import SegmenterConfig
    from bigl.train import train

    out = Path(args.out)
    bundle_outputs(out, out.with_name(out.stem + ".last.safetensors"), overwrite=args.overwrite)
    aug = replace(TRAIN_DEFAULTS.augmentation,
                  contrast_method=args.contrast_method if args.augment == "contrast" else "none",
                  p_lesion_contrast=args.lesion_contrast)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      val_every=args.val_every, augment=args.augment != "none", augmentation=aug, workers=args.workers,
                      weight_ema=args.weight_ema, dice=args.dice, deep_supervision=args.deep_supervision,
                      segmenter=SegmenterConfig(attention=not args.no_attention, context_slices=args.context_slices,
                                                head=args.head))
    result = train(args.data, args.modality, args.out, cfg, device=args.device, overwrite=args.overwrite,
                   progress=TextProgress(), cache_dir=args.cache_dir, init=args.init)
    if not main_process():
        return 0
    written = result.bundle.provenance.get("val_metrics", {}).get("average_dice", float("nan"))
    print(f"trained {'+'.join(args.modality)} segmenter in {result.seconds:.0f} s; the written ({result.written}) "
          f"model's validation mean Dice {100 * written:.1f} % "
          f"(best seen {100 * result.best_dice:.1f} %)")
    print(f"best bundle: {result.best_path}\nlast bundle: {result.last_path}")
    return 0


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from bigl.checkpoint import ensemble, load_bundle, save_bundle

    out = Path(args.out)
    bundle_outputs(out, overwrite=args.overwrite)
    members = [load_bundle(m) for m in args.models]
    bundle = ensemble(members, provenance={"command": "bigl ensemble", "models": [str(m) for m in args.models]})
    save_bundle(bundle, out, overwrite=args.overwrite)
    print(f"wrote {out}: {len(bundle.segmenters)} {'+'.join(bundle.sequences)} segmenters; inference averages "
          "their probabilities")
    return 0


def _is_dataset_folder(path: Path) -> bool:
    """A folder of case folders (no NIfTI file of its own): `bigl segment` segments every case in it."""
    if not path.is_dir():
        return False
    entries = list(path.iterdir())
    return (any(e.is_dir() for e in entries)
            and not any(e.is_file() and e.name.lower().endswith((".nii", ".nii.gz")) for e in entries))


def _segment_dataset(args: argparse.Namespace) -> int:
    from bigl.bundles import default_model
    from bigl.checkpoint import load_bundle
    from bigl.folder import segment_folder

    if args.attention or args.probabilities:
        raise BiglError("--attention and --probabilities are written for one volume; with a dataset folder as "
                        "--input only the label volumes are written (one <case id>.nii.gz per case in --out)")
    bundle = load_bundle(args.model or default_model(case_folder=True, modality=args.modality))
    t0 = time.perf_counter()
    res = segment_folder(bundle, args.input, args.out, modality=args.modality, device=args.device,
                         overwrite=args.overwrite, mirror=MIRROR[args.mirror], progress=TextProgress())
    print(f"segmented {len(res.written)} case(s) of {args.input} into {args.out} in {time.perf_counter() - t0:.0f} s "
          f"(model {bundle.path.name if bundle.path else '?'})"
          + (f"; {len(res.skipped)} skipped: output exists (--overwrite replaces)" if res.skipped else ""))
    for case_id, why in res.failed.items():
        print(f"  failed {case_id}: {why}", file=sys.stderr)
    if res.failed:
        print(f"bigl segment: {len(res.failed)} case(s) failed", file=sys.stderr)
        return 1
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from bigl.checkpoint import load_bundle
    from bigl.infer import segment_volume
    from bigl._fs import check_distinct, check_output
    from bigl.bundles import default_model
    from bigl.io import NIFTI_OUTPUT, find_case, load_images, read_input, sequence_from_name, write_many

    if _is_dataset_folder(Path(args.input)):
        return _segment_dataset(args)
    outputs = [Path(p) for p in (args.out, args.attention, args.probabilities) if p]
    for p in outputs:
        check_output(p, suffix=NIFTI_OUTPUT, overwrite=args.overwrite, what="NIfTI output")
    check_distinct([Path(args.input)] + outputs)
    is_dir = Path(args.input).is_dir()
    # a file's sequence from its name (BraTS suffixes) picks the bundled model as --modality would
    named = args.modality or (None if is_dir else sequence_from_name(Path(args.input).name))
    bundle = load_bundle(args.model or default_model(case_folder=is_dir, modality=named))
    if len(bundle.sequences) > 1 and is_dir:   # a multi-sequence model reads the whole case
        inputs = load_images(find_case(args.input), bundle.sequences)
        volume, sequence, label = inputs[bundle.sequences[0]], None, "+".join(bundle.sequences)
    else:
        volume, sequence = read_input(args.input, args.modality)
        inputs, label = volume, sequence or "sequence unknown"
    t0 = time.perf_counter()
    # what is not written is not computed: attention maps and input-grid probabilities cost time and memory
    seg = segment_volume(bundle, inputs, sequence=sequence, device=args.device, progress=TextProgress(),
                         with_attention=bool(args.attention), with_probabilities=bool(args.probabilities),
                         mirror=MIRROR[args.mirror])
    arrays = [seg.labels] + [a for a, p in ((seg.attention, args.attention), (seg.probabilities, args.probabilities))
                             if p]
    write_many(list(zip(arrays, outputs)), volume, overwrite=args.overwrite)  # all or none
    vols = ", ".join(f"{k} {v:.1f} ml" for k, v in seg.volumes_ml.items())
    print(f"segmented {volume.path} ({label}; model {bundle.path.name if bundle.path else '?'}) in "
          f"{time.perf_counter() - t0:.1f} s: {vols}")
    print(f"wrote {', '.join(str(p) for p in outputs)}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from bigl.checkpoint import load_bundle
    from bigl._fs import check_output
    from bigl.evaluate import evaluate_dataset, format_breakdown, format_table, write_json

    if args.json:
        check_output(args.json, suffix=".json", overwrite=args.overwrite, what="results file")
    bundle = load_bundle(args.model)
    result = evaluate_dataset(bundle, args.data, args.modality, device=args.device, progress=TextProgress(),
                              cavity=args.resection_cavity, mirror=MIRROR[args.mirror])
    print(format_table(result["summary"], f"{bundle.path} on {args.data} ({result['sequence']}, "
                                          f"{len(result['per_case'])} cases)"))
    if breakdown := format_breakdown(result):
        print(breakdown)
    if args.json:
        print(f"wrote {write_json(result, args.json, overwrite=args.overwrite)}")
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    from bigl.adapt import AdaptConfig, adapt
    from bigl.checkpoint import load_bundle, save_bundle

    out = Path(args.out)
    bundle_outputs(out, overwrite=args.overwrite)
    given = {"steps": args.steps, "lambda_round_trip": args.round_trip}     # None: AdaptConfig's default
    cfg = AdaptConfig(method=args.method, self_train=args.self_train, seed=args.seed, workers=args.workers,
                      lesion_contrast=args.lesion_contrast, **{k: v for k, v in given.items() if v is not None})
    source = load_bundle(args.model)
    if args.source_modality not in source.sequences:
        raise BiglError(f"{args.model} was trained on {', '.join(source.sequences)}, not {args.source_modality}; "
                        "pass the bundle's own sequence as --source-modality")
    result = adapt(source, args.source_data, args.source_modality, args.target_data, args.target_modality, cfg,
                   device=args.device, progress=TextProgress(), cache_dir=args.cache_dir)
    if not main_process():             # torchrun: rank 0 writes
        return 0
    save_bundle(result.bundle, out, overwrite=args.overwrite)
    print(f"adapted {args.source_modality} -> {args.target_modality} with {args.method} in {result.seconds:.0f} s "
          f"(kept step {result.chosen_step} by unsupervised selection); wrote {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from bigl.demo import run_demo
    from bigl.phantom import SAMPLE_DIR

    print(run_demo(args.data or SAMPLE_DIR, device=args.device, live=args.adapt, progress=TextProgress(),
                   notify=lambda message: print(message, flush=True)).text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bigl", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bigl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("phantom", help="generate synthetic BraTS-layout brain-tumour cases")
    p.add_argument("--out", required=True, help="dataset folder to write case folders into")
    p.add_argument("--n-cases", type=positive_int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="small", help="size preset: tiny | small | brats")
    p.add_argument("--random-contrast", type=float, default=0.0, metavar="P",
                   help="share of cases whose tissue intensities are drawn at random (SynthSeg-style, for "
                        "contrast-agnostic training); default 0: real MR contrast tables, jittered per case")
    p.add_argument("--t1-spin-echo", type=float, nargs=2, default=(0.0, 0.0), metavar=("LO", "HI"),
                   help="T1 and T1ce contrast per case from the MPRAGE (0) towards a 2D spin-echo T1 (1), drawn "
                        "uniformly in [LO, HI] (docs/phantom.md); default 0 0: MPRAGE only")
    p.add_argument("--t1-bright-edema", type=float, default=0.0, metavar="P",
                   help="share of cases whose T1 and T1ce use the engine's first table, edema brighter than grey "
                        "matter (not MR physics; for training that does not rest on one T1 contrast, "
                        "docs/phantom.md); default 0")
    p.add_argument("--healthy", type=float, default=None, metavar="P",
                   help="share of cases without a tumour (default: the engine's, 5 %%)")
    p.add_argument("--overwrite", action="store_true", help="replace existing case folders")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("train", help="train a segmenter with labels on one or several sequences")
    p.add_argument("--data", required=True, help="BraTS-layout dataset folder (case folders with seg files)")
    p.add_argument("--modality", required=True, nargs="+", choices=SEQUENCES, metavar="SEQ",
                   help="input sequence(s) to train on, e.g. t1, or t1 t1ce t2 flair for a multi-sequence model "
                        "(channel order as given, recorded in the bundle)")
    p.add_argument("--out", required=True, help="bundle to write (best model), e.g. model_t1.safetensors")
    p.add_argument("--augment", default="standard", choices=("standard", "contrast", "none"),
                   help="on-the-fly augmentation: standard (spatial + intensity, nnU-Net kind), contrast (also "
                        "random contrast maps: robust to unseen sequences without target images), none")
    p.add_argument("--contrast-method", default=TRAIN_DEFAULTS.augmentation.contrast_method
                   if TRAIN_DEFAULTS.augmentation.contrast_method != "none" else "gin", choices=("gin", "remap"),
                   help="contrast randomisation of --augment contrast: gin (random shallow conv nets) or remap "
                        "(random intensity curves)")
    p.add_argument("--lesion-contrast", type=probability, default=TRAIN_DEFAULTS.augmentation.p_lesion_contrast,
                   metavar="P", help="share of training slices whose tumour classes are each brightened or darkened "
                                     "at random (a lesion's contrast in another sequence is unknown)")
    p.add_argument("--context-slices", type=int, default=TRAIN_DEFAULTS.segmenter.context_slices,
                   help="2.5D input: neighbouring slices on each side as extra channels")
    p.add_argument("--steps", type=positive_int, default=TRAIN_DEFAULTS.steps)
    p.add_argument("--batch-size", type=positive_int, default=TRAIN_DEFAULTS.batch_size)
    p.add_argument("--lr", type=positive_float, default=TRAIN_DEFAULTS.lr)
    p.add_argument("--val-every", type=positive_int, default=TRAIN_DEFAULTS.val_every)
    p.add_argument("--weight-ema", type=float, default=TRAIN_DEFAULTS.weight_ema, metavar="M",
                   help="validate and save a moving average of the weights with momentum M (0: the weights)")
    p.add_argument("--dice", default=TRAIN_DEFAULTS.dice, choices=("classes", "regions"),
                   help="soft Dice of the loss over the tumour classes or over the scored regions WT / TC / ET")
    p.add_argument("--deep-supervision", action=argparse.BooleanOptionalAction,
                   default=TRAIN_DEFAULTS.deep_supervision, help="also supervise the coarser decoder levels")
    p.add_argument("--head", default=TRAIN_DEFAULTS.segmenter.head, choices=HEADS,
                   help="output head: a softmax over the classes, or nested sigmoids of the regions WT, TC, ET")
    p.add_argument("--no-attention", action="store_true", help="plain U-Net (no dual-attention block)")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="fine-tune: start from this bundle's network (its architecture; as many input channels)")
    data_options(p)
    common_options(p, seed=True)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("ensemble", help="combine models trained the same way (e.g. with other --seed) into one "
                                        "bundle whose inference averages them")
    p.add_argument("--models", required=True, nargs="+", metavar="BUNDLE",
                   help="two or more bundles from `bigl train` on the same sequences (ensembles too); the first "
                        "one's segmenter is the one attention maps and adaptation use")
    p.add_argument("--out", required=True, help="ensemble bundle to write (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_cmd_ensemble)

    p = sub.add_parser("segment", help="segment one volume or case folder")
    p.add_argument("--model", default=None,
                   help="model bundle (default: the bundled four-sequence model for a case folder without "
                        "--modality; for T2 (--modality t2 or a *_t2 file) the bundled T1 model adapted to T2; "
                        "else the bundled T1 model)")
    p.add_argument("--input", required=True, help="a .nii/.nii.gz file, a BraTS case folder, or a dataset folder "
                   "of case folders (then --out is a folder: one <case id>.nii.gz per case)")
    p.add_argument("--modality", choices=SEQUENCES,
                   help="input sequence (guessed from the file name if omitted); with a case folder: segment this "
                        "one sequence with a single-sequence model")
    p.add_argument("--out", required=True, help="label volume to write (.nii.gz), on the input's grid; for a "
                   "dataset folder, the output folder (existing outputs are skipped unless --overwrite)")
    p.add_argument("--attention", help="also write the attention summary volume here")
    p.add_argument("--probabilities", help="also write the 4 class probabilities (4D NIfTI) here")
    mirror_option(p)
    common_options(p)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("evaluate", help="Dice/HD95 of a model on a labelled dataset")
    p.add_argument("--model", default=None, help="model bundle (default: the bundled demo model)")
    p.add_argument("--data", required=True, help="BraTS-layout dataset folder with seg files")
    p.add_argument("--modality", choices=SEQUENCES,
                   help="sequence to segment (default: the model's own sequence(s); all four for a multi-sequence "
                        "model)")
    p.add_argument("--json", help="write per-case and summary results to this JSON file")
    p.add_argument("--resection-cavity", choices=("error", "background"), default="error",
                   help="label 4 in a BraTS 2023-named seg file (BraTS 2024 resection cavity): refuse the file "
                        "(default) or count it as background, in no region")
    mirror_option(p)
    common_options(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("adapt", help="adapt a model to an unlabelled target sequence (BiGL or a baseline)")
    p.add_argument("--model", required=True, help="source model bundle (trained with labels on --source-modality)")
    p.add_argument("--source-data", required=True, help="labelled source dataset folder")
    p.add_argument("--source-modality", required=True, choices=SEQUENCES)
    p.add_argument("--target-data", required=True, help="target dataset folder (only images are read, never labels)")
    p.add_argument("--target-modality", required=True, choices=SEQUENCES)
    p.add_argument("--out", required=True, help="adapted bundle to write (.safetensors)")
    p.add_argument("--method", default="bigl", choices=("bigl", "adaptseg", "translate", "cycada", "sifa", "source-only"))
    p.add_argument("--self-train", action="store_true", help="add pseudo-label self-training after alignment")
    p.add_argument("--steps", type=positive_int, default=None, help="alignment steps (default from AdaptConfig)")
    p.add_argument("--lesion-contrast", type=probability, default=None, metavar="P",
                   help="share of source slices whose tumour classes are brightened or darkened at random while "
                        "the segmenter is adapted (default: the source model's own --lesion-contrast)")
    p.add_argument("--round-trip", type=nonnegative_float, default=None, metavar="W",
                   help="BiGL: weight of the segmentation loss on G_t->s(x_s->t with its lesions brightened or "
                        "darkened at random), which teaches the segmenter how the translator renders a lesion "
                        "(0: off; default from AdaptConfig, 1)")
    data_options(p)
    common_options(p, seed=True)
    p.set_defaults(func=_cmd_adapt)

    research.add_parsers(sub)

    p = sub.add_parser("demo", help="the bundled models on the sample cases: T1 on T1, on T2 (fails), adapted to "
                                    "T2, and the four-sequence model, with Dice")
    p.add_argument("--data", default=None, help="dataset folder (default: the repository's sample_data/)")
    p.add_argument("--adapt", action="store_true",
                   help="run the T1 -> T2 adaptation live (about a quarter of an hour on a 2-core CPU) instead of "
                        "loading the bundled adapted model")
    common_options(p, overwrite=False)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # a library warning (wrong sequence, anisotropic or unstripped input) reads as one line, not a source excerpt
    warnings.formatwarning = lambda message, category, *_a, **_k: f"bigl {args.command}: warning: {message}\n"
    logging.getLogger("bigl.data.cache").setLevel(logging.INFO)   # say when (and where) cases are preprocessed
    finished = False
    try:
        code = args.func(args)
        finished = True
        return code
    except BiglError as exc:
        print(f"bigl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bigl {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if "bigl.distributed" in sys.modules:   # a torchrun job leaves its process group
            sys.modules["bigl.distributed"].shutdown(wait=finished)


if __name__ == "__main__":
    sys.exit(main())
