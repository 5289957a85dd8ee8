"""Dataset evaluation: per-case and summary Dice / HD95 for WT, TC, ET, printed like the paper's tables."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from bigl._fs import atomic_path, check_output
from bigl.checkpoint import Bundle
from bigl.errors import BiglError
from bigl.infer import check_sequence, segment_volume
from bigl.io import Case, list_cases, load_images, load_labels
from bigl.metrics import evaluate_case, summarize
from bigl.progress import CancelFn, ProgressFn, Reporter

REGION_ORDER = ("WT", "TC", "ET", "average")


def evaluate_dataset(bundle: Bundle, data: str | os.PathLike | list[Case], sequence: str | None = None, *,
                     device: str | torch.device = "auto", progress: ProgressFn | None = None,
                     cancel: CancelFn | None = None, cavity: str = "error", mirror: bool | None = None
                     ) -> dict[str, Any]:
    """Segment ``sequence`` of every labelled case and score it against the labels.

    ``sequence`` None: the bundle's own sequence(s) — every one of them for a
    multi-sequence bundle.

    ``mirror``: as :func:`bigl.infer.segment_volume`'s (default: mirror a single network, not an ensemble).
    ``cavity``: what a BraTS 2024 resection-cavity label becomes (see :func:`bigl.io.load_labels`).
    Returns ``{"sequence", "model", "per_case": [{"case", "WT": {...}, ...}], "summary": summarize(...)}``
    and the :func:`tumour_breakdown` of the cases (``"tumour_cases"``, ``"no_tumour_cases"``);
    Dice values are fractions in [0, 1], HD95 in mm.
    """
    cases = data if isinstance(data, list) else list_cases(data)
    unlabelled = [c.case_id for c in cases if not c.has_labels]
    if unlabelled:
        raise BiglError(f"{data}: evaluation needs a seg file in every case; {len(unlabelled)} case(s) have none "
                        f"({', '.join(unlabelled[:3])}); add their labels or evaluate a folder of labelled cases")
    sequences = tuple(bundle.sequences) if sequence is None else (sequence,)
    check_sequence(bundle, sequence)
    report = Reporter("evaluate", len(cases), progress, cancel)
    per_case = []
    for i, case in enumerate(cases):
        report(i)
        images = load_images(case, sequences)
        image = images[sequences[0]]
        labels = load_labels(case, cavity=cavity)   # checked against every image's grid, this one included
        seg = segment_volume(bundle, images, device=device, with_attention=False, with_probabilities=False,
                             mirror=mirror)
        if seg.labels.shape != labels.data.shape:   # only a bug can get here; say which case anyway
            raise BiglError(f"{image.path}: prediction {seg.labels.shape} and labels {labels.path} "
                            f"{labels.data.shape} differ in shape; put the case's images and seg on one grid")
        scores = evaluate_case(seg.labels, labels.data, image.spacing)
        per_case.append({"case": case.case_id} | scores)
    report(len(cases))
    return {"sequence": "+".join(sequences), "model": str(bundle.path) if bundle.path else None,
            "per_case": per_case, "summary": summarize(_scores(per_case))} | tumour_breakdown(per_case)


def _scores(per_case: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.items() if k != "case"} for c in per_case]


def tumour_breakdown(per_case: list[dict[str, Any]]) -> dict[str, Any]:
    """The scores split by whether the reference has a tumour.

    A case without tumour scores Dice 1 in every region when nothing is found and 0 for any finding
    (BraTS rule), so one such case moves a small set's mean by 100 / n points on a speck. Returns
    ``{"tumour_cases": summarize(...) of the cases with a tumour (None if there are none),
    "no_tumour_cases": [{"case", "wt_found_ml"}, ...]}`` (whole tumour found on each case without one).
    """
    tumour = [c for c in per_case if c["WT"]["ref_ml"] > 0]
    return {"tumour_cases": summarize(_scores(tumour)) if tumour else None,
            "no_tumour_cases": [{"case": c["case"], "wt_found_ml": c["WT"]["pred_ml"]}
                                for c in per_case if c["WT"]["ref_ml"] == 0]}


def format_breakdown(result: dict[str, Any]) -> str:
    """Lines for a set with cases without tumour: the mean Dice over the tumour cases and what was found
    on the others; empty when every case has a tumour."""
    healthy = result["no_tumour_cases"]
    if not healthy:
        return ""
    lines = []
    if result["tumour_cases"] is not None:
        n = len(result["per_case"]) - len(healthy)
        dsc = " / ".join(f"{100 * result['tumour_cases'][r]['dice_mean']:.2f}" for r in REGION_ORDER)
        lines.append(f"DSC (%) WT / TC / ET / average over the {n} case(s) with a tumour: {dsc}")
    found = ", ".join(f"{h['case']} {h['wt_found_ml']:.1f} ml" for h in healthy)
    lines.append(f"whole tumour found on the {len(healthy)} case(s) without one (Dice 100 if none, else 0): {found}")
    return "\n".join(lines) + "\n"


def format_table(summary: dict[str, Any], title: str = "") -> str:
    """Markdown table: DSC (%) and HD95 (mm) as mean ± std for WT, TC, ET and their average."""
    head = "| metric | " + " | ".join(REGION_ORDER) + " |\n|---|" + "---|" * len(REGION_ORDER) + "\n"
    dsc = " | ".join(f"{100 * summary[r]['dice_mean']:.2f} ± {100 * summary[r]['dice_std']:.2f}" for r in REGION_ORDER)
    hd = " | ".join(f"{summary[r]['hd95_mean']:.2f} ± {summary[r]['hd95_std']:.2f}" for r in REGION_ORDER)
    return (f"{title}\n\n" if title else "") + head + f"| DSC (%) | {dsc} |\n| HD95 (mm) | {hd} |\n"


def write_json(result: dict[str, Any], path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write results as JSON atomically; refuse to replace an existing file unless ``overwrite``."""
    path = check_output(path, suffix=".json", overwrite=overwrite, what="results file")
    text = json.dumps(result, indent=2, default=float)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, ".json") as tmp:
        Path(tmp).write_text(text)
    return path
