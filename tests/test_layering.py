"""The library never imports the GUI stack (docs/architecture.md, STYLE rule 1).

``napari_bigl -> bigl`` is allowed, the reverse never is: `bigl` must stay
usable headless (CLI, torchrun, a workstation without a display). Two checks:

1. static: no ``import``/``from ... import`` in any ``src/bigl/**/*.py`` names a
   GUI package, not even lazily inside a function or under ``TYPE_CHECKING``;
2. dynamic: importing every ``bigl`` module in a fresh interpreter leaves no GUI
   package in ``sys.modules`` (catches a dependency that pulls one in).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "bigl"
FORBIDDEN = ("napari", "napari_bigl", "qtpy", "magicgui", "vispy", "superqt",
             "PyQt5", "PyQt6", "PySide2", "PySide6")


def _library_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_forbidden(module: str) -> bool:
    top = module.split(".")[0]
    return top in FORBIDDEN or top.startswith(("PyQt", "PySide"))


def _gui_imports(source: str, filename: str) -> list[str]:
    """Every GUI module imported anywhere in ``source``, as ``"line: module"``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
              and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]  # importlib.import_module("napari")
        else:
            continue
        found += [f"{node.lineno}: {name}" for name in names if _is_forbidden(name)]
    return found


def test_library_sources_exist() -> None:
    # Guards the checks below against passing vacuously after a move of src/.
    assert (SRC / "__init__.py").is_file()
    assert len(_library_files()) >= 3


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_library_module_has_no_gui_import(path: Path) -> None:
    offending = _gui_imports(path.read_text(encoding="utf-8"), str(path))
    assert not offending, f"{path} imports the GUI stack (bigl must stay headless): {offending}"


@pytest.mark.parametrize("source, expected", [
    ("import napari", ["1: napari"]),
    ("import os\nfrom qtpy.QtWidgets import QWidget", ["2: qtpy.QtWidgets"]),
    ("def f():\n    import magicgui.widgets as w", ["2: magicgui.widgets"]),
    ("import numpy, PyQt6.QtCore", ["1: PyQt6.QtCore"]),
    ("importlib.import_module('vispy')", ["1: vispy"]),
    ("from . import napari_like\nimport napari_tools_x", []),
    ("import numpy as np\nfrom bigl.io import Volume", []),
])
def test_checker_catches_gui_imports(source: str, expected: list[str]) -> None:
    # The static check must be able to fail.
    assert _gui_imports(source, "<test>") == expected


def test_importing_every_library_module_loads_no_gui_package() -> None:
    modules = [_module_name(p) for p in _library_files() if p.name != "__main__.py"]
    code = "\n".join([
        "import importlib, sys",
        f"for name in {modules!r}:",
        "    importlib.import_module(name)",
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))",
    ])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"importing {modules} failed:\n{result.stderr}"
    loaded = result.stdout.strip().splitlines()[-1]
    assert loaded == "[]", f"importing the bigl modules pulled in GUI packages: {loaded}"
