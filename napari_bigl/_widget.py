"""The "BiGL Segment" dock widget: segment, inspect attention, adapt to the open sequence.

Each button is one call into :mod:`bigl`, run in a napari worker thread so the
viewer stays responsive, with a progress bar (here and in napari's activity
dock) and a Cancel button that sets the call's ``cancel`` flag:

- **Segment** -> :func:`bigl.infer.segment_volume`: adds "<image> BiGL labels"
  (BraTS colours, on the image's file grid so File > Save writes it back there)
  and "<image> attention" (the position-attention summary as a heat map) and
  shows the WT/TC/ET volumes.
- **Query attention** (checkbox) -> :func:`bigl.infer.attention_query` for the
  point placed or moved in the "attention query" points layer; the attention
  layer's slice then shows where the network looks for that voxel. Only the
  newest point is computed (stale requests are dropped).
- **Adapt to this modality** -> :func:`bigl.adapt.adapt` (BiGL, no labels of the
  open series), previewing the labels every N steps; when done the adapted
  model is the widget's model, the translated image x_t→s
  (:func:`bigl.translate.translate_volume`) is shown, and **Save adapted
  model…** writes it (:func:`bigl.checkpoint.save_bundle`, never silently
  replacing a file). The source model is never modified; Cancel leaves it as it was.

Errors become napari notifications (:func:`napari_bigl._controller.describe_error`);
Qt-free logic lives in :mod:`napari_bigl._controller`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from bigl.adapt import AdaptConfig, TranslatorTrainConfig, adapt
from bigl.checkpoint import DEMO_BUNDLE, Bundle, load_bundle, read_document, save_bundle
from bigl.errors import BiglError
from bigl.infer import SequenceMismatchWarning, attention_query, check_sequence, segment_volume
from bigl.io import SEQUENCES, Volume
from bigl.progress import Cancelled, Progress
from bigl.translate import translate_volume
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
    """Carries worker-thread callbacks into the GUI thread (queued: the receiver lives there)."""

    progress = Signal(object)     # bigl.progress.Progress
    preview = Signal(object)      # (image layer, step, labels)


@dataclass
class _Job:
    name: str
    cancel: ctl.CancelFlag = field(default_factory=ctl.CancelFlag)
    bar: Any = None               # napari progress bar (activity dock)
    worker_done: bool = False
    steps: Iterator[None] | None = None   # GUI-thread steps still to run after the worker returned


@dataclass
class _Result:
    """What the last segmentation ran on: the attention query reuses it."""

    image: Image
    volume: Volume
    bundle: Bundle
    attention: np.ndarray         # (z, y, x) summary


def _guarded(action: str) -> Callable:
    """A slot that reports any exception as a notification instead of breaking the viewer."""
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
    """Dock widget: image + sequence + model + device -> Segment / attention query / Adapt / Save."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._signals = _Signals(self)
        self._signals.progress.connect(self._on_progress)
        self._signals.preview.connect(self._on_preview)
        self._job: _Job | None = None
        self._cached: tuple[Any, Bundle] | None = None   # (file key, bundle) of the model file
        self._adapted: Bundle | None = None              # in-memory adapted model, the current one when set
        self._result: _Result | None = None
        self._queries = ctl.LatestOnly()
        self._query_layer: Layer | None = None
        self._query_zyx: tuple[int, int, int] | None = None
        self._query_display: np.ndarray | None = None
        self._query_z: int | None = None
        self._workers: set = set()                       # keep running workers referenced
        self._flags: set[ctl.CancelFlag] = set()         # cancel flags of running jobs
        self._build()
        self.reset_choices()
        # closing the dock stops running work at its next step (no worker outlives the widget for long)
        self.destroyed.connect(functools.partial(_cancel_all, self._flags))

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.image_combo = QComboBox()
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.sequence_combo = QComboBox()
        self.sequence_combo.addItems(["", *SEQUENCES])
        self.sequence_combo.setToolTip("MR sequence of the image (guessed from its name; change it if wrong)")
        self.model_edit = QLineEdit(str(DEMO_BUNDLE))
        self.model_edit.setToolTip("model bundle (*.safetensors); default: the demo T1 model")
        self.model_edit.textEdited.connect(self._on_model_edited)
        self.model_edit.editingFinished.connect(self._update_model_info)
        self.model_info = QLabel()
        self.model_info.setWordWrap(True)
        self.device_combo = QComboBox()
        self.device_combo.addItems(ctl.DEVICES)
        self.device_combo.currentTextChanged.connect(self._update_device_note)
        self.device_note = QLabel()
        self.device_note.setWordWrap(True)

        inputs = QFormLayout()
        inputs.addRow("image", self.image_combo)
        inputs.addRow("sequence", self.sequence_combo)
        inputs.addRow("model", _row(self.model_edit, _button("…", self._browse_model, "choose a model bundle")))
        inputs.addRow("", self.model_info)
        inputs.addRow("device", self.device_combo)
        inputs.addRow("", self.device_note)

        self.segment_button = _button("Segment", lambda: self.segment(), "segment the image with the model")
        self.cancel_button = _button("Cancel", lambda: self.cancel(), "stop the running segmentation or adaptation")
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setFormat("idle")
        self.volumes_label = QLabel("WT –   TC –   ET –")
        self.query_check = QCheckBox("query attention at a point")
        self.query_check.setToolTip("place or drag a point: the attention layer shows where the network looks for it")
        self.query_check.toggled.connect(self._toggle_query)

        self.source_edit = QLineEdit(str(ctl.default_source_dir()))
        self.source_edit.setToolTip("labelled cases of the model's sequence (BraTS layout)")
        self.steps_spin = _spin(1, 100_000, ctl.ADAPT_STEPS, "alignment steps (stage 2)")
        self.translator_spin = _spin(0, 100_000, ctl.TRANSLATOR_STEPS, "translator steps (stage 1)")
        self.preview_spin = _spin(1, 100_000, ctl.PREVIEW_EVERY, "update the labels every N steps")
        self.adapt_button = _button("Adapt to this modality", lambda: self.adapt(),
                                    "adapt the model to the image's sequence without labels (BiGL)")
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
        adapt_layout = QVBoxLayout(adapt_box)
        adapt_layout.addLayout(adapt_form)
        adapt_layout.addWidget(self.adapt_button)
        adapt_layout.addWidget(self.save_button)

        layout = QVBoxLayout(self)
        layout.addLayout(inputs)
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
        """Refill the image list from the viewer (napari calls this when layers change)."""
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

    def image_layer(self) -> Image | None:
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _on_image_changed(self, *_: Any) -> None:
        guess = ctl.guess_sequence(self.image_layer())
        self.sequence_combo.setCurrentText(guess or "")

    def _inputs(self) -> tuple[Image, Volume, str]:
        layer = self.image_layer()
        volume = ctl.image_input(layer)
        return layer, volume, ctl.require_sequence(self.sequence_combo.currentText() or None, layer.name)

    def _update_device_note(self, *_: Any) -> None:
        self.device_note.setText(ctl.device_note(self.device_combo.currentText()))

    def _on_model_edited(self, *_: Any) -> None:
        self._adapted = None     # a model file chosen by hand replaces the in-memory adapted model
        self.save_button.setEnabled(False)

    def _update_model_info(self) -> None:
        if self._adapted is not None:
            b = self._adapted
            where = f"saved as {b.path.name}" if b.path is not None else "in memory, not saved"
            self.model_info.setText(f"adapted {b.source_sequence} → {', '.join(b.sequences)} ({where})")
            return
        try:
            doc = read_document(self.model_edit.text().strip() or DEMO_BUNDLE)
            self.model_info.setText(f"trained on {', '.join(doc.get('sequences', []))}")
        except BiglError:
            self.model_info.setText("⚠ not a readable model bundle")

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a BiGL model bundle", str(Path(self.model_edit.text()).parent),
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
        """The adaptation settings from the widget's fields (paper defaults otherwise)."""
        return AdaptConfig(steps=self.steps_spin.value(),
                           translator=TranslatorTrainConfig(steps=self.translator_spin.value()))

    # ------------------------------------------------------------------ model
    def current_bundle(self) -> Bundle | None:
        """The model the next action uses, if already in memory (the adapted one, else the loaded file)."""
        if self._adapted is not None:
            return self._adapted
        if self._cached is not None and self._cached[0] == self._model_key():
            return self._cached[1]
        return None

    def _model_key(self) -> tuple[str, float | None]:
        path = self.model_edit.text().strip() or str(DEMO_BUNDLE)
        try:
            return path, os.stat(path).st_mtime
        except OSError:
            return path, None

    def _with_bundle(self, then: Callable[[Bundle], None]) -> None:
        bundle = self.current_bundle()
        if bundle is not None:
            then(bundle)
            return
        key = self._model_key()

        def loaded(b: Bundle) -> None:
            self._cached = (key, b)
            then(b)

        self._start("load model", lambda cancel: load_bundle(key[0]), loaded, progress_bar=False)

    def _warn_sequence(self, bundle: Bundle, sequence: str) -> None:
        # Checked here, in the GUI thread, so the warning is a napari notification every time.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SequenceMismatchWarning)
            check_sequence(bundle, sequence)
        for w in caught:
            show_warning(str(w.message))

    # ------------------------------------------------------------------ segment
    @_guarded("Segment")
    def segment(self) -> None:
        """Segment the selected image with the current model (in a worker thread)."""
        if self._job is not None:
            return
        layer, volume, sequence = self._inputs()
        device = self.device_combo.currentText()

        @_guarded("Segment")
        def run(bundle: Bundle) -> None:
            self._warn_sequence(bundle, sequence)

            def work(cancel: ctl.CancelFlag):
                # sequence=None: the mismatch was already checked and shown above
                return segment_volume(bundle, volume, device=device, progress=self._signals.progress.emit,
                                      cancel=cancel)

            self._start("segment", work, lambda seg: self._show_segmentation(layer, volume, bundle, seg))

        self._with_bundle(run)

    def _show_segmentation(self, image: Image, volume: Volume, bundle: Bundle, seg: Any) -> Iterator[None]:
        """Put the results on screen, one layer per event-loop turn (see :meth:`_job_returned`)."""
        self._put_layer(ctl.attention_layer(image, seg.attention))
        yield
        self._put_layer(ctl.labels_layer(image, seg.labels))
        self._result = _Result(image, volume, bundle, seg.attention)
        self.volumes_label.setText(ctl.format_volumes(seg.volumes_ml))
        if self.query_check.isChecked():
            self._query_display = seg.attention.copy()
            self._query_z, self._query_zyx = None, None
            self._on_query_points()

    def _put_layer(self, layer_data: ctl.LayerDataTuple) -> Layer:
        """Add a result layer, or update the one of that name (keeping the user's display settings)."""
        data, kwargs, kind = layer_data
        name = kwargs["name"]
        layer = self._layer(name)
        if layer is not None and isinstance(layer, _LAYER_TYPES[kind]):
            layer.data = data
            layer.metadata.update(kwargs.get("metadata", {}))
            if "contrast_limits" in kwargs:
                layer.contrast_limits = kwargs["contrast_limits"]
            return layer
        return self.viewer.add_layer(Layer.create(data, kwargs, kind))

    def _layer(self, name: str) -> Layer | None:
        return self.viewer.layers[name] if name in self.viewer.layers else None

    # ------------------------------------------------------------------ attention query
    @_guarded("Attention query")
    def _toggle_query(self, on: bool) -> None:
        if on:
            att = self._result and self._layer(ctl.attention_name(self._result.image.name))
            if att is None:
                self.query_check.setChecked(False)
                raise BiglError("segment the image first: the attention query needs its attention layer")
            image = self._result.image
            pts = self.viewer.add_points(ndim=3, name=ctl.QUERY_LAYER, scale=image.scale, translate=image.translate,
                                         size=3, face_color="cyan", border_color="white",
                                         metadata={ctl.ROLE_KEY: "query"})
            pts.mode = "add"
            pts.events.data.connect(self._on_query_points)
            pts.events.set_data.connect(self._on_query_points)
            self._query_layer = pts
            self._query_display = self._result.attention.copy()
            self._query_z = self._query_zyx = None
            return
        self._queries.reset()
        pts, self._query_layer = self._query_layer, None
        if pts is not None and pts in self.viewer.layers:
            self.viewer.layers.remove(pts)
        att = self._result and self._layer(ctl.attention_name(self._result.image.name))
        if att is not None:
            att.data = self._result.attention
            att.contrast_limits = ctl.attention_limits(self._result.attention)
        self._query_display = None

    @_guarded("Attention query")
    def _on_query_points(self, event: Any = None) -> None:
        pts = self._query_layer
        if pts is None or self._result is None or len(pts.data) == 0:
            return
        if getattr(event, "action", None) in ("adding", "changing", "removing"):
            return  # "-ing" events come before the change
        indices = getattr(event, "data_indices", None) or tuple(sorted(pts.selected_data)) or (-1,)
        point = pts.data[indices[-1]]
        zyx = tuple(int(round(v)) for v in self._result.image.world_to_data(pts.data_to_world(point)))
        shape = self._result.attention.shape
        if zyx == self._query_zyx or not all(0 <= v < n for v, n in zip(zyx, shape)):
            return
        self._query_zyx = zyx
        request = self._queries.submit(zyx)
        if request is not None:
            self._start_query(request)

    def _start_query(self, request: ctl.QueryRequest) -> None:
        res = self._result
        worker = create_worker(attention_query, res.bundle, res.volume, *request.zyx,
                               device=self.device_combo.currentText(),
                               _connect={"returned": functools.partial(self._query_returned, request),
                                         "errored": functools.partial(self._report, action="Attention query"),
                                         "finished": self._query_finished})
        self._keep(worker)

    def _query_returned(self, request: ctl.QueryRequest, row: np.ndarray) -> None:
        res, display = self._result, self._query_display
        att = res and self._layer(ctl.attention_name(res.image.name))
        if not self._queries.is_latest(request) or att is None or display is None:
            return  # a newer point is waiting, or query mode was turned off
        z = request.zyx[0]
        if self._query_z is not None:
            display[self._query_z] = res.attention[self._query_z]
        display[z] = row
        self._query_z = z
        att.data = display
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

        @_guarded("Adapt")
        def run(bundle: Bundle) -> None:
            source_seq = bundle.source_sequence or bundle.sequences[0]
            if target in bundle.sequences:
                raise BiglError(f"the model already works on {target} (it was trained or adapted on "
                                f"{', '.join(bundle.sequences)}); adapt when the image is another sequence")
            labels = self._layer(ctl.labels_name(layer.name))
            before = None if labels is None else np.array(labels.data, copy=True)

            def work(cancel: ctl.CancelFlag):
                def preview(step: int, snapshot: Bundle) -> None:
                    labels = segment_volume(snapshot, volume, device=device, with_attention=False, cancel=cancel).labels
                    self._signals.preview.emit((layer, step, labels))

                result = adapt(bundle, ctl.ensure_source_dataset(source_dir), source_seq, [volume], target, config,
                               device=device, progress=self._signals.progress.emit, cancel=cancel,
                               preview=preview, preview_every=every)
                seg = segment_volume(result.bundle, volume, device=device, progress=self._signals.progress.emit,
                                     cancel=cancel)
                translated = (translate_volume(result.bundle, volume, device=device, cancel=cancel)
                              if result.bundle.translator_t2s is not None else None)
                return result, seg, translated

            self._start("adapt", work, functools.partial(self._adapted_done, layer, volume),
                        failed=functools.partial(self._restore_labels, layer, before))

        self._with_bundle(run)

    def _on_preview(self, payload: tuple[Image, int, np.ndarray]) -> None:
        image, step, labels = payload
        if self._job is None or self._job.name != "adapt" or self._job.cancel():
            return
        self.progress_bar.setToolTip(f"labels previewed at step {step}")
        self._put_layer(ctl.labels_layer(image, labels))

    def _restore_labels(self, image: Image, before: np.ndarray | None) -> None:
        labels = self._layer(ctl.labels_name(image.name))
        if labels is None:
            return
        if before is None:
            self.viewer.layers.remove(labels)   # made by a preview only
        else:
            labels.data = before

    def _adapted_done(self, image: Image, volume: Volume, out: tuple) -> Iterator[None]:
        result, seg, translated = out
        self._adapted = result.bundle
        yield from self._show_segmentation(image, volume, result.bundle, seg)
        if translated is not None:
            yield
            layer = self._put_layer(ctl.translated_layer(image, translated))
            here, above_image = self.viewer.layers.index(layer), self.viewer.layers.index(image) + 1
            if here > above_image:
                self.viewer.layers.move(here, above_image)   # under the attention and labels overlays
        self.save_button.setEnabled(True)
        self._update_model_info()
        show_info(f"Adapted the model to {', '.join(result.bundle.sequences)} in {ctl.format_seconds(result.seconds)}; "
                  "it is now the widget's model. Keep it with 'Save adapted model…'.")

    @_guarded("Save adapted model")
    def save_adapted(self, path: str | os.PathLike | None = None, *, overwrite: bool = False) -> Path | None:
        """Write the adapted model; with no ``path`` ask with a file dialog (which confirms replacing a file).

        Called with a path, an existing file is replaced only with ``overwrite=True``.
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
            path = Path(chosen)
            # the dialog asked before replacing exactly this name; not one we changed by adding the suffix
            overwrite = path.suffix == ".safetensors"
            path = path if overwrite else path.with_name(path.name + ".safetensors")
        saved = save_bundle(self._adapted, path, overwrite=overwrite)
        self._update_model_info()
        show_info(f"Saved the adapted model to {saved}")
        return saved

    # ------------------------------------------------------------------ jobs
    def cancel(self) -> None:
        """Ask the running segmentation or adaptation to stop (it stops at its next step)."""
        if self._job is not None:
            self._job.cancel.set()
            self.progress_bar.setFormat(f"cancelling {self._job.name}…")

    def is_busy(self) -> bool:
        return self._job is not None

    def _start(self, name: str, work: Callable[[ctl.CancelFlag], Any], done: Callable[[Any], None], *,
               failed: Callable[[], None] | None = None, progress_bar: bool = True) -> None:
        """Run ``work(cancel)`` in a worker thread; ``done(result)`` or ``failed()`` then run in the GUI thread."""
        job = _Job(name)
        if progress_bar:
            job.bar = napari_progress(total=0, desc=f"BiGL {name}")
        self._job = job
        self._flags.add(job.cancel)
        self._set_busy(True)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setFormat(f"{name}…")
        worker = create_worker(work, job.cancel, _connect={
            "returned": functools.partial(self._job_returned, job, done),
            "errored": functools.partial(self._job_errored, job, failed),
            "finished": functools.partial(self._job_finished, job)})
        self._keep(worker)

    def _keep(self, worker: Any) -> None:
        self._workers.add(worker)
        worker.finished.connect(functools.partial(self._workers.discard, worker))

    def _job_returned(self, job: _Job, done: Callable[[Any], Any], result: Any) -> None:
        # ``done`` may be a generator: each step then runs in its own event-loop turn, so that adding
        # several large layers (napari needs ~0.1 s per layer) never blocks the viewer for long.
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
            QTimer.singleShot(1, functools.partial(self._next_step, job))  # 1 ms: due timers (repaints) go first
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
    button = QPushButton(text)
    button.setToolTip(tip)
    button.clicked.connect(slot)
    return button


def _spin(lo: int, hi: int, value: int, tip: str) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(lo, hi)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


def _row(*widgets: QWidget) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        layout.addWidget(w)
    return row
