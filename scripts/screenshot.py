"""Render the plugin's pictures in docs/: 2D overlay with an attention query, uncertainty, 3D view, adaptation.

Usage (from the repository root; napari needs an X server, a virtual one is fine):

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot.py \
        [--case sample_data/Phantom_0_000] [--model BUNDLE] [--out docs/napari_screenshot.png] [--adapt-steps 40]

Writes ``--out`` (the 2D overlay) and, beside it, ``napari_uncertainty.png``,
``napari_3d.png`` and (unless ``--adapt-steps 0``) ``napari_adapt.png``.

What it does, as a user would: opens the case folder with the napari-bigl
reader, docks "BiGL Segment" from the plugin manifest, segments the T1 series
with the model, turns on the attention query with a point in the tumour, and
shows the axial slice with the most predicted tumour, anterior up. The ground
truth "seg" layer is hidden so the overlay is the model's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _wait(app, done, timeout: float = 300.0) -> None:  # noqa: D401
    """Run the Qt event loop until ``done()`` (the widget's work runs in worker threads)."""
    t0 = time.perf_counter()
    while not done():
        app.processEvents()
        time.sleep(0.01)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the widget did not finish in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, default=None, help="case folder (default: the first in sample_data/)")
    parser.add_argument("--model", type=Path, default=None, help="model bundle (default: the demo T1 model)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "napari_screenshot.png")
    parser.add_argument("--size", type=int, nargs=2, default=(1400, 900), metavar=("W", "H"))
    parser.add_argument("--adapt-steps", type=int, default=40,
                        help="alignment and translator steps of the adaptation picture (0: skip it)")
    args = parser.parse_args()

    import napari
    import torch
    from bigl.io import list_cases

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    case = args.case or list_cases(ROOT / "sample_data")[0].path
    viewer = napari.Viewer(title="napari-bigl")
    app = napari.qt.get_qapp()
    viewer.window.resize(*args.size)
    layers = viewer.open(str(case), plugin="napari-bigl")
    case_id = layers[0].name.rsplit(" ", 1)[0]
    viewer.layers[f"{case_id} seg"].visible = False          # show the model's labels, not the ground truth
    _, widget = viewer.window.add_plugin_dock_widget("napari-bigl", "BiGL Segment")
    widget.image_combo.setCurrentText(f"{case_id} t1")
    if args.model is not None:
        widget.model_edit.setText(str(args.model))

    widget.segment()
    _wait(app, lambda: not widget.is_busy())
    labels = viewer.layers[f"{case_id} t1 BiGL labels"]
    tumour = labels.data > 0
    if not tumour.any():
        raise SystemExit("the model found no tumour in this case; nothing to show")
    z = int(np.argmax(tumour.sum(axis=(1, 2))))
    ys, xs = np.nonzero(tumour[z])
    viewer.dims.set_current_step(0, z)

    widget.attention_panel.query_check.setChecked(True)                      # where does the network look for this voxel?
    viewer.layers[viewer.layers.index("attention query")].add([z, float(np.median(ys)), float(np.median(xs))])
    _wait(app, lambda: not widget.jobs.workers)
    viewer.layers.selection.active = labels
    # Additive heat maps vanish on bright tissue: show the anatomy mid-grey, as a reader would to inspect attention.
    t1 = viewer.layers[f"{case_id} t1"]
    t1.contrast_limits = (t1.contrast_limits[0], 2.0 * t1.contrast_limits[1])

    viewer.scene.camera.orientation2d = ("up", "right")      # axis 1 runs posterior -> anterior: anterior up
    viewer.dims.axis_labels = ("z", "y", "x")                # bigl.io's axis order (axial slices along z)
    viewer.reset_view()
    shoot(app, viewer, args.out, f"case {case_id}, slice {z}, {widget.segment_panel.volumes_label.text()}")

    widget.attention_panel.query_check.setChecked(False)
    viewer.layers[f"{case_id} t1 attention"].visible = False
    widget.segment_panel.uncertainty_check.setChecked(True)                # where is the model unsure?
    viewer.layers.selection.active = viewer.layers[f"{case_id} t1 uncertainty"]
    shoot(app, viewer, args.out.with_name("napari_uncertainty.png"), "uncertainty layer")
    widget.segment_panel.uncertainty_check.setChecked(False)
    viewer.layers[f"{case_id} t1 attention"].visible = True

    widget.show_3d()                                                       # labels with the image in 3D
    viewer.camera.angles = (-20.0, 35.0, 125.0)
    viewer.camera.zoom *= 1.3
    shoot(app, viewer, args.out.with_name("napari_3d.png"), "3D view")
    widget.show_3d(False)
    viewer.reset_view()

    if args.adapt_steps > 0:                                               # the T1 model adapted to the T2 series
        from bigl.adapt import AdaptConfig, TranslatorTrainConfig

        viewer.layers[f"{case_id} t1"].visible = False
        viewer.layers[f"{case_id} t2"].visible = True
        widget.image_combo.setCurrentText(f"{case_id} t2")
        widget.adapt_panel.adapt_config = lambda: AdaptConfig(
            steps=args.adapt_steps, translator=TranslatorTrainConfig(steps=args.adapt_steps))
        widget.adapt()
        _wait(app, lambda: not widget.is_busy(), timeout=3600)
        for name in (f"{case_id} t2 attention", f"{case_id} t1 BiGL labels", f"{case_id} t1 attention"):
            viewer.layers[name].visible = False
        translated = viewer.layers[f"{case_id} t2 x_t→s"]
        viewer.layers.selection.active = translated
        brain = translated.data[translated.data != 0]
        print("x_t→s percentiles 0/1/50/99/100:", np.percentile(brain, [0, 1, 50, 99, 100]).round(2),
              "window", tuple(round(float(v), 2) for v in translated.contrast_limits))
        viewer.dims.set_current_step(0, z)
        shoot(app, viewer, args.out.with_name("napari_adapt.png"),
              f"adapted ({args.adapt_steps} + {args.adapt_steps} steps), {widget.segment_panel.volumes_label.text()}")
    viewer.close()


def shoot(app, viewer, out: Path, what: str) -> None:
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"wrote {out} ({what})")


if __name__ == "__main__":
    main()
