"""A segmentation report to hand on: what was segmented, with which model, and the region volumes.

:func:`build_report` gathers the facts into a JSON-able dict; :func:`write_report`
writes it as ``<name>.json`` and a one-row ``<name>.csv`` (one column per field,
so the rows of several cases concatenate into one table). The model is
identified by a hash: ``model_sha256`` is the SHA-256 of the bundle file (what
``sha256sum model.safetensors`` prints) when the model was loaded from or saved
to a file, and ``weights_sha256`` hashes the weights themselves, so an adapted
model that was never saved is identified too.

Nothing here knows about napari: the plugin adds a picture of its view beside
these files (:data:`PICTURE_SUFFIX`), and :func:`report_paths` names all three
so that they are checked for existing files before anything is written.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bigl import __version__
from bigl._fs import atomic_path
from bigl.checkpoint import Bundle
from bigl.errors import BiglError

PICTURE_SUFFIX = ".png"
_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(bundle: Bundle) -> str:
    """SHA-256 over the bundle's weights (segmenters and translators): name, dtype, shape and values of each tensor."""
    digest = hashlib.sha256()
    for prefix, module in bundle.parts().items():
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            digest.update(f"{prefix}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())   # raw bytes, any dtype
    return digest.hexdigest()


def build_report(*, case: str, image_layer: str, bundle: Bundle, sequences: Sequence[str],
                 volumes_ml: Mapping[str, float], date: _dt.datetime | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report of one segmentation: case, image, model (path, hashes, trained sequences), volumes, version, date.

    ``sequences`` are the MR sequences of the image that was segmented;
    ``volumes_ml`` the WT/TC/ET volumes (:func:`bigl.metrics.region_volumes`).
    """
    path = bundle.path if bundle.path is not None and Path(bundle.path).is_file() else None
    date = date or _dt.datetime.now().astimezone()
    report: dict[str, Any] = {
        "case": case,
        "image_layer": image_layer,
        "sequences": list(sequences),
        "model": str(path) if path is not None else "adapted in memory (not saved)",
        "model_sha256": file_sha256(path) if path is not None else None,
        "weights_sha256": weights_sha256(bundle),
        "model_sequences": list(bundle.sequences),
        "model_source_sequence": bundle.source_sequence,
        "volumes_ml": {k: round(float(v), 3) for k, v in volumes_ml.items()},
        "bigl_version": __version__,
        "date": date.isoformat(timespec="seconds"),
    }
    report.update(extra or {})
    return report


def report_paths(path: str | os.PathLike) -> tuple[Path, Path, Path]:
    """``(csv, json, png)`` paths of a report named ``path`` (any of the three suffixes, or none)."""
    path = Path(path)
    if path.suffix.lower() in (".csv", ".json", PICTURE_SUFFIX):
        path = path.with_suffix("")
    return path.with_name(path.name + ".csv"), path.with_name(path.name + ".json"), \
        path.with_name(path.name + PICTURE_SUFFIX)


def check_report_paths(paths: Sequence[Path], *, overwrite: bool = False) -> None:
    """Fail before writing anything when the folder is missing or, without ``overwrite``, a file exists."""
    for p in paths:
        if not p.parent.is_dir():
            raise BiglError(f"{p.parent}: no such folder; choose an existing folder for the report")
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise BiglError(f"{', '.join(str(p) for p in existing)} already exist(s); choose another report name "
                        "or confirm replacing them")


def _flat(report: Mapping[str, Any]) -> dict[str, Any]:
    """One CSV row: lists joined with '+', the volumes as WT_ml, TC_ml, ET_ml columns."""
    row: dict[str, Any] = {}
    for key, value in report.items():
        if key == "volumes_ml":
            row.update({f"{region}_ml": ml for region, ml in value.items()})
        elif isinstance(value, (list, tuple)):
            row[key] = "+".join(str(v) for v in value)
        else:
            row[key] = "" if value is None else value
    return row


def report_csv(report: Mapping[str, Any]) -> str:
    """The report as CSV text: a header line and one row."""
    row = _flat(report)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(row), lineterminator="\n")
    writer.writeheader()
    writer.writerow(row)
    return buf.getvalue()


def write_report(report: Mapping[str, Any], path: str | os.PathLike, *, overwrite: bool = False,
                 picture: Callable[[str], None] | None = None) -> tuple[Path, Path]:
    """Write ``<name>.csv`` and ``<name>.json`` atomically; returns their paths.

    ``picture(tmp_path)``, when given, writes the ``<name>.png`` (e.g. a
    screenshot) to a temporary ``.png`` path that is then renamed into place.
    All the files are checked first: none is replaced unless ``overwrite``.
    """
    csv_path, json_path, png_path = report_paths(path)
    check_report_paths([csv_path, json_path, *([png_path] if picture is not None else [])], overwrite=overwrite)
    if picture is not None:
        with atomic_path(png_path, suffix=PICTURE_SUFFIX) as tmp:
            picture(tmp)
    for target, text in ((json_path, json.dumps(report, indent=2) + "\n"), (csv_path, report_csv(report))):
        with atomic_path(target) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
    return csv_path, json_path
