"""The "BiGL Segment" dock widget: segment, inspect attention, adapt to the open sequence.

Each button is one call into :mod:`bigl`, run in a napari worker thread so the
viewer stays responsive, with a progress bar (here and in napari's activity
dock) and a Cancel button that sets the call's ``cancel`` flag:

- **Segment** -> :func:`bigl.infer.segment_volume`: "<image> BiGL labels" (BraTS
  colours, on the image's file grid, so File > Save Selected Layers writes it
  back there), "<image> attention" (heat map) and the WT/TC/ET volumes.
- **query attention** -> :func:`bigl.infer.attention_query` for the point
  placed or moved in the "attention query" points layer: the attention layer's
  slice shows where the network looks for that voxel. Only the newest point is
  computed; stale requests are dropped.
- **Adapt to this modality** -> :func:`napari_bigl._controller.adapt_to_image`
  (:func:`bigl.adapt.adapt`, no labels of the open series), previewing the
  labels every N steps. The adapted model then becomes the widget's model, the
  translated image x_t→s is shown, and **Save adapted model…** writes it
  (never silently replacing a file). The source model is never modified.

Errors become napari notifications, never tracebacks or a frozen viewer.
Qt-free logic lives in :mod:`napari_bigl._controller`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from bigl.adapt import AdaptConfig, TranslatorTrainConfig
from bigl.checkpoint import DEMO_BUNDLE, Bundle, load_bundle, read_document, save_bundle
from bigl.errors import BiglError
from bigl.infer import Segmentation, attention_query, segment_volume
from bigl.io import SEQUENCES, Volume
from bigl.progress import Cancelled, Progress
from napari.layers import Image, Labels, Layer
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                            QLineEdit, QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from napari_bigl import _controller as ctl

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

_LAYER_TYPES = {"image": Image, "labels": Labels}


class _Signals(QObject):
    """Carries worker-thread callbacks into the GUI thread (queued: this object lives there)."""

    progress = Signal(object)     # bigl.progress.Progress
    preview = Signal(object)      # (image layer, step, labels)


@dataclass
class _Job:
    name: str
    cancel: ctl.CancelFlag = field(default_factory=ctl.CancelFlag)
    bar: Any = None                       # napari progress bar (activity dock)
    worker_done: bool = False
    steps: Iterator[None] | None = None   # GUI-thread steps still to run after the worker returned


@dataclass
class _Result:
    """What the last segmentation ran on; the attention query reuses it."""

    image: Image
    volume: Volume
    bundle: Bundle
    attention: np.ndarray                 # (z, y, x) summary


def _guarded(action: str) -> Callable:
    """Make a slot report any exception as a notification instead of breaking the viewer."""
    def deco(method: Callable) -> Callable:
        @functools.wraps(method)
        def wrapper(self: SegmentWidget, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
                self._report(exc, action)
                return None
        return wrapper
    return deco


class SegmentWidget(QWidget):
    """Dock widget: image, sequence, model, device -> Segment / query attention / Adapt / Save."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._signals = _Signals(self)
        self._signals.progress.connect(self._on_progress)
        self._signals.preview.connect(self._on_preview)
        self._job: _Job | None = None
        self._cached: tuple[Any, Bundle] | None = None   # (file key, bundle) of the model file
        self._adapted: Bundle | None = None              # the adapted model; the current one when set
        self._result: _Result | None = None
        self._queries = ctl.LatestOnly()
        self._query_layer: Layer | None = None
        self._query_zyx: tuple[int, int, int] | None = None
        self._query_view: ctl.QueryView | None = None
        self._workers: set = set()                       # running workers, referenced until finished
        self._flags: set[ctl.CancelFlag] = set()         # cancel flags of running jobs
        self._build()
        self.reset_choices()
        # closing the dock stops running work at its next step
        self.destroyed.connect(functools.partial(_cancel_all, self._flags))

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.image_combo = QComboBox()
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.sequence_combo = QComboBox()
        self.sequence_combo.addItems(["", *SEQUENCES])
        self.sequence_combo.setToolTip("MR sequence of the image (guessed from its name; correct it if wrong)")
        self.model_edit = QLineEdit(str(DEMO_BUNDLE))
        self.model_edit.setToolTip("model bundle (*.safetensors); default: the demo T1 model")
        self.model_edit.textEdited.connect(self._on_model_edited)
        self.model_edit.editingFinished.connect(self._update_model_info)
        self.model_info = QLabel(wordWrap=True)
        self.device_combo = QComboBox()
        self.device_combo.addItems(ctl.DEVICES)
        self.device_combo.currentTextChanged.connect(self._update_device_note)
        self.device_note = QLabel(wordWrap=True)
        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("sequence", self.sequence_combo)
        form.addRow("model", _row(self.model_edit, _button("…", self._browse_model, "choose a model bundle")))
        form.addRow("", self.model_info)
        form.addRow("device", self.device_combo)
        form.addRow("", self.device_note)

        self.segment_button = _button("Segment", lambda: self.segment(), "segment the image with the model")
        self.cancel_button = _button("Cancel", lambda: self.cancel(), "stop the running segmentation or adaptation")
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar(format="idle", textVisible=True)
        self.volumes_label = QLabel("WT –   TC –   ET –")
        self.query_check = QCheckBox("query attention at a point")
        self.query_check.setToolTip("click to place a point, drag it: the attention layer shows where the network "
                                    "looks when it labels that voxel")
        self.query_check.toggled.connect(self._toggle_query)

        self.source_edit = QLineEdit(str(ctl.default_source_dir()))
        self.source_edit.setToolTip("labelled cases (BraTS layout) of the sequence the model was trained on")
        self.steps_spin = _spin(1, ctl.ADAPT_STEPS, "alignment steps (stage 2)")
        self.translator_spin = _spin(0, ctl.TRANSLATOR_STEPS, "translator steps (stage 1)")
        self.preview_spin = _spin(1, ctl.PREVIEW_EVERY, "update the labels every N alignment steps")
        self.adapt_button = _button("Adapt to this modality", lambda: self.adapt(),
                                    "adapt the model to the image's sequence, without labels (BiGL)")
        self.save_button = _button("Save adapted model…", lambda: self.save_adapted(),
                                   "write the adapted model to a .safetensors file")
        self.save_button.setEnabled(False)
        adapt_form = QFormLayout()
        adapt_form.addRow("source data", _row(self.source_edit, _button("…", self._browse_source,
                                                                         "choose the labelled source cases")))
        adapt_form.addRow("alignment steps", self.steps_spin)
        adapt_form.addRow("translator steps", self.translator_spin)
        adapt_form.addRow("preview every", self.preview_spin)
        adapt_box = QGroupBox("Adapt to this modality (BiGL, no labels needed)")
        box = QVBoxLayout(adapt_box)
        box.addLayout(adapt_form)
        box.addWidget(self.adapt_button)
        box.addWidget(self.save_button)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(_row(self.segment_button, self.cancel_button))
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.volumes_label)
        layout.addWidget(self.query_check)
        layout.addWidget(adapt_box)
        layout.addStretch(1)
        self._update_device_note()
        self._update_model_info()

    # ------------------------------------------------------------------ inputs
    def reset_choices(self, *_: Any) -> None:
        """Refill the image list from the viewer (napari calls this whenever the layers change)."""
        current = self.image_combo.currentText()
        names = [lyr.name for lyr in self.viewer.layers
                 if isinstance(lyr, Image) and ctl.ROLE_KEY not in (lyr.metadata or {})]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        if self.image_combo.currentText() != current:
            self._on_image_changed()
        if self._query_layer is not None and self._query_layer not in self.viewer.layers:
            self.query_check.setChecked(False)     # the user deleted the query points: query mode off

    def image_layer(self) -> Image | None:
        return self._layer(self.image_combo.currentText())

    def _on_image_changed(self, *_: Any) -> None:
        self.sequence_combo.setCurrentText(ctl.guess_sequence(self.image_layer()) or "")

    def _inputs(self) -> tuple[Image, Volume, str]:
        layer = self.image_layer()
        volume = ctl.image_input(layer)
        return layer, volume, ctl.require_sequence(self.sequence_combo.currentText() or None, layer.name)

    def _update_device_note(self, *_: Any) -> None:
        self.device_note.setText(ctl.device_note(self.device_combo.currentText()))

    def _on_model_edited(self, *_: Any) -> None:
        if self._adapted is not None and self._adapted.path is None:
            show_warning("The unsaved adapted model is no longer used: the model file you chose replaces it.")
        self._adapted = None
        self.save_button.setEnabled(False)

    def _update_model_info(self) -> None:
        if self._adapted is not None:
            b = self._adapted
            where = f"saved as {b.path.name}" if b.path is not None else "in memory, not saved"
            self.model_info.setText(f"adapted {b.source_sequence} → {', '.join(b.sequences)} ({where})")
            return
        try:
            doc = read_document(self._model_path())
            self.model_info.setText(f"trained on {', '.join(doc.get('sequences', []))}")
        except BiglError:
            self.model_info.setText("⚠ not a readable model bundle")

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a BiGL model bundle", str(Path(self._model_path()).parent),
                                              "BiGL model bundle (*.safetensors)")
        if path:
            self.model_edit.setText(path)
            self._on_model_edited()
            self._update_model_info()

    def _browse_source(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Labelled source cases", self.source_edit.text())
        if path:
            self.source_edit.setText(path)

    def adapt_config(self) -> AdaptConfig:
        """The adaptation settings from the widget's fields (bigl's defaults otherwise)."""
        return AdaptConfig(steps=self.steps_spin.value(),
                           translator=TranslatorTrainConfig(steps=self.translator_spin.value()))

    # ------------------------------------------------------------------ model
    def _model_path(self) -> str:
        return self.model_edit.text().strip() or str(DEMO_BUNDLE)

    def current_bundle(self) -> Bundle | None:
        """The model the next action uses, if in memory: the adapted one, else the loaded model file."""
        if self._adapted is not None:
            return self._adapted
        if self._cached is not None and self._cached[0] == ctl.file_key(self._model_path()):
            return self._cached[1]
        return None

    def _with_bundle(self, action: str, then: Callable[[Bundle], None]) -> None:
        """Call ``then(bundle)`` now, or once the model file is loaded (in a worker); errors are notifications."""
        def call(bundle: Bundle) -> None:
            try:
                then(bundle)
            except Exception as exc:  # noqa: BLE001
                self._report(exc, action)

        bundle = self.current_bundle()
        if bundle is not None:
            call(bundle)
            return
        key = ctl.file_key(self._model_path())

        def loaded(b: Bundle) -> None:
            self._cached = (key, b)
            call(b)

        self._start("load model", lambda cancel: load_bundle(key[0]), loaded, progress_bar=False)

    # ------------------------------------------------------------------ segment
    @_guarded("Segment")
    def segment(self) -> None:
        """Segment the selected image with the current model (in a worker thread)."""
        if self._job is not None:
            return
        layer, volume, sequence = self._inputs()
        device = self.device_combo.currentText()

        def run(bundle: Bundle) -> None:
            for message in ctl.sequence_warnings(bundle, sequence):   # here: a notification every time
                show_warning(message)

            def work(cancel: ctl.CancelFlag) -> Segmentation:
                # no sequence= here: the mismatch was checked (and shown) above, in the GUI thread
                return segment_volume(bundle, volume, device=device, progress=self._signals.progress.emit,
                                      cancel=cancel)

            self._start("segment", work, functools.partial(self._show_segmentation, layer, volume, bundle))

        self._with_bundle("Segment", run)

    def _show_segmentation(self, image: Image, volume: Volume, bundle: Bundle, seg: Segmentation) -> Iterator[None]:
        """Put results on screen, one layer per event-loop turn (napari needs ~0.1 s to add a large layer)."""
        self._put_layer(ctl.attention_layer(image, seg.attention))
        yield
        self._put_layer(ctl.labels_layer(image, seg.labels))
        self._result = _Result(image, volume, bundle, seg.attention)
        self.volumes_label.setText(ctl.format_volumes(seg.volumes_ml))
        if self._query_view is not None:       # query mode stays on: restart it on the new summary
            self._query_view, self._query_zyx = ctl.QueryView(seg.attention), None
            self._on_query_points()

    def _put_layer(self, layer_data: ctl.LayerDataTuple) -> Layer:
        """Add a result layer, or update the one of that name (keeping the user's display settings)."""
        data, kwargs, kind = layer_data
        layer = self._layer(kwargs["name"])
        if layer is None or not isinstance(layer, _LAYER_TYPES[kind]):
            return self.viewer.add_layer(Layer.create(data, kwargs, kind))
        layer.data = data
        layer.metadata.update(kwargs.get("metadata", {}))
        if "contrast_limits" in kwargs:
            layer.contrast_limits = kwargs["contrast_limits"]
        return layer

    def _layer(self, name: str) -> Layer | None:
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _attention(self) -> Layer | None:
        return self._result and self._layer(ctl.attention_name(self._result.image.name))

    # ------------------------------------------------------------------ attention query
    @_guarded("Attention query")
    def _toggle_query(self, on: bool) -> None:
        if on:
            if self._attention() is None:
                self.query_check.setChecked(False)
                raise BiglError("segment the image first: the attention query needs its attention layer")
            image = self._result.image
            pts = self.viewer.add_points(ndim=3, name=ctl.QUERY_LAYER, scale=image.scale, translate=image.translate,
                                         size=3, face_color="cyan", border_color="white",
                                         metadata={ctl.ROLE_KEY: "query"})
            pts.mode = "add"
            pts.events.data.connect(self._on_query_points)       # placed, moved by code, drag released
            pts.events.set_data.connect(self._on_query_points)   # redrawn while dragged
            self._query_layer, self._query_zyx = pts, None
            self._query_view = ctl.QueryView(self._result.attention)
            return
        self._queries.reset()
        pts, self._query_layer, self._query_view = self._query_layer, None, None
        if pts is not None and pts in self.viewer.layers:
            self.viewer.layers.remove(pts)
        att = self._attention()
        if att is not None:
            att.data = self._result.attention
            att.contrast_limits = ctl.attention_limits(self._result.attention)

    @_guarded("Attention query")
    def _on_query_points(self, event: Any = None) -> None:
        pts = self._query_layer
        if pts is None or self._result is None or len(pts.data) == 0:
            return
        if getattr(event, "action", None) in ("adding", "changing", "removing"):
            return  # sent before the change
        indices = getattr(event, "data_indices", None) or tuple(sorted(pts.selected_data)) or (-1,)
        zyx = ctl.point_voxel(pts, indices[-1], self._result.image, self._result.attention.shape)
        if zyx is None or zyx == self._query_zyx:
            return  # outside the volume, or a redraw without a move
        self._query_zyx = zyx
        request = self._queries.submit(zyx)
        if request is not None:
            self._start_query(request)

    def _start_query(self, request: ctl.QueryRequest) -> None:
        res = self._result
        worker = create_worker(attention_query, res.bundle, res.volume, *request.zyx,
                               device=self.device_combo.currentText(), _start_thread=False,
                               _connect={"returned": functools.partial(self._query_returned, request),
                                         "errored": functools.partial(self._report, action="Attention query"),
                                         "finished": self._query_finished})
        self._keep(worker)

    def _query_returned(self, request: ctl.QueryRequest, row: np.ndarray) -> None:
        att, view = self._attention(), self._query_view
        if att is None or view is None or not self._queries.is_latest(request):
            return  # query mode is off, or a newer point is waiting
        att.data = view.show(request.zyx[0], row)
        att.contrast_limits = ctl.attention_limits(row)

    def _query_finished(self) -> None:
        request = self._queries.done()
        if request is not None:
            self._start_query(request)

    # ------------------------------------------------------------------ adapt
    @_guarded("Adapt")
    def adapt(self) -> None:
        """Adapt the current model to the selected image's sequence (BiGL, in a worker thread)."""
        if self._job is not None:
            return
        layer, volume, target = self._inputs()
        source_dir = Path(self.source_edit.text().strip() or ctl.default_source_dir())
        config, every, device = self.adapt_config(), self.preview_spin.value(), self.device_combo.currentText()

        def run(bundle: Bundle) -> None:
            ctl.source_sequence(bundle, target)                  # fail now, not in the worker
            labels = self._layer(ctl.labels_name(layer.name))
            before = None if labels is None else np.array(labels.data, copy=True)

            def work(cancel: ctl.CancelFlag) -> ctl.Adapted:
                return ctl.adapt_to_image(
                    bundle, source_dir, volume, target, config, device=device, cancel=cancel,
                    progress=self._signals.progress.emit, preview_every=every,
                    preview=lambda step, labels: self._signals.preview.emit((layer, step, labels)))

            self._start("adapt", work, functools.partial(self._adapted_done, layer, volume),
                        failed=functools.partial(self._restore_labels, layer, before))

        self._with_bundle("Adapt", run)

    def _on_preview(self, payload: tuple[Image, int, np.ndarray]) -> None:
        image, step, labels = payload
        if self._job is None or self._job.name != "adapt" or self._job.cancel():
            return
        self.progress_bar.setToolTip(f"labels previewed at step {step}")
        self._put_layer(ctl.labels_layer(image, labels))

    def _restore_labels(self, image: Image, before: np.ndarray | None) -> None:
        labels = self._layer(ctl.labels_name(image.name))
        if labels is not None and before is None:
            self.viewer.layers.remove(labels)   # made by a preview only
        elif labels is not None:
            labels.data = before

    def _adapted_done(self, image: Image, volume: Volume, out: ctl.Adapted) -> Iterator[None]:
        self._adapted = out.bundle
        yield from self._show_segmentation(image, volume, out.bundle, out.segmentation)
        if out.translated is not None:
            yield
            layer = self._put_layer(ctl.translated_layer(image, out.translated))
            here, above_image = self.viewer.layers.index(layer), self.viewer.layers.index(image) + 1
            if here > above_image:
                self.viewer.layers.move(here, above_image)   # under the attention and labels overlays
        self.save_button.setEnabled(True)
        self._update_model_info()
        show_info(f"Adapted the model to {', '.join(out.bundle.sequences)} in {ctl.format_seconds(out.seconds)}; "
                  "it is now the widget's model. Keep it with 'Save adapted model…'.")

    @_guarded("Save adapted model")
    def save_adapted(self, path: str | os.PathLike | None = None, *, overwrite: bool = False) -> Path | None:
        """Write the adapted model; without ``path``, ask with a file dialog (which confirms replacing a file).

        Given a path, an existing file is replaced only with ``overwrite=True``.
        """
        if self._adapted is None:
            raise BiglError("there is no adapted model to save; press 'Adapt to this modality' first")
        if path is None:
            b = self._adapted
            suggestion = Path.cwd() / f"model_{b.source_sequence}_to_{'_'.join(b.sequences)}.safetensors"
            chosen, _ = QFileDialog.getSaveFileName(self, "Save adapted model", str(suggestion),
                                                    "BiGL model bundle (*.safetensors)")
            if not chosen:
                return None
            path, overwrite = ctl.dialog_save_path(chosen)
        saved = save_bundle(self._adapted, path, overwrite=overwrite)
        self._update_model_info()
        show_info(f"Saved the adapted model to {saved}")
        return saved

    # ------------------------------------------------------------------ jobs
    def cancel(self) -> None:
        """Ask the running segmentation or adaptation to stop (at its next step)."""
        if self._job is not None:
            self._job.cancel.set()
            self.progress_bar.setFormat(f"cancelling {self._job.name}…")

    def is_busy(self) -> bool:
        return self._job is not None

    def _start(self, name: str, work: Callable[[ctl.CancelFlag], Any], done: Callable[[Any], Any], *,
               failed: Callable[[], None] | None = None, progress_bar: bool = True) -> None:
        """Run ``work(cancel)`` in a worker thread, then ``done(result)`` (or ``failed()``) in the GUI thread."""
        job = _Job(name, bar=napari_progress(total=0, desc=f"BiGL {name}") if progress_bar else None)
        self._job = job
        self._flags.add(job.cancel)
        self._set_busy(True)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setFormat(f"{name}…")
        worker = create_worker(work, job.cancel, _start_thread=False, _connect={
            "returned": functools.partial(self._job_returned, job, done),
            "errored": functools.partial(self._job_errored, job, failed),
            "finished": functools.partial(self._job_finished, job)})
        self._keep(worker)

    def _keep(self, worker: Any) -> None:
        """Reference the worker until it finishes, then start it (connected first: none finishes unseen)."""
        self._workers.add(worker)
        worker.finished.connect(functools.partial(self._workers.discard, worker))
        worker.start()

    def _job_returned(self, job: _Job, done: Callable[[Any], Any], result: Any) -> None:
        # A generator ``done`` runs one step per event-loop turn (see _show_segmentation).
        try:
            steps = done(result)
        except Exception as exc:  # noqa: BLE001
            self._report(exc, job.name.capitalize())
            return
        if inspect.isgenerator(steps):
            job.steps = steps
            self._next_step(job)

    def _next_step(self, job: _Job) -> None:
        try:
            next(job.steps)
        except StopIteration:
            job.steps = None
        except Exception as exc:  # noqa: BLE001
            job.steps = None
            self._report(exc, job.name.capitalize())
        if job.steps is not None:
            QTimer.singleShot(1, functools.partial(self._next_step, job))  # 1 ms: due repaints go first
        else:
            self._maybe_finish(job)

    def _job_errored(self, job: _Job, failed: Callable[[], None] | None, exc: BaseException) -> None:
        if failed is not None:
            try:
                failed()
            except Exception:  # noqa: BLE001
                log.exception("restoring after a failed %s", job.name)
        if isinstance(exc, Cancelled):
            show_info(f"{job.name.capitalize()} cancelled; nothing was changed.")
        else:
            self._report(exc, job.name.capitalize())

    def _job_finished(self, job: _Job) -> None:
        job.worker_done = True
        self._maybe_finish(job)

    def _maybe_finish(self, job: _Job) -> None:
        if not job.worker_done or job.steps is not None:
            return
        self._flags.discard(job.cancel)
        if job.bar is not None:
            job.bar.close()
        if self._job is job:
            self._job = None
            self._set_busy(False)
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat("cancelled" if job.cancel() else "idle")

    def _set_busy(self, busy: bool) -> None:
        for button in (self.segment_button, self.adapt_button):
            button.setEnabled(not busy)
        self.save_button.setEnabled(not busy and self._adapted is not None)
        self.cancel_button.setEnabled(busy)

    def _on_progress(self, p: Progress) -> None:
        job = self._job
        if job is None:
            return
        self.progress_bar.setRange(0, max(p.total, 1))
        self.progress_bar.setValue(min(p.step, max(p.total, 1)))
        self.progress_bar.setFormat(ctl.format_progress(p))
        if job.bar is not None:
            if job.bar.desc != f"BiGL {p.stage}" or job.bar.total != p.total:
                job.bar.set_description(f"BiGL {p.stage}")
                job.bar.n = 0
                job.bar.total = p.total
            job.bar.update(p.step - job.bar.n)

    def _report(self, exc: BaseException, action: str) -> None:
        if not isinstance(exc, BiglError):
            log.error("%s failed", action, exc_info=exc)
        show_error(ctl.describe_error(exc, action))


def _cancel_all(flags: set[ctl.CancelFlag], *_: Any) -> None:
    for flag in list(flags):
        flag.set()


def _button(text: str, slot: Callable, tip: str) -> QPushButton:
    button = QPushButton(text, toolTip=tip)
    button.clicked.connect(slot)
    return button


def _spin(lo: int, value: int, tip: str) -> QSpinBox:
    return QSpinBox(minimum=lo, maximum=100_000, value=value, toolTip=tip)


def _row(*widgets: QWidget) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        layout.addWidget(w)
    return row
