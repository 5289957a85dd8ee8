"""Which small-component threshold to drop from predictions: mean Dice per region and false-positive ml on healthy cases.

    python benchmarks/min_lesion.py --model M --data DIR [DIR ...] [--thresholds 0 0.1 0.2 0.5 1]

Each case is segmented once (bigl.infer.segment_volume with min_lesion_ml=0); every threshold is then applied
to the same labels with bigl.infer.remove_small_lesions.
"""

from __future__ import annotations

import argparse

import numpy as np

from bigl.checkpoint import load_bundle
from bigl.infer import remove_small_lesions, segment_volume
from bigl.io import list_cases, load_images, load_labels
from bigl.metrics import evaluate_case, region_volumes


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--modality", default=None, help="single-sequence input (default: the model's sequences)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0, 0.1, 0.2, 0.5, 1.0])
    a = p.parse_args()
    bundle = load_bundle(a.model)
    seqs = (a.modality,) if a.modality else tuple(bundle.sequences)
    for data in a.data:
        rows = {t: [] for t in a.thresholds}
        for case in list_cases(data):
            images = load_images(case, seqs)
            ref = load_labels(case)
            labels = segment_volume(bundle, images, device="cpu", with_attention=False, min_lesion_ml=0).labels
            for t in a.thresholds:
                pred = remove_small_lesions(labels, ref.spacing, t)
                scores = evaluate_case(pred, ref.data, ref.spacing)
                healthy = not ref.data.any()
                rows[t].append([scores[r]["dice"] for r in ("WT", "TC", "ET")]
                               + [region_volumes(pred, ref.spacing)["WT"] if healthy else np.nan])
        for t, r in rows.items():
            r = np.asarray(r)
            fp = r[:, 3][~np.isnan(r[:, 3])]
            print(f"{data} min {t:.1f} ml: Dice WT/TC/ET {100 * r[:, 0].mean():.1f}/{100 * r[:, 1].mean():.1f}/"
                  f"{100 * r[:, 2].mean():.1f} % ({len(r)} cases); healthy cases' WT ml: "
                  f"{', '.join(f'{v:.2f}' for v in fp) or '-'}")


if __name__ == "__main__":
    main()
