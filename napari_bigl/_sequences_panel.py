"""Sequences panel: the inputs of a multi-sequence model, one image-layer list per sequence it reads.

Shown only when the model reads several sequences (e.g. the bundled
``multi.safetensors``: t1, t1ce, t2, flair as input channels). Each list is
pre-filled from the open image layers by the reader's ``metadata["sequence"]``
or the layer name (:func:`napari_bigl._controller.match_sequences`), preferring
the case of the selected image; the user can change any of them. The line under
the lists says at once what is missing, or that the chosen layers do not share
one voxel grid and what to co-register them with (bigl's own check,
:func:`bigl.infer.model_input`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bigl.errors import BiglError
from bigl.io import Volume
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QWidget

from napari_bigl import _controller as ctl

if TYPE_CHECKING:
    from napari_bigl._widget import SegmentWidget


class SequencesPanel(QWidget):
    def __init__(self, host: SegmentWidget) -> None:
        super().__init__()
        self.host = host
        self.needed: tuple[str, ...] = ()
        self.combos: dict[str, QComboBox] = {}
        self._picked: dict[str, str] = {}        # choices the user made by hand (kept while the layer exists)
        self.note = QLabel(wordWrap=True)
        self.form = QFormLayout(self)
        self.form.setContentsMargins(0, 0, 0, 0)
        self.form.addRow("", self.note)
        self.setVisible(False)

    def is_multi(self) -> bool:
        return len(self.needed) > 1

    def set_needed(self, needed: tuple[str, ...]) -> None:
        """Show one list per sequence of a multi-sequence model (none for a single-sequence one)."""
        needed = tuple(needed)
        if needed == self.needed:
            return
        for combo in self.combos.values():
            self.form.removeRow(combo)
        self.needed, self.combos, self._picked = needed, {}, {}
        if self.is_multi():
            for i, seq in enumerate(needed):
                combo = QComboBox(toolTip=f"the image layer of the case's {seq} series (the model's input "
                                  f"channel {i + 1})")
                combo.activated.connect(lambda _, s=seq: self._on_picked(s))
                self.combos[seq] = combo
                self.form.insertRow(i, seq, combo)
        self.setVisible(self.is_multi())
        self.refill(rematch=True)

    def _on_picked(self, seq: str) -> None:
        self._picked[seq] = self.combos[seq].currentText()
        self.check()

    def refill(self, *, rematch: bool = False) -> None:
        """Refill the lists from the viewer; ``rematch`` (another image chosen) forgets the hand-made choices."""
        if not self.is_multi():
            return
        if rematch:
            self._picked = {}
        layers = self.host.input_layers()
        names = [lyr.name for lyr in layers]
        matched = ctl.match_sequences(self.needed, layers, self.host.image_layer())
        for seq, combo in self.combos.items():
            if self._picked.get(seq) not in names:
                self._picked.pop(seq, None)
            choice = self._picked.get(seq) or matched.get(seq, "")
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(["", *names])
            combo.setCurrentText(choice)
            combo.blockSignals(False)
        self.check()

    def chosen(self) -> dict[str, Any]:
        """``{sequence: layer}`` as chosen now (a sequence without a layer is absent)."""
        return {s: self.host.layer(c.currentText()) for s, c in self.combos.items()
                if self.host.layer(c.currentText()) is not None}

    def volumes(self) -> dict[str, Volume]:
        """``{sequence: Volume}`` for Segment; a clear BiglError (missing, not one grid) otherwise."""
        return ctl.sequence_inputs(self.needed, self.chosen(), self.host.image_layer())

    def check(self) -> str | None:
        """Say under the lists what is wrong with the current choice (or nothing); returns that text."""
        problem = None
        if self.is_multi():
            try:
                self.volumes()
            except BiglError as exc:
                problem = str(exc)
        self.note.setText("" if problem is None else f"⚠ {problem}")
        self.note.setVisible(problem is not None)
        return problem
