import csv
import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
import torch

from bigl import __version__
from bigl.checkpoint import load_bundle
from bigl.errors import BiglError
from bigl.report import build_report, report_csv, report_paths, weights_sha256, write_report

DATE = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
VOLUMES = {"WT": 12.3456, "TC": 4.5, "ET": 0.0}


def test_report_names_the_model_file_by_its_sha256(tiny_bundle_path):
    bundle = load_bundle(tiny_bundle_path)
    rep = build_report(case="Case_001", image_layer="Case_001 t1", bundle=bundle, sequences=["t1"],
                       volumes_ml=VOLUMES, date=DATE)
    assert rep["model_sha256"] == hashlib.sha256(tiny_bundle_path.read_bytes()).hexdigest()
    assert rep["model"] == str(tiny_bundle_path) and rep["model_sequences"] == ["t1"]
    assert rep["volumes_ml"] == {"WT": 12.346, "TC": 4.5, "ET": 0.0}
    assert rep["bigl_version"] == __version__ and rep["date"] == "2024-05-06T07:08:09+00:00"
    json.dumps(rep)                                    # JSON-able as it is


def test_weights_hash_tells_models_apart_and_ignores_the_file(tiny_bundle_path):
    a, b = load_bundle(tiny_bundle_path), load_bundle(tiny_bundle_path)
    assert weights_sha256(a) == weights_sha256(b)
    with torch.no_grad():
        next(b.segmenter.parameters()).view(-1)[0] += 1e-3
    assert weights_sha256(a) != weights_sha256(b)
    b.path = None                                      # an adapted model, not saved: no file hash, weights hash
    rep = build_report(case="c", image_layer="c t2", bundle=b, sequences=["t2"], volumes_ml=VOLUMES, date=DATE)
    assert rep["model_sha256"] is None and "not saved" in rep["model"] and rep["weights_sha256"] == weights_sha256(b)


def test_write_report_csv_json_and_never_overwrites(tiny_bundle_path, tmp_path):
    rep = build_report(case="Case_001", image_layer="Case_001 t1", bundle=load_bundle(tiny_bundle_path),
                       sequences=["t1", "t2"], volumes_ml=VOLUMES, date=DATE)
    csv_path, json_path = write_report(rep, tmp_path / "report.csv")
    assert (csv_path, json_path) == report_paths(tmp_path / "report")[:2]
    assert json.loads(json_path.read_text()) == rep
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 1 and rows[0]["case"] == "Case_001" and rows[0]["sequences"] == "t1+t2"
    assert rows[0]["WT_ml"] == "12.346" and rows[0]["ET_ml"] == "0.0" and rows[0]["model_source_sequence"] == ""
    before = csv_path.read_bytes()
    with pytest.raises(BiglError, match="already exist"):
        write_report({**rep, "case": "other"}, tmp_path / "report")
    assert csv_path.read_bytes() == before
    (tmp_path / "pic.png").write_bytes(b"x")              # the picture of a report counts too
    with pytest.raises(BiglError, match="pic.png"):
        write_report(rep, tmp_path / "pic.json", picture=lambda p: Path(p).write_bytes(b"new"))
    assert not (tmp_path / "pic.csv").exists() and (tmp_path / "pic.png").read_bytes() == b"x"
    write_report(rep, tmp_path / "pic", picture=lambda p: Path(p).write_bytes(b"new"), overwrite=True)
    assert (tmp_path / "pic.png").read_bytes() == b"new" and (tmp_path / "pic.csv").exists()
    write_report({**rep, "case": "other"}, tmp_path / "report", overwrite=True)
    assert "other" in csv_path.read_text()
    with pytest.raises(BiglError, match="no such folder"):
        write_report(rep, tmp_path / "missing" / "r")


def test_csv_has_one_column_per_field():
    text = report_csv({"case": "a,b", "volumes_ml": {"WT": 1.0}, "model_sha256": None})
    assert text.splitlines() == ["case,WT_ml,model_sha256", '"a,b",1.0,']
