"""Small Qt helpers shared by the widget's panels, and the choices remembered between sessions."""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from pathlib import Path

from qtpy.QtCore import QSettings
from qtpy.QtWidgets import QHBoxLayout, QPushButton, QSpinBox, QWidget


def button(text: str, slot: Callable, tip: str) -> QPushButton:
    """A push button calling ``slot()`` (without Qt's ``checked`` argument)."""
    b = QPushButton(text, toolTip=tip)
    b.clicked.connect(lambda *_: slot())
    return b


def spin(lo: int, value: int, tip: str) -> QSpinBox:
    return QSpinBox(minimum=lo, maximum=100_000, value=value, toolTip=tip)


def row(*widgets: QWidget) -> QWidget:
    """Widgets side by side, without margins."""
    container = QWidget()
    layout = QHBoxLayout(container)
    layout.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        layout.addWidget(w)
    return container


MODEL_KEY = "model"          # the last model bundle file used or saved
SOURCE_KEY = "source_dir"    # the last adaptation source folder


def settings() -> QSettings:
    """The plugin's remembered choices: an INI file in the user's config folder (``napari-bigl/napari-bigl.ini``)."""
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "napari-bigl", "napari-bigl")


def remembered(key: str, default: str, exists: Callable[[Path], bool]) -> str:
    """The remembered value of ``key`` if it still ``exists``, else ``default``."""
    value = settings().value(key, "", type=str)
    return value if value and exists(Path(value)) else default


def remember(key: str, value: str | PathLike) -> None:
    settings().setValue(key, str(value))
