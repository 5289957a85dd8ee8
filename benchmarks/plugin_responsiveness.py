"""How long does the BiGL Segment widget block napari's event loop? A 10 ms Qt timer in a real viewer.

Usage (from the repository root; napari needs an X server, a virtual one is fine):

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/plugin_responsiveness.py \
        [--out results.json] [--adapt-steps 6] [--threads 1]

A QTimer ticks every 10 ms while the widget works; a gap between two ticks is
the time the GUI thread could not react (a stall). For each phase the script
reports the longest gap and the number above 50 ms, from the button press to
the last layer update:

- ``choose image``: the image picked in the widget's list; its result layers
  are made then, hidden and empty, one per event-loop turn (napari_bigl._ahead);
- ``segment (first)``: Segment on a 144x200x168 volume (the "small"
  phantom upsampled 2x), first time: the attention and labels layers made
  ahead are filled and shown;
- ``segment (update)``: Segment again: the layers are updated in place;
- ``uncertainty tick``: the uncertainty layer is added from the stored result;
- ``attention query``: a point placed, then moved 5 times;
- ``adapt (previews)``: Adapt to this modality with the demo model on the first
  sample case's T2 (chosen, and its layers made ahead, before the press), a
  few steps, labels previewed at every step;
- ``napari add_labels (floor)``: napari's own ``add_labels`` of a 2x4x4 array
  and ``add_image`` with given contrast limits, for comparison: the fixed
  cost of adding any layer, which no plugin can avoid.

The first labels layer of a process costs napari a one-time ~0.4 s (imports,
shaders); as in a real session, where the reader has already shown the case's
ground truth, one tiny labels layer is added and removed before measuring.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class Ticks:
    """Gaps between the ticks of a 10 ms QTimer, from :meth:`begin` on.

    Besides the wall-clock gap, the GUI thread's own CPU time between two ticks
    (``time.thread_time``) is kept: on a machine shared with other jobs the wall
    gap also counts the time the GUI thread waited for a core; the CPU gap is
    the work itself, what the wall gap shrinks to on a quiet machine.
    """

    def __init__(self, period_ms: int = 10) -> None:
        from qtpy.QtCore import QTimer

        self.times: list[float] = []
        self.cpu: list[float] = []
        self.timer = QTimer()
        self.timer.timeout.connect(self._tick)
        self.timer.start(period_ms)

    def _tick(self) -> None:
        self.times.append(time.perf_counter())
        self.cpu.append(time.thread_time())

    def begin(self) -> None:
        self.times, self.cpu = [time.perf_counter()], [time.thread_time()]

    def gaps_ms(self) -> np.ndarray:
        return np.diff(self.times) * 1000.0

    def cpu_gaps_ms(self) -> np.ndarray:
        return np.diff(self.cpu) * 1000.0


class StallSampler:
    """``--explain``: while the timer is late (> ``late`` s), sample the GUI thread's Python stack every 2 ms."""

    def __init__(self, ticks: Ticks, late: float = 0.03) -> None:
        import collections
        import threading

        self.ticks, self.late, self.samples = ticks, late, collections.Counter()
        self.inclusive: collections.Counter = collections.Counter()   # function -> samples with it on the stack
        self.n = 0
        self.main = threading.main_thread().ident
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        import traceback

        while not self.stop.wait(0.002):
            times = self.ticks.times
            if times and time.perf_counter() - times[-1] > self.late:
                frame = sys._current_frames().get(self.main)
                if frame is not None:
                    full = traceback.extract_stack(frame)
                    self.samples[tuple(f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}"
                                       for f in full[-12:])] += 1
                    self.n += 1
                    for name in {f"{f.filename.split('site-packages/')[-1]} {f.name}" for f in full}:
                        self.inclusive[name] += 1

    def report(self, n: int = 5) -> None:
        """The most frequent stacks, then the napari/vispy/Qt functions most often on the stack (inclusive)."""
        for stack, count in self.samples.most_common(n):
            print(f"  --- {count} samples ({2 * count} ms)\n" + "\n".join(f"      {line}" for line in stack))
        if self.n:
            print(f"  --- inclusive share of {self.n} samples taken during stalls:")
            for name, count in self.inclusive.most_common(60):
                if name.startswith(("napari/", "vispy/", "superqt/", "napari_bigl")) or "napari_bigl" in name:
                    print(f"      {100 * count / self.n:5.1f} %  {name}")
        self.samples.clear()
        self.inclusive.clear()
        self.n = 0


def pump(app, until, timeout: float = 600.0) -> None:
    t0 = time.perf_counter()
    while not until():
        app.processEvents()
        time.sleep(0.001)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the widget did not finish in time")


def measure(app, ticks: Ticks, name: str, action, until, rows: list, settle: float = 0.3,
            sampler: StallSampler | None = None) -> None:
    ticks.begin()
    t0 = time.perf_counter()
    action()
    pump(app, until)
    wall = time.perf_counter() - t0
    end = time.perf_counter() + settle            # repaints due after the last update count too
    pump(app, lambda: time.perf_counter() > end)
    gaps, cpu = ticks.gaps_ms(), ticks.cpu_gaps_ms()
    rows.append({"phase": name, "wall_s": round(wall, 2), "max_gap_ms": round(float(gaps.max()), 1),
                 "p99_gap_ms": round(float(np.percentile(gaps, 99)), 1), "gaps_over_50ms": int((gaps > 50).sum()),
                 "max_gui_cpu_ms": round(float(cpu.max()), 1), "gui_cpu_over_50ms": int((cpu > 50).sum())})
    print(f"{name:28s} {wall:7.2f} s   max gap {gaps.max():6.1f} ms   p99 {np.percentile(gaps, 99):5.1f} ms   "
          f"> 50 ms: {int((gaps > 50).sum())}   GUI CPU max {cpu.max():6.1f} ms  > 50 ms: {int((cpu > 50).sum())}",
          flush=True)
    if sampler is not None:
        sampler.report()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    parser.add_argument("--adapt-steps", type=int, default=6, help="alignment steps of the adapt phase (0: skip it)")
    parser.add_argument("--explain", action="store_true", help="print the GUI thread's stacks during stalls")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the GUI thread needs a core too)")
    args = parser.parse_args()

    import napari
    import torch
    from bigl.adapt import AdaptConfig, TranslatorTrainConfig
    from bigl.io import list_cases
    from bigl.phantom import make_case

    torch.set_num_threads(args.threads)
    viewer = napari.Viewer(title="responsiveness")
    app = napari.qt.get_qapp()
    viewer.window.resize(1400, 900)
    viewer.layers.remove(viewer.add_labels(np.zeros((2, 4, 4), np.uint8)))   # napari's one-time warm-up
    small = make_case(0, "small").images["t1"]
    big = np.repeat(np.repeat(np.repeat(small, 2, 0), 2, 1), 2, 2)             # (144, 200, 168)
    viewer.add_image(big, name="big t1", contrast_limits=(0.0, float(np.percentile(big, 99.5))))
    viewer.add_image(np.zeros((8, 8, 8), np.float32), name="other t1", contrast_limits=(0, 1))
    _, widget = viewer.window.add_plugin_dock_widget("napari-bigl", "BiGL Segment")
    widget.device_combo.setCurrentText("cpu")
    widget.image_combo.setCurrentText("other t1")
    ahead = getattr(widget, "ahead", None)          # (absent before result layers were made ahead: --compare)
    pending = lambda: ahead is not None and ahead.pending()  # noqa: E731
    pump(app, lambda: not pending())
    for _ in range(50):
        app.processEvents()
        time.sleep(0.01)
    ticks, rows = Ticks(), []
    sampler = StallSampler(ticks) if args.explain else None
    idle = lambda: not widget.is_busy() and not widget.jobs.workers and not pending()  # noqa: E731

    measure(app, ticks, "napari add_labels (floor)", lambda: viewer.add_labels(np.zeros((2, 4, 4), np.uint8)),
            lambda: True, rows, sampler=sampler)
    measure(app, ticks, "napari add_image (floor)",
            lambda: viewer.add_image(np.zeros((2, 4, 4), np.float32), contrast_limits=(0, 1)), lambda: True, rows, sampler=sampler)
    for layer in list(viewer.layers)[-2:]:
        viewer.layers.remove(layer)
    measure(app, ticks, "choose image", lambda: widget.image_combo.setCurrentText("big t1"), idle, rows,
            sampler=sampler)
    measure(app, ticks, "segment (first)", widget.segment, idle, rows, sampler=sampler)
    measure(app, ticks, "segment (update)", widget.segment, idle, rows, sampler=sampler)
    measure(app, ticks, "uncertainty tick", lambda: widget.segment_panel.uncertainty_check.setChecked(True),
            lambda: True, rows, sampler=sampler)

    labels = viewer.layers["big t1 BiGL labels"].data
    z = int(np.argmax((big > 0).sum(axis=(1, 2))))
    ys, xs = np.nonzero(big[z])

    def query() -> None:
        widget.attention_panel.query_check.setChecked(True)
        points = viewer.layers["attention query"]
        points.add(np.array([z, ys.mean(), xs.mean()]))
        for k in range(5):
            pump(app, idle)
            points.data = np.array([[z, ys.min() + 10 + 5 * k, xs.min() + 10 + 5 * k]], float)

    measure(app, ticks, "attention query", query, idle, rows, sampler=sampler)
    widget.attention_panel.query_check.setChecked(False)
    assert labels.shape == big.shape

    if args.adapt_steps > 0:
        case = list_cases(ROOT / "sample_data")[0]
        viewer.open(str(case.path), plugin="napari-bigl")
        widget.image_combo.setCurrentText(f"{case.case_id} t2")
        pump(app, idle)
        widget.adapt_panel.preview_spin.setValue(1)
        widget.adapt_panel.adapt_config = lambda: AdaptConfig(
            steps=args.adapt_steps, batch_size=4, checkpoint_every=max(1, args.adapt_steps // 2),
            translator=TranslatorTrainConfig(steps=4, batch_size=4))
        pump(app, lambda: True)
        measure(app, ticks, "adapt (previews)", widget.adapt, idle, rows, sampler=sampler)

    print(f"napari {napari.__version__}, torch threads {args.threads}, Python {sys.version.split()[0]}")
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    viewer.close()


if __name__ == "__main__":
    main()
