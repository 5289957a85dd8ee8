"""Report panel: "Export report…" writes <name>.csv, <name>.json and <name>.png of the last segmentation.

The report itself (case, image layer, model bundle and its SHA-256, sequences,
WT/TC/ET volumes in ml, bigl version, date) is :func:`bigl.report.build_report`;
:func:`bigl.report.write_report` writes it and the picture of the current view
that this panel takes. No file is replaced unless the user confirmed it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from bigl.errors import BiglError
from bigl.report import build_report, check_report_paths, report_paths, write_report
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QFileDialog, QMessageBox, QVBoxLayout, QWidget

from napari_bigl import _controller as ctl
from napari_bigl._jobs import guarded
from napari_bigl._ui import button

if TYPE_CHECKING:
    from napari_bigl._widget import SegmentWidget


class ReportPanel(QWidget):
    def __init__(self, host: SegmentWidget) -> None:
        super().__init__()
        self.host = host
        self.export_button = button("Export report…", self.export_report,
                                    "write the volumes, the model and its hash (CSV + JSON) and a picture of the "
                                    "view (PNG)")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.export_button)

    def set_busy(self, busy: bool) -> None:
        self.export_button.setEnabled(not busy)

    @guarded("Export report")
    def export_report(self, path: str | os.PathLike | None = None, *, overwrite: bool = False) -> Path | None:
        """Write the report of the last segmentation; returns the CSV path, or None when nothing was written.

        Without ``path`` a file dialog asks for the name and a question box
        lists any of the three files that exist before they are replaced.
        Given a path, existing files are replaced only with ``overwrite=True``.
        """
        res = self.host.result
        if res is None:
            raise BiglError("there is nothing to report yet; press Segment first")
        if path is None:
            case = ctl.case_name(res.image)
            chosen, _ = QFileDialog.getSaveFileName(self, "Export report", str(Path.cwd() / f"{case}_bigl_report.csv"),
                                                    "report (*.csv)",
                                                    options=QFileDialog.Option.DontConfirmOverwrite)
            if not chosen:
                return None
            path, overwrite = chosen, self._confirm_replace(chosen)
            if overwrite is None:
                return None
        report = build_report(case=ctl.case_name(res.image), image_layer=res.image.name, bundle=res.bundle,
                              sequences=list(res.sequences), volumes_ml=res.volumes_ml)
        csv_path, json_path = write_report(
            report, path, overwrite=overwrite,
            picture=lambda tmp: self.host.viewer.screenshot(tmp, canvas_only=True))
        show_info(f"Wrote the report {csv_path.name}, {json_path.name} and {csv_path.with_suffix('.png').name} "
                  f"in {csv_path.parent}")
        return csv_path

    def _confirm_replace(self, chosen: str) -> bool | None:
        """False when none of the report's files exists; True when the user agrees to replace them; else None."""
        existing = [p for p in report_paths(chosen) if p.exists()]
        if not existing:
            return False
        answer = QMessageBox.question(self, "Replace report?", "These files exist and would be replaced:\n"
                                      + "\n".join(str(p) for p in existing))
        if answer != QMessageBox.StandardButton.Yes:
            return None
        check_report_paths(existing, overwrite=True)
        return True
