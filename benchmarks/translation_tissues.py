"""How an adapted bundle's translator G_t→s renders each tissue, against the same case's real source image.

    python benchmarks/translation_tissues.py --model ADAPTED --data DIR --target t2 --source t1 [--figure out.png]

Both images z-scored inside the brain (bigl.preprocess); per case the mean of G_t→s(x_t) / of the real x_s over
the non-tumour brain, edema, necrosis and enhancing tumour (the labels are read only for this check). The figure:
each case's largest tumour slice as target, G_t→s(target) and real source, anterior up.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bigl.checkpoint import load_bundle
from bigl.io import list_cases, load_images, load_labels
from bigl.preprocess import brain_mask, normalize
from bigl.render import save_png, tile

TISSUES = ((0, "brain"), (2, "edema"), (1, "necrosis"), (4, "enhancing"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="adapted bundle with a translator (bigl adapt)")
    p.add_argument("--data", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--figure", default=None)
    a = p.parse_args()
    g = load_bundle(a.model).translator_t2s
    if g is None:
        raise SystemExit(f"{a.model} has no translator (adapt with --method bigl, translate, cycada or sifa)")
    g.eval()
    print("case: fake / real mean z of " + ", ".join(n for _, n in TISSUES))
    panels = []
    for case in list_cases(a.data)[: a.cases]:
        imgs = load_images(case, (a.target, a.source))
        xt, xs = (np.asarray(imgs[s].data, np.float32) for s in (a.target, a.source))
        seg = np.asarray(load_labels(case).data)
        m = brain_mask(xt)
        nt, ns = normalize(xt, m), normalize(xs, brain_mask(xs))
        with torch.no_grad():
            t = torch.from_numpy(np.ascontiguousarray(nt[:, None]))           # (z, 1, y, x): axial slices
            f = g(t, (t != 0).float())[:, 0].numpy()
        f = (f - f[m].mean()) / (f[m].std() + 1e-6) * m
        row = []
        for lab, _ in TISSUES:
            sel = m & (seg == lab)
            row.append(f"{f[sel].mean():+.2f} / {ns[sel].mean():+.2f}" if sel.sum() >= 20 else "–")
        print(f"{case.case_id}: " + ", ".join(row))
        if a.figure and len(panels) < 12:
            z = int(np.argmax((seg > 0).sum((1, 2))))
            view = lambda v: v[z][::-1]  # noqa: E731  (bigl.io's (z, y, x): anterior up)
            panels += [(f"{case.case_id} {a.target}", view(nt)), ("G_t->s", view(f)), (f"real {a.source}", view(ns))]
    if a.figure:
        save_png(tile(panels, columns=3), a.figure)


if __name__ == "__main__":
    main()
