"""The comparison of the paper's Tables 1–4 on one dataset: baselines, BiGL ablations, self-training.

Splits are subject-disjoint and seeded: ``source`` cases (labels of the source
sequence used), ``target`` cases (only target-sequence images used, for
adaptation; their labels are used by the *target-only* upper bound alone) and
``test`` cases (target sequence with labels, for scoring only).
Every method starts from the same source model and, where it translates, the
same stage-1 translator, with the same step budget.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bigl.adapt import AdaptConfig, TranslatorTrainConfig, adapt
from bigl.checkpoint import Bundle, jsonable, load_bundle, save_bundle
from bigl.errors import BiglError
from bigl.evaluate import REGION_ORDER, evaluate_dataset
from bigl.infer import segment_volume
from bigl.io import SEQUENCES, Case, list_cases, load_images, load_labels
from bigl.progress import ProgressFn
from bigl.render import label_overlay, save_png, tile
from bigl.train import TrainConfig, train

log = logging.getLogger(__name__)

# key -> (table row, adaptation method, AdaptConfig overrides); "target-only" trains on target labels instead
ROWS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "source-only": ("Source only", "source-only", {}),
    "adaptseg": ("AdaptSegNet", "adaptseg", {}),
    "translate": ("Translate only", "translate", {}),
    "cycada": ("CyCADA-style", "cycada", {}),
    "bigl-out": ("BiGL: output", "bigl", {"use_feature": False, "use_attention": False}),
    "bigl-out-feat": ("BiGL: output + feature", "bigl", {"use_attention": False}),
    "bigl": ("BiGL: output + feature + attention", "bigl", {}),
    "bigl-st": ("BiGL + self-training", "bigl", {"self_train": True}),
    "bigl-no-rt": ("BiGL without the round trip", "bigl", {"lambda_round_trip": 0.0}),
    # the loss exactly as the paper writes it: L_seg on x_s→t too, no source-model anchor, no round trip
    "bigl-paper": ("BiGL, paper losses (L_seg on x_s→t, no anchor)", "bigl",
                   {"lambda_seg_s2t": 1.0, "lambda_anchor": 0.0, "lambda_round_trip": 0.0}),
    "sifa": ("SIFA-style (image + feature + output)", "sifa", {}),
    "target-only": ("Target only (upper bound)", "", {}),
    # supervised rows beyond the paper: the source model trained with GIN contrast randomisation, segmenting the
    # target directly (what a user gets without adapting), and a four-sequence model trained on the target cases
    "source-only-contrast": ("Source only, contrast augmentation (GIN)", "", {}),
    "target-only-multi": ("Target only, four sequences (upper bound)", "", {}),
}
SOURCE_ONLY, TARGET_ONLY = ROWS["source-only"][0], ROWS["target-only"][0]


def gtl_row(value: float) -> str:
    """Row name of BiGL (all alignment levels) at feature/attention weight ``value`` (the paper's Table 5)."""
    return f"BiGL, λ_gtl = {value:g}"


def bundled_suffix(inference: str) -> str:
    """Row suffix of BiGL scored the way its bundle segments (``AdaptConfig.inference``), beside the paper's Φ(x_t)."""
    return f" [{inference} inference, as bundled]"


@dataclass
class Splits:
    source: list[Case]
    target: list[Case]
    test: list[Case]


def split_dataset(cases: list[Case], seed: int, fractions: tuple[float, float] = (0.4, 0.4)) -> Splits:
    """Seeded subject-disjoint source / target / test split."""
    if len(cases) < 6:
        raise BiglError(f"the benchmark needs at least 6 labelled cases (2 per split), found {len(cases)}")
    order = np.random.default_rng(seed).permutation(len(cases))
    n_s = max(2, int(round(fractions[0] * len(cases))))
    n_t = max(2, int(round(fractions[1] * len(cases))))
    pick = lambda idx: [cases[i] for i in sorted(idx)]  # noqa: E731
    return Splits(pick(order[:n_s]), pick(order[n_s:n_s + n_t]), pick(order[n_s + n_t:]))


def run_benchmark(data: str | Path, source_seq: str, target_seq: str, out: str | Path, *,
                  seeds: tuple[int, ...] = (0,), rows: tuple[str, ...] | None = None,
                  train_config: TrainConfig | None = None, adapt_config: AdaptConfig | None = None,
                  lambda_gtl: tuple[float, ...] = (), device: str = "auto", progress: ProgressFn | None = None,
                  resume: bool = False) -> dict[str, Any]:
    """Run every row for every seed; write results.json, results.md and figure.png under ``out``.

    ``lambda_gtl``: after the rows, BiGL once per value of its feature/attention
    weight (the paper's Table 5). ``resume``: reuse what an earlier run left in
    ``out`` for the same data and sequences — each seed's source model and
    stage-1 translator, when they were trained on this seed's split with the
    same settings — and add the rows run now to its results.json, replacing rows
    of the same name and seed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cases = list_cases(data)
    rows = rows or tuple(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise BiglError(f"unknown benchmark methods {unknown}; choose from {', '.join(ROWS)}")
    tcfg = train_config or TrainConfig()
    acfg = adapt_config or AdaptConfig()
    results: dict[str, Any] = {"data": str(data), "source": source_seq, "target": target_seq, "seeds": list(seeds),
                               "runs": []}
    if resume and (out / "results.json").exists():
        results = _previous_results(out / "results.json", results)
    t_start = time.perf_counter()
    for seed in seeds:
        splits = split_dataset(cases, seed)
        log.info("seed %d: %d source, %d target, %d test cases", seed, len(splits.source), len(splits.target),
                 len(splits.test))
        seed_dir = out / f"seed{seed}"
        src_path = seed_dir / f"source_{source_seq}.safetensors"
        src = _reusable_source(src_path, splits.source, replace(tcfg, seed=seed)) if resume else None
        if src is None:
            src = train(splits.source, source_seq, src_path, replace(tcfg, seed=seed), device=device, overwrite=True,
                        progress=progress).bundle
        translators = _reusable_translators(seed_dir, splits, replace(acfg, seed=seed)) if resume else None
        jobs = [(key, *ROWS[key]) for key in rows]
        jobs += [(f"bigl-gtl-{v:g}", gtl_row(v), "bigl", {"lambda_gtl": v}) for v in lambda_gtl]
        for key, row, method, overrides in jobs:
            t0 = time.perf_counter()
            evaluated = target_seq
            extra: dict[str, Any] = {}
            if not method:     # supervised rows
                bundle, evaluated = _supervised_row(key, splits, source_seq, target_seq, seed_dir,
                                                    replace(tcfg, seed=seed), device, progress)
            else:
                cfg = replace(acfg, method=method, seed=seed, **overrides)
                res = adapt(src, splits.source, source_seq, splits.target, target_seq, cfg, device=device,
                            progress=progress, translators=translators)
                bundle = res.bundle
                if bundle.translator_t2s is not None:
                    translators = (bundle.translator_s2t, bundle.translator_t2s)
                extra = {"chosen_step": res.chosen_step,
                         "snapshots": _score_snapshots(bundle, res.snapshots, splits.test, target_seq, device)}
            seconds = time.perf_counter() - t0
            results["runs"] = [r for r in results["runs"]
                               if r["seed"] != seed or (r["row"] != row and not r["row"].startswith(row + " ["))]
            # the paper's protocol: every method segments x_t directly, translate-only segments G_t→s(x_t)
            protocol = replace(bundle, inference="translate" if method == "translate" else "direct")
            result = evaluate_dataset(protocol, splits.test, evaluated, device=device)
            results["runs"].append({"row": row, "seed": seed, "seconds": round(seconds, 1),
                                    "summary": result["summary"], "per_case": result["per_case"]} | extra)
            if method == "bigl" and bundle.inference != "direct":   # the same model as its bundle segments
                result = evaluate_dataset(bundle, splits.test, target_seq, device=device)
                results["runs"].append({"row": row + bundled_suffix(bundle.inference), "seed": seed,
                                        "seconds": round(seconds, 1),
                                        "summary": result["summary"], "per_case": result["per_case"]})
            log.info("seed %d %s: mean DSC %.1f %% (%.0f s)", seed, row,
                     100 * result["summary"]["average"]["dice_mean"], seconds)
            save_bundle(bundle, row_bundle_path(seed_dir, row), overwrite=True)
            (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
        if seed == seeds[0]:
            make_figure(splits.test[0], target_seq, seed_dir, results, out / "figure.png", device)
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "results.md").write_text(results_markdown(results))
    return results


def _supervised_row(key: str, splits: Splits, source_seq: str, target_seq: str, seed_dir: Path, cfg: TrainConfig,
                    device: str, progress: ProgressFn | None) -> tuple[Bundle, str | None]:
    """(model, the sequence it is scored on; None: every sequence it reads) of a row trained with labels."""
    if key == "source-only-contrast":
        cfg = replace(cfg, augmentation=replace(cfg.augmentation, contrast_method="gin"))
        bundle = train(splits.source, source_seq, seed_dir / f"source_{source_seq}_gin.safetensors", cfg,
                       device=device, overwrite=True, progress=progress).bundle
        # segments the target sequence directly, as a source-only adapted bundle does
        return replace(bundle, sequences=(target_seq,), source_sequence=source_seq), target_seq
    if key == "target-only-multi":
        bundle = train(splits.target, SEQUENCES, seed_dir / "target_multi.safetensors", cfg, device=device,
                       overwrite=True, progress=progress).bundle
        return bundle, None
    bundle = train(splits.target, target_seq, seed_dir / f"target_{target_seq}.safetensors", cfg, device=device,
                   overwrite=True, progress=progress).bundle
    return bundle, target_seq


def _read_results(path: Path) -> tuple[dict[str, Any], tuple[str, str, str]]:
    """A results.json written by `bigl benchmark` and its (data, source, target); BiglError naming the file if not."""
    try:
        part = json.loads(path.read_text())
        key = (part["data"], part["source"], part["target"])
        if not isinstance(part["runs"], list):
            raise TypeError("runs is not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BiglError(f"{path}: not a results.json written by `bigl benchmark` ({exc})") from exc
    return part, key


def _previous_results(path: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    old, key = _read_results(path)
    if key != (fresh["data"], fresh["source"], fresh["target"]):
        raise BiglError(f"{path} holds {key[1]} → {key[2]} on {key[0]}, not {fresh['source']} → {fresh['target']} on "
                        f"{fresh['data']}; resume only the same comparison, or choose another --out")
    old["seeds"] = sorted(set(old.get("seeds", [])) | set(fresh["seeds"]))
    old.pop("seconds", None)
    return old


def _with_defaults(saved: Any, defaults: Any) -> Any:
    """``saved`` (a config as JSON) with the fields it lacks taken from ``defaults``, nested configs included.

    A field added to a config after a model was saved reads as its default, which is what that model was
    trained with; so adding a field does not make every earlier model unusable for ``--resume``.
    """
    if not isinstance(saved, dict) or not isinstance(defaults, dict):
        return saved
    return {**{k: _with_defaults(saved.get(k, v), v) for k, v in defaults.items()},
            **{k: v for k, v in saved.items() if k not in defaults}}


def _reusable_source(path: Path, cases: list[Case], cfg: TrainConfig) -> Bundle | None:
    """The source model saved at ``path`` if it was trained on exactly ``cases`` with ``cfg``; else None."""
    if not path.exists():
        return None
    bundle = load_bundle(path)
    prov = bundle.provenance
    trained_on = set(prov.get("train_cases", [])) | set(prov.get("val_cases", []))
    saved = _with_defaults(prov.get("config"), jsonable(asdict(TrainConfig())))
    if trained_on != {c.case_id for c in cases} or saved != jsonable(asdict(cfg)):
        log.warning("%s was trained on other cases or settings; training the source model again", path)
        return None
    log.info("reusing source model %s", path)
    return bundle


def _reusable_translators(seed_dir: Path, splits: Splits, cfg: AdaptConfig):
    """(G_s→t, G_t→s) of a bundle in ``seed_dir`` adapted on this split with ``cfg``'s stage-1 settings; else None."""
    want = ([c.case_id for c in splits.source], [c.case_id for c in splits.target], jsonable(asdict(cfg.translator)))
    defaults = jsonable(asdict(TranslatorTrainConfig()))
    for path in sorted(seed_dir.glob("*.safetensors")):
        bundle = load_bundle(path)
        prov = bundle.provenance
        saved = _with_defaults(prov.get("config", {}).get("translator"), defaults)
        if bundle.translator_t2s is not None and (prov.get("source_cases"), prov.get("target_cases"), saved) == want:
            log.info("reusing the stage-1 translator of %s", path)
            return bundle.translator_s2t, bundle.translator_t2s
    return None


def _score_snapshots(bundle: Bundle, snapshots, test: list[Case], sequence: str, device) -> list[dict[str, float]]:
    """Target-label Dice of every snapshot (benchmark only): how close unsupervised selection gets to the best."""
    scored = []
    # direct, as the method's table row
    probe = replace(bundle, inference="direct", segmenter=copy.deepcopy(bundle.segmenter))
    for s in snapshots:
        probe.segmenter.load_state_dict(s.state)
        summary = evaluate_dataset(probe, test, sequence, device=device)["summary"]
        scored.append({"step": s.step, "stage": s.stage, "selection_score": s.score,
                       "test_dice": summary["average"]["dice_mean"]})
    return scored


def _aggregate(runs: list[dict[str, Any]], row: str) -> dict[str, Any] | None:
    """Per region: mean over seeds of the per-seed case means, and mean over seeds of the per-seed case stds."""
    mine = [r for r in runs if r["row"] == row]
    if not mine:
        return None
    agg = {}
    for region in REGION_ORDER:
        agg[region] = {k: float(np.mean([r["summary"][region][k] for r in mine]))
                       for k in ("dice_mean", "dice_std", "hd95_mean", "hd95_std")}
        agg[region]["dice_seed_std"] = float(np.std([r["summary"][region]["dice_mean"] for r in mine]))
    agg["seconds"] = float(np.mean([r["seconds"] for r in mine]))
    agg["n_seeds"] = len(mine)
    return agg


def results_markdown(results: dict[str, Any]) -> str:
    rows = list(dict.fromkeys(r["row"] for r in results["runs"]))
    aggs = {row: _aggregate(results["runs"], row) for row in rows}
    s, t = results["source"].upper(), results["target"].upper()
    lines = [f"## {s} → {t} on {results['data']} (seeds {', '.join(map(str, results['seeds']))})", "",
             "DSC (%), mean ± std over test cases (averaged over seeds):", "",
             "| method | WT | TC | ET | average | seeds | s |", "|---|---|---|---|---|---|---|"]
    for row, a in aggs.items():
        lines.append(f"| {row} | " + " | ".join(f"{100 * a[r]['dice_mean']:.2f} ± {100 * a[r]['dice_std']:.2f}"
                                                 for r in REGION_ORDER) + f" | {a['n_seeds']} | {a['seconds']:.0f} |")
    lines += ["", "HD95 (mm), mean ± std over test cases:", "", "| method | WT | TC | ET | average |",
              "|---|---|---|---|---|"]
    for row, a in aggs.items():
        lines.append(f"| {row} | " + " | ".join(f"{a[r]['hd95_mean']:.2f} ± {a[r]['hd95_std']:.2f}"
                                                 for r in REGION_ORDER) + " |")
    shares = gap_shares(results)
    if SOURCE_ONLY in aggs and TARGET_ONLY in aggs:
        lines += ["", "Share of the source-only → target-only gap in average DSC closed:", ""]
        if not shares:
            lines.append("- none to close: target-only is not above source-only")
        for row, closed in shares.items():
            a = aggs[row]
            lines.append(f"- {row}: {100 * closed:.0f} % (average DSC {100 * a['average']['dice_mean']:.2f}"
                         f" ± {100 * a['average']['dice_seed_std']:.2f} across seeds)")
    sel = [r for r in results["runs"] if r.get("snapshots")]
    if sel:
        lines += ["", "Unsupervised checkpoint selection (BiGL: agreement of Φ(x_t) and Φ(x_t→s); the other methods: "
                  "negative entropy; no target labels) "
                  "vs the best snapshot by test labels (average DSC %):", "",
                  "| method | seed | chosen step | chosen | best (oracle) | last |", "|---|---|---|---|---|---|"]
        for r in sel:
            snaps = r["snapshots"]
            chosen = next(s for s in snaps if s["step"] == r["chosen_step"])
            best = max(snaps, key=lambda s: s["test_dice"])
            lines.append(f"| {r['row']} | {r['seed']} | {r['chosen_step']} | {100 * chosen['test_dice']:.2f} | "
                         f"{100 * best['test_dice']:.2f} (step {best['step']}) | {100 * snaps[-1]['test_dice']:.2f} |")
    return "\n".join(lines) + "\n"


def row_seeds(results: dict[str, Any], row: str) -> set[int]:
    """The seeds ``row`` was run on."""
    return {r["seed"] for r in results["runs"] if r["row"] == row}


def seed_rows(results: dict[str, Any], seed: int) -> list[str]:
    """The rows run on ``seed``, in the order they ran."""
    return list(dict.fromkeys(r["row"] for r in results["runs"] if r["seed"] == seed))


def gap_shares(results: dict[str, Any]) -> dict[str, float]:
    """Each row's share of the source-only → target-only gap in average DSC, seeds averaged; {} without both.

    A row run on fewer seeds than the bounds (e.g. an extra row added to seed 0 with ``--resume``) is held
    against the bounds of its own seeds: seeds differ by several points, so mixing them would misstate it.
    """
    def mean(row: str, seeds: set[int]) -> float | None:
        vals = [r["summary"]["average"]["dice_mean"] for r in results["runs"] if r["row"] == row and r["seed"] in seeds]
        return float(np.mean(vals)) if vals else None

    everything = {r["seed"] for r in results["runs"]}
    lo_all, hi_all = mean(SOURCE_ONLY, everything), mean(TARGET_ONLY, everything)
    if lo_all is None or hi_all is None or hi_all <= lo_all:
        return {}
    shares = {}
    for row in dict.fromkeys(r["row"] for r in results["runs"]):
        if row in (SOURCE_ONLY, TARGET_ONLY):
            continue
        seeds = row_seeds(results, row)
        lo, hi = mean(SOURCE_ONLY, seeds), mean(TARGET_ONLY, seeds)
        if lo is not None and hi is not None and hi > lo:
            shares[row] = (mean(row, seeds) - lo) / (hi - lo)
    return shares


def gap_matrix_markdown(paths: list[str | Path]) -> str:
    """The share of the gap each method closes, one column per direction, from ``bigl benchmark`` results files
    (files of the same direction — e.g. seeds run apart — are merged first)."""
    groups: dict[tuple[str, str, str], list[Path]] = {}
    for path in map(Path, paths):
        groups.setdefault(_read_results(path)[1], []).append(path)
    columns = {key: merge_results(group) for key, group in groups.items()}
    shares = {key: gap_shares(res) for key, res in columns.items()}
    rows = list(dict.fromkeys(row for s in shares.values() for row in s))
    heads = [f"{k[1].upper()}→{k[2].upper()} ({len(columns[k]['seeds'])} seed{'s' * (len(columns[k]['seeds']) > 1)})"
             for k in columns]
    lines = ["Share of the source-only → target-only gap in average DSC closed (%):", "",
             "| method | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    def cell(k: tuple, row: str) -> str:
        if row not in shares[k]:
            return "–"
        n = len(row_seeds(columns[k], row))
        return f"{100 * shares[k][row]:.0f}" + (f" ({n} seed{'s' * (n > 1)})" if n < len(columns[k]["seeds"]) else "")

    for row in rows:
        cells = [cell(k, row) for k in columns]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "Source only → target only, average DSC (%): " + "; ".join(
        f"{h}: {_row_dice(columns[k], SOURCE_ONLY)} → {_row_dice(columns[k], TARGET_ONLY)}"
        for h, k in zip(heads, columns))]
    return "\n".join(lines) + "\n"


def _row_dice(results: dict[str, Any], row: str) -> str:
    agg = _aggregate(results["runs"], row)
    return f"{100 * agg['average']['dice_mean']:.1f}" if agg else "–"


def merge_results(paths: list[str | Path]) -> dict[str, Any]:
    """Combine ``results.json`` files of one comparison run in parts (e.g. seeds on different machines).

    They must share data, source and target; a (method, seed) pair may appear
    only once. The merged dict feeds :func:`results_markdown`, which then
    averages each row over all seeds it has.
    """
    if not paths:
        raise BiglError("give at least one results.json to merge")
    merged: dict[str, Any] | None = None
    seen: set[tuple[str, int]] = set()
    for path in map(Path, paths):
        part, key = _read_results(path)
        runs = part["runs"]
        if merged is None:
            merged = {"data": key[0], "source": key[1], "target": key[2], "seeds": [], "runs": [], "parts": []}
        elif key != (merged["data"], merged["source"], merged["target"]):
            raise BiglError(f"{path}: results of {key[1]} → {key[2]} on {key[0]} cannot be merged with "
                            f"{merged['source']} → {merged['target']} on {merged['data']}")
        for run in runs:
            if (run["row"], run["seed"]) in seen:
                raise BiglError(f"{path}: {run['row']!r} seed {run['seed']} appears in more than one file")
            seen.add((run["row"], run["seed"]))
        merged["runs"] += runs
        merged["seeds"] = sorted(set(merged["seeds"]) | set(part.get("seeds", [])))
        merged["parts"].append(str(path))
    return merged


PLANES = ("transverse", "coronal", "sagittal")


def plane_slices(volume: np.ndarray, centre: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """The three orthogonal planes of a (z, y, x) volume through ``centre``; shown with superior/anterior up."""
    z, y, x = centre
    return {"transverse": volume[z], "coronal": volume[:, y, :], "sagittal": volume[:, :, x]}


def make_figure(case: Case, sequence: str, seed_dir: Path, results: dict[str, Any], path: Path, device) -> Path:
    """One test case in three planes through its tumour (the paper's Fig. 3): the target image, the ground truth
    and each method's prediction, one row per plane."""
    image = load_images(case, [sequence])[sequence]
    ref = load_labels(case).data
    tumour = np.argwhere(ref > 0)
    centre = tuple(int(v) for v in (np.median(tumour, axis=0) if len(tumour) else np.asarray(ref.shape) // 2))
    columns = [("image", None), ("ground truth", ref)]
    for row in seed_rows(results, results["seeds"][0]):
        bundle_path = row_bundle_path(seed_dir, row)
        if bundle_path.exists():
            bundle = load_bundle(bundle_path)
            if len(bundle.sequences) == 1:      # the four-sequence upper bound is not drawn on one sequence
                columns.append((row, segment_volume(bundle, image, device=device, with_attention=False).labels))
    images = plane_slices(image.data, centre)
    panels = [(f"{plane}: {title}", label_overlay(images[plane], None if labels is None
                                                   else plane_slices(labels, centre)[plane]))
              for plane in PLANES for title, labels in columns]
    return save_png(tile(panels, columns=len(columns)), path)


def row_bundle_path(seed_dir: str | Path, row: str) -> Path:
    """Where a benchmark run keeps the bundle of ``row`` (a method's label) for the seed of ``seed_dir``."""
    return Path(seed_dir) / f"{_slug(row)}.safetensors"


def _slug(row: str) -> str:
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in row.lower()).strip("_")
