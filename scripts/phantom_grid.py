"""Figure for docs/phantom.md: N phantom cases x 4 sequences (axial slice through the largest tumour area) + labels.

    python scripts/phantom_grid.py [--seed 7] [--n 12] [--preset small] [--random-contrast 0.0] [--out docs/phantom_grid.png]
"""

from __future__ import annotations

import argparse
import dataclasses


from bigl.phantom import SEQUENCES, PhantomConfig, case_seed, make_case
from bigl.render import label_overlay, save_png, tile


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--preset", default="small")
    p.add_argument("--random-contrast", type=float, default=0.0)
    p.add_argument("--out", default="docs/phantom_grid.png")
    a = p.parse_args()
    cfg = dataclasses.replace(PhantomConfig.preset(a.preset), p_random_contrast=a.random_contrast)
    panels = []
    for i in range(a.n):
        case = make_case(case_seed(a.seed, i), cfg)
        area = (case.seg > 0).sum(axis=(1, 2))
        k = int(area.argmax()) if area.any() else int((case.tissues > 0).sum(axis=(1, 2)).argmax())
        info = case.info
        tag = f"{i}: {info['n_lesions']}x {info['core_kind'][:5]} {info['wt_ml']:.0f}ml"
        if info["random_contrast"]:
            tag += " rnd"
        for s in SEQUENCES:
            panels.append((f"{tag if s == 't1' else s}", label_overlay(case.images[s][k], None)))
        panels.append(("labels", label_overlay(case.images["flair"][k], case.seg[k])))
    save_png(tile(panels, scale=1, columns=2 * (len(SEQUENCES) + 1)), a.out)
    print(a.out)


if __name__ == "__main__":
    main()
