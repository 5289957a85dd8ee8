"""How an adapted bundle's translator renders each tissue, against the same case's real image of the other sequence.

    python benchmarks/translation_tissues.py --model ADAPTED --data DIR --target t2 --source t1 \
        [--direction t2s|s2t] [--figure out.png]

``t2s`` (the default): G_t→s(x_t) against the real x_s; ``s2t``: G_s→t(x_s) — conditioned on the case's labels
when G_s→t is label-conditioned, as in adaptation — against the real x_t. Both images z-scored inside the brain
(bigl.preprocess); per case the mean of the translation / of the real image over the non-tumour brain, edema,
necrosis and enhancing tumour (the labels are read only for this check). The figure: each case's largest tumour
slice as input, its translation and the real image, anterior up.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bigl.adapt import source_to_target
from bigl.checkpoint import load_bundle
from bigl.io import list_cases, load_images, load_labels
from bigl.preprocess import brain_mask, labels_to_classes, normalize
from bigl.render import save_png, tile

TISSUES = ((0, "brain"), (2, "edema"), (1, "necrosis"), (4, "enhancing"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="adapted bundle with a translator (bigl adapt)")
    p.add_argument("--data", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--direction", choices=("t2s", "s2t"), default="t2s")
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--figure", default=None)
    a = p.parse_args()
    bundle = load_bundle(a.model)
    # the generator, what it translates (seq_in) and what its output is compared with (seq_real)
    if a.direction == "t2s":
        g, seq_in, seq_real, name = bundle.translator_t2s, a.target, a.source, "G_t->s"
        translate = lambda t, seg: g(t, (t != 0).float())  # noqa: E731
    else:
        g, seq_in, seq_real, name = bundle.translator_s2t, a.source, a.target, "G_s->t"
        translate = lambda t, seg: source_to_target(g, t, torch.from_numpy(labels_to_classes(seg)))  # noqa: E731
    if g is None:
        raise SystemExit(f"{a.model} has no translator (adapt with --method bigl, translate, cycada or sifa)")
    g.eval()
    print("case: fake / real mean z of " + ", ".join(n for _, n in TISSUES))
    panels = []
    for case in list_cases(a.data)[: a.cases]:
        imgs = load_images(case, (seq_in, seq_real))
        x_in, x_real = (np.asarray(imgs[s].data, np.float32) for s in (seq_in, seq_real))
        seg = np.asarray(load_labels(case).data)
        m = brain_mask(x_in)
        n_in, n_real = normalize(x_in, m), normalize(x_real, brain_mask(x_real))
        with torch.no_grad():
            t = torch.from_numpy(np.ascontiguousarray(n_in[:, None]))           # (z, 1, y, x): axial slices
            f = translate(t, seg)[:, 0].numpy()
        f = (f - f[m].mean()) / (f[m].std() + 1e-6) * m
        row = []
        for lab, _ in TISSUES:
            sel = m & (seg == lab)
            row.append(f"{f[sel].mean():+.2f} / {n_real[sel].mean():+.2f}" if sel.sum() >= 20 else "–")
        print(f"{case.case_id}: " + ", ".join(row))
        if a.figure and len(panels) < 12:
            z = int(np.argmax((seg > 0).sum((1, 2))))
            view = lambda v: v[z][::-1]  # noqa: E731  (bigl.io's (z, y, x): anterior up)
            panels += [(f"{case.case_id} {seq_in}", view(n_in)), (name, view(f)), (f"real {seq_real}", view(n_real))]
    if a.figure:
        save_png(tile(panels, columns=3), a.figure)


if __name__ == "__main__":
    main()
