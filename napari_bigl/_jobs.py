"""Background work for the widget: one job at a time in a napari worker thread, a progress bar and Cancel.

``JobBar.start(name, work, done)`` runs ``work(cancel)`` in a worker thread
and then ``done(result)`` in the GUI thread. A generator ``done`` runs one step
per event-loop turn, so that putting several large layers on screen never
blocks the viewer for longer than one of them. Worker-thread progress
(:class:`bigl.progress.Progress`) reaches the GUI through a queued signal and
drives both this bar and napari's activity dock. Cancel sets the job's flag;
bigl stops at its next step and raises :class:`bigl.progress.Cancelled`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bigl.errors import BiglError
from bigl.progress import Cancelled, Progress
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QHBoxLayout, QProgressBar, QPushButton, QWidget

from napari_bigl import _controller as ctl

log = logging.getLogger(__name__)
PROGRESS_INTERVAL_S = 0.1


@dataclass
class Job:
    name: str
    cancel: ctl.CancelFlag = field(default_factory=ctl.CancelFlag)
    bar: Any = None                       # napari progress bar (activity dock)
    worker_done: bool = False
    steps: Iterator[None] | None = None   # GUI-thread steps still to run after the worker returned
    shown_at: float = 0.0                 # time.monotonic() of the last progress shown


def report(exc: BaseException, action: str) -> None:
    """Every failure becomes a napari notification; unexpected ones are also logged with their traceback."""
    if not isinstance(exc, BiglError):
        log.error("%s failed", action, exc_info=exc)
    show_error(ctl.describe_error(exc, action))


def guarded(action: str) -> Callable:
    """Make a slot report any exception as a notification instead of breaking the viewer."""
    def deco(method: Callable) -> Callable:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
                report(exc, action)
                return None
        return wrapper
    return deco


class JobBar(QWidget):
    """The progress bar and Cancel button, and the one job they show."""

    progress = Signal(object)     # bigl.progress.Progress, emitted from worker threads
    busy_changed = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.job: Job | None = None
        self.workers: set = set()                    # running workers, referenced until finished
        self.flags: set[ctl.CancelFlag] = set()      # cancel flags of running jobs
        self.progress_bar = QProgressBar(format="idle", textVisible=True)
        self.cancel_button = QPushButton("Cancel", toolTip="stop the running segmentation or adaptation")
        self.cancel_button.clicked.connect(lambda: self.cancel())
        self.cancel_button.setEnabled(False)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.progress_bar, 1)
        row.addWidget(self.cancel_button)
        self.progress.connect(self._on_progress)

    def is_busy(self) -> bool:
        return self.job is not None

    def cancel(self) -> None:
        """Ask the running job to stop (at its next step)."""
        if self.job is not None:
            self.job.cancel.set()
            self.progress_bar.setFormat(f"cancelling {self.job.name}…")

    def cancel_all(self, *_: Any) -> None:
        for flag in list(self.flags):
            flag.set()

    def start(self, name: str, work: Callable[[ctl.CancelFlag], Any], done: Callable[[Any], Any], *,
              failed: Callable[[], None] | None = None, progress_bar: bool = True,
              keep_if_cancelled: bool = False) -> Job:
        """Run ``work(cancel)`` in a worker thread, then ``done(result)`` (or ``failed()``) in the GUI thread.

        A result that arrives after Cancel was pressed is dropped (``failed()``
        runs instead) unless ``keep_if_cancelled``: the work decides itself what
        a late cancel means.
        """
        job = Job(name, bar=napari_progress(total=0, desc=f"BiGL {name}") if progress_bar else None)
        self.job = job
        self.flags.add(job.cancel)
        self.busy_changed.emit(True)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setFormat(f"{name}…")
        self.run(work, job.cancel, connect={
            "returned": functools.partial(self._returned, job, done, failed, keep_if_cancelled),
            "errored": functools.partial(self._errored, job, failed),
            "finished": functools.partial(self._finished, job)})
        return job

    def run(self, function: Callable, *args: Any, connect: dict[str, Callable], **kwargs: Any) -> None:
        """Start ``function(*args, **kwargs)`` in a worker, referenced until it finishes (connected first)."""
        worker = create_worker(function, *args, _start_thread=False, _connect=connect, **kwargs)
        self.workers.add(worker)
        worker.finished.connect(functools.partial(self.workers.discard, worker))
        worker.start()

    def _returned(self, job: Job, done: Callable[[Any], Any], failed: Callable[[], None] | None, keep: bool,
                  result: Any) -> None:
        if job.cancel() and not keep:
            self._errored(job, failed, Cancelled())
            return
        try:
            steps = done(result)
        except Exception as exc:  # noqa: BLE001
            report(exc, job.name.capitalize())
            return
        if inspect.isgenerator(steps):
            job.steps = steps
            self._next_step(job)

    def _next_step(self, job: Job) -> None:
        try:
            next(job.steps)
        except StopIteration:
            job.steps = None
        except Exception as exc:  # noqa: BLE001
            job.steps = None
            report(exc, job.name.capitalize())
        if job.steps is not None:
            QTimer.singleShot(1, functools.partial(self._next_step, job))  # 1 ms: due repaints go first
        else:
            self._maybe_finish(job)

    def _errored(self, job: Job, failed: Callable[[], None] | None, exc: BaseException) -> None:
        if failed is not None:
            try:
                failed()
            except Exception:  # noqa: BLE001
                log.exception("restoring after a failed %s", job.name)
        if isinstance(exc, Cancelled):
            show_info(f"{job.name.capitalize()} cancelled; nothing was changed.")
        else:
            report(exc, job.name.capitalize())

    def _finished(self, job: Job) -> None:
        job.worker_done = True
        self._maybe_finish(job)

    def _maybe_finish(self, job: Job) -> None:
        if not job.worker_done or job.steps is not None:
            return
        self.flags.discard(job.cancel)
        if job.bar is not None:
            job.bar.close()
        if self.job is job:
            self.job = None
            self.cancel_button.setEnabled(False)
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat("cancelled" if job.cancel() else "idle")
            self.busy_changed.emit(False)

    def _on_progress(self, p: Progress) -> None:
        job = self.job
        if job is None:
            return
        # Each update repaints two progress bars (here and napari's activity dock): ~10 a second is plenty.
        now, stage_changed = time.monotonic(), job.bar is not None and job.bar.desc != f"BiGL {p.stage}"
        if now - job.shown_at < PROGRESS_INTERVAL_S and not stage_changed and p.step < p.total:
            return
        job.shown_at = now
        self.progress_bar.setRange(0, max(p.total, 1))
        self.progress_bar.setValue(min(p.step, max(p.total, 1)))
        self.progress_bar.setFormat(ctl.format_progress(p))
        if job.bar is not None:
            if job.bar.desc != f"BiGL {p.stage}" or job.bar.total != p.total:
                job.bar.set_description(f"BiGL {p.stage}")
                job.bar.n = 0
                job.bar.total = p.total
            job.bar.update(p.step - job.bar.n)
