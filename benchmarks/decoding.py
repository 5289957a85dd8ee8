"""How a model's probabilities become labels: argmax, region thresholds, mirrored test-time augmentation,
component confidence. Mean Dice per region and false-positive ml on healthy cases, per decoding.

    python benchmarks/decoding.py --model M --data DIR [DIR ...] [--modality SEQ]

Each case is segmented twice with single passes (bigl.infer.segment_volume with mirror=False; once on the
volume mirrored left-right), and every decoding is applied to the same probabilities:
- ``argmax``: the library's labels (argmax of the class softmax);
- ``regions``: WT where P(WT) = 1 - P(background) > 0.5, TC inside it where P(necrosis) + P(enhancing) > 0.5,
  ET inside that where P(enhancing) > 0.5 — the nested regions the region Dice trains;
- ``+ mirror``: the same on the mean of the direct and the mirrored pass's probabilities (nnU-Net's mirroring;
  training mirrors left-right only). The library's ``mirror=True`` mirrors each cropped slice window instead
  of the volume, so its network input can sit a few pixels off this one's: labels differ slightly;
- ``argmax, confident``: argmax, dropping whole-tumour components whose highest P(WT) is under 0.95.
Every decoding then drops components under bigl.infer.MIN_LESION_ML, as the library does.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

from bigl.checkpoint import load_bundle
from bigl.infer import MIN_LESION_ML, remove_small_lesions, segment_volume
from bigl.io import list_cases, load_images, load_labels
from bigl.metrics import evaluate_case, region_volumes
from bigl.preprocess import classes_to_labels


def regions(p: np.ndarray) -> np.ndarray:
    """Class indices from nested region thresholds of class probabilities (K, ...) -> (...)."""
    wt, tc, et = 1 - p[0] > 0.5, p[1] + p[3] > 0.5, p[3] > 0.5
    out = np.where(wt, 2, 0)
    out = np.where(wt & tc, 1, out)
    return np.where(wt & tc & et, 3, out).astype(np.uint8)


def argmax(p: np.ndarray) -> np.ndarray:
    return p.argmax(0).astype(np.uint8)      # the first class on ties, as the library's argmax


def confident(p: np.ndarray, floor: float = 0.95) -> np.ndarray:
    classes = argmax(p)
    comps, n = ndimage.label(classes > 0, structure=np.ones((3, 3, 3), bool))
    if not n:
        return classes
    peak = np.concatenate([[1.0], ndimage.maximum(1 - p[0], comps, np.arange(1, n + 1))])
    return np.where(peak[comps] >= floor, classes, 0).astype(np.uint8)


def probabilities(bundle, images: dict, mirror: bool) -> np.ndarray:
    spacing = next(iter(images.values())).spacing
    arrays = {s: np.ascontiguousarray(v.data[..., ::-1] if mirror else v.data) for s, v in images.items()}
    p = segment_volume(bundle, arrays if len(arrays) > 1 else next(iter(arrays.values())), spacing=spacing,
                       sequence=None if len(arrays) > 1 else next(iter(arrays)), device="cpu",
                       with_attention=False, mirror=False).probabilities
    return p[..., ::-1] if mirror else p


DECODINGS = {"argmax": (argmax, False), "regions": (regions, False), "argmax + mirror": (argmax, True),
             "regions + mirror": (regions, True), "argmax, confident": (confident, False)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--modality", default=None, help="single-sequence input (default: the model's sequences)")
    a = p.parse_args()
    bundle = load_bundle(a.model)
    seqs = (a.modality,) if a.modality else tuple(bundle.sequences)
    rows: dict[str, list] = {k: [] for k in DECODINGS}
    for data in a.data:
        for case in list_cases(data):
            images, ref = load_images(case, seqs), load_labels(case)
            direct = probabilities(bundle, images, mirror=False)
            both = 0.5 * (direct + probabilities(bundle, images, mirror=True))
            for name, (decode, mirrored) in DECODINGS.items():
                pred = remove_small_lesions(classes_to_labels(decode(both if mirrored else direct)), ref.spacing,
                                            MIN_LESION_ML)
                scores = evaluate_case(pred, ref.data, ref.spacing)
                healthy = region_volumes(pred, ref.spacing)["WT"] if not ref.data.any() else np.nan
                rows[name].append([scores[r]["dice"] for r in ("WT", "TC", "ET")] + [healthy])
    print(f"{a.model} on {' '.join(a.data)} ({len(rows['argmax'])} cases)")
    print("| decoding | WT | TC | ET | mean | healthy cases' WT ml |\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        r = np.asarray(r)
        d = 100 * r[:, :3].mean(0)
        fp = ", ".join(f"{v:.1f}" for v in r[:, 3][~np.isnan(r[:, 3])]) or "-"
        print(f"| {name} | {d[0]:.1f} | {d[1]:.1f} | {d[2]:.1f} | {d.mean():.1f} | {fp} |")


if __name__ == "__main__":
    main()
