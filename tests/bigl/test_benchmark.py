import copy
from dataclasses import asdict, replace

import numpy as np
import pytest

from bigl.adapt import AdaptConfig, TranslatorTrainConfig
from bigl.benchmark import (
    ROWS,
    bundled_suffix,
    gap_matrix_markdown,
    gtl_row,
    plane_slices,
    results_markdown,
    run_benchmark,
    split_dataset,
)
from bigl.errors import BiglError
from bigl.io import list_cases
from bigl.models.segmenter import SegmenterConfig
from bigl.models.translator import TranslatorConfig
from bigl.phantom import write_dataset
from bigl.train import TrainConfig


def test_splits_are_subject_disjoint_and_seeded(tiny_dataset, tmp_path):
    write_dataset(tmp_path, n_cases=10, seed=1, preset="tiny")
    cases = list_cases(tmp_path)
    s = split_dataset(cases, seed=3)
    ids = [c.case_id for part in (s.source, s.target, s.test) for c in part]
    assert len(ids) == len(set(ids)) == 10 and len(s.source) == 4 and len(s.target) == 4 and len(s.test) == 2
    assert [c.case_id for c in split_dataset(cases, seed=3).test] == [c.case_id for c in s.test]
    with pytest.raises(BiglError, match="at least 6"):
        split_dataset(cases[:5], seed=0)


def _summary(d):
    reg = {"dice_mean": d, "dice_std": 0.1, "hd95_mean": 10.0, "hd95_std": 1.0}
    return {r: dict(reg) for r in ("WT", "TC", "ET", "average")}


def test_markdown_table_and_gap():
    runs = [{"row": ROWS[k][0], "seed": 0, "seconds": 1.0, "summary": _summary(d)}
            for k, d in (("source-only", 0.1), ("bigl", 0.7), ("target-only", 0.8))]
    md = results_markdown({"source": "t1", "target": "t2", "data": "d", "seeds": [0], "runs": runs})
    assert "| Source only | 10.00 ± 10.00" in md and "| BiGL: output + feature + attention | 70.00" in md
    assert "BiGL: output + feature + attention: 86 %" in md   # (0.7 - 0.1) / (0.8 - 0.1)
    runs[2]["summary"] = _summary(0.05)                        # target-only below source-only: no gap
    md = results_markdown({"source": "t1", "target": "t2", "data": "d", "seeds": [0], "runs": runs})
    assert "none to close" in md and "86 %" not in md


def test_resume_reads_fields_added_since_as_their_defaults():
    from bigl.benchmark import _with_defaults
    from bigl.checkpoint import jsonable

    defaults = jsonable(asdict(TrainConfig()))
    saved = copy.deepcopy(defaults)
    del saved["segmenter"]["head"], saved["deep_supervision"]   # a model saved before these fields existed
    assert _with_defaults(saved, defaults) == defaults
    saved["segmenter"]["widths"] = [8, 16]                        # what it was trained with still counts
    assert _with_defaults(saved, defaults)["segmenter"]["widths"] == [8, 16]
    assert _with_defaults({**defaults, "gone": 1}, defaults)["gone"] == 1   # a field removed since: no match
    assert _with_defaults(None, defaults) is None


def test_tiny_benchmark_end_to_end_and_resume(tmp_path, monkeypatch):
    write_dataset(tmp_path / "data", n_cases=6, seed=2, preset="tiny")
    tcfg = TrainConfig(steps=2, batch_size=2, val_every=2, segmenter=SegmenterConfig(widths=(8, 16, 32)))
    acfg = AdaptConfig(steps=2, batch_size=2, checkpoint_every=1, selection_volumes=1,
                       translator=TranslatorTrainConfig(steps=1, batch_size=1,
                                                        translator=TranslatorConfig(width=8, n_res_blocks=1)))
    res = run_benchmark(tmp_path / "data", "t1", "t2", tmp_path / "out", rows=("source-only", "translate", "bigl",
                        "target-only"), train_config=tcfg, adapt_config=acfg, device="cpu")
    names = [ROWS[k][0] for k in ("source-only", "translate", "bigl", "target-only")]
    assert [r["row"] for r in res["runs"]] == names[:3] + [names[2] + bundled_suffix("translate"), names[3]]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Share of the source-only → target-only gap" in md and "Unsupervised checkpoint selection" in md
    assert (tmp_path / "out" / "figure.png").stat().st_size > 1000
    bigl_run = next(r for r in res["runs"] if r["row"] == ROWS["bigl"][0])
    assert {s["step"] for s in bigl_run["snapshots"]} == {1, 2}
    assert 0 <= np.mean([c["WT"]["dice"] for c in bigl_run["per_case"]]) <= 1

    # --resume: the saved source model and translator are reused (nothing is trained again) and the
    # rows run now replace those of the same name and seed; the others stay
    def no_training(*a, **k):
        raise AssertionError("resume trained again")

    monkeypatch.setattr("bigl.benchmark.train", no_training)
    monkeypatch.setattr("bigl.adapt.driver.train_translator", no_training)
    again = run_benchmark(tmp_path / "data", "t1", "t2", tmp_path / "out", rows=("bigl",), train_config=tcfg,
                          adapt_config=acfg, device="cpu", resume=True)
    assert sorted(r["row"] for r in again["runs"]) == sorted(r["row"] for r in res["runs"])
    assert again["runs"][-1]["row"] == names[2] + bundled_suffix("translate")
    # other settings: the source model is not reused (training is attempted)
    with pytest.raises(AssertionError, match="resume trained again"):
        run_benchmark(tmp_path / "data", "t1", "t2", tmp_path / "out", rows=("bigl",),
                      train_config=replace(tcfg, steps=3), adapt_config=acfg, device="cpu", resume=True)
    with pytest.raises(BiglError, match="t1 → t2 on"):
        run_benchmark(tmp_path / "data", "t2", "t1", tmp_path / "out", rows=("bigl",), device="cpu", resume=True)


def test_new_rows_lambda_sweep_and_three_plane_figure(tmp_path):
    from PIL import Image

    from bigl.benchmark import _slug
    from bigl.checkpoint import load_bundle

    write_dataset(tmp_path / "data", n_cases=6, seed=2, preset="tiny")
    tcfg = TrainConfig(steps=2, batch_size=2, val_every=2, segmenter=SegmenterConfig(widths=(8, 16, 32)))
    acfg = AdaptConfig(steps=1, batch_size=2, checkpoint_every=1, selection_volumes=1,
                       translator=TranslatorTrainConfig(steps=1, batch_size=1,
                                                        translator=TranslatorConfig(width=8, n_res_blocks=1)))
    rows = ("source-only", "source-only-contrast", "sifa", "target-only", "target-only-multi")
    res = run_benchmark(tmp_path / "data", "t1", "t2", tmp_path / "out", rows=rows, train_config=tcfg,
                        adapt_config=acfg, lambda_gtl=(0.02, 0.5), device="cpu")
    names = [r["row"] for r in res["runs"]]
    assert names[:5] == [ROWS[k][0] for k in rows]
    assert names[5] == gtl_row(0.02) and names[7] == gtl_row(0.5)       # each BiGL run adds its as-bundled row
    seed_dir = tmp_path / "out" / "seed0"
    gin = load_bundle(seed_dir / "source_t1_gin.safetensors")
    assert gin.provenance["config"]["augmentation"]["contrast_method"] == "gin"
    multi = load_bundle(seed_dir / "target_multi.safetensors")
    assert multi.sequences == ("t1", "t1ce", "t2", "flair")
    assert load_bundle(seed_dir / f"{_slug(gtl_row(0.02))}.safetensors").provenance["config"]["lambda_gtl"] == 0.02
    assert load_bundle(seed_dir / f"{_slug(ROWS['sifa'][0])}.safetensors").provenance["method"] == "sifa"
    # the figure: three planes (rows) x (image, ground truth, every single-sequence row's model)
    fig = Image.open(tmp_path / "out" / "figure.png")
    single = len([n for n in dict.fromkeys(names) if n != ROWS["target-only-multi"][0]])
    assert fig.height > 2.5 * fig.width / (2 + single)


def test_plane_slices_cut_through_the_centre():
    vol = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    planes = plane_slices(vol, (1, 2, 3))
    assert planes["transverse"].shape == (5, 6) and planes["coronal"].shape == (4, 6)
    assert planes["sagittal"].shape == (4, 5)
    assert planes["transverse"][2, 3] == planes["coronal"][1, 3] == planes["sagittal"][1, 2] == vol[1, 2, 3]


def test_gap_matrix_has_one_column_per_direction(tmp_path):
    import json

    from bigl.cli import main

    def part(name, target, seed, dice, upper=0.7, extra=()):
        runs = [{"row": ROWS[k][0], "seed": seed, "seconds": 1.0, "summary": _summary(d)}
                for k, d in (("source-only", 0.1), ("translate", 0.4), ("bigl", dice), ("target-only", upper),
                             *extra)]
        path = tmp_path / name / "results.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"data": "d", "source": "t1", "target": target, "seeds": [seed], "runs": runs}))
        return str(path)

    paths = [part("a", "t2", 0, 0.55, extra=[("adaptseg", 0.4)]), part("b", "t2", 1, 0.65, upper=0.9),
             part("c", "flair", 0, 0.25)]
    md = gap_matrix_markdown(paths)
    assert "| method | T1→T2 (2 seeds) | T1→FLAIR (1 seed) |" in md
    assert "| BiGL: output + feature + attention | 71 | 25 |" in md      # (0.6 - 0.1) / 0.7 and (0.25 - 0.1) / 0.6
    assert "| Translate only | 43 | 50 |" in md
    # a row of seed 0 only is held against seed 0's bounds, (0.4 - 0.1) / 0.6, and marked
    assert "| AdaptSegNet | 50 (1 seed) | – |" in md
    out = tmp_path / "matrix.md"
    assert main(["gap-matrix", *paths, "--out", str(out)]) == 0 and "T1→FLAIR" in out.read_text()
    assert main(["gap-matrix", *paths, "--out", str(out)]) == 2          # never overwritten silently


def test_merge_results_averages_seeds_run_apart(tmp_path):
    import json

    from bigl.cli import main

    def part(seed, dice, target="t2"):
        runs = [{"row": ROWS[k][0], "seed": seed, "seconds": 1.0, "summary": _summary(d)}
                for k, d in (("source-only", 0.1), ("bigl", dice), ("target-only", 0.8))]
        path = tmp_path / f"p{seed}{target}" / "results.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"data": "d", "source": "t1", "target": target, "seeds": [seed], "runs": runs}))
        return str(path)

    a, b = part(0, 0.6), part(1, 0.8)
    assert main(["merge-results", a, b, "--out", str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m" / "results.json").read_text())
    assert merged["seeds"] == [0, 1] and len(merged["runs"]) == 6
    md = (tmp_path / "m" / "results.md").read_text()
    assert "| BiGL: output + feature + attention | 70.00 ± 10.00 | " in md and "| 2 |" in md   # mean of 60 and 80
    # nothing is overwritten silently; mismatched or duplicate parts are refused with the file named
    assert main(["merge-results", a, "--out", str(tmp_path / "m")]) == 2
    assert main(["merge-results", a, part(2, 0.5, target="flair"), "--out", str(tmp_path / "x")]) == 2
    assert main(["merge-results", a, a, "--out", str(tmp_path / "y")]) == 2
    (tmp_path / "bad.json").write_text("{")
    assert main(["merge-results", str(tmp_path / "bad.json"), "--out", str(tmp_path / "z")]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_adapt_variants_script_reports_every_inference_mode(tmp_path, tiny_bundle_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    write_dataset(tmp_path / "data", n_cases=6, seed=2, preset="tiny")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "adapt_variants.py"
    out = subprocess.run([sys.executable, str(script), "--model", str(tiny_bundle_path), "--data",
                          str(tmp_path / "data"), "--source", "t1", "--target", "t2", "--methods", "translate",
                          "bigl", "--device", "cpu", "--translator", '{"steps": 1, "batch_size": 1}',
                          "--generator", '{"width": 4, "n_down": 0, "n_res_blocks": 1, "kernel": 3}',
                          "--adapt", '{"steps": 1, "batch_size": 1, "selection_volumes": 1}'],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["method"], r["inference"]) for r in rows] == [("translate", m) for m in ("direct", "translate",
                                                             "ensemble")] + [("bigl", m) for m in
                                                                             ("direct", "translate", "ensemble")]
    assert all(0 <= r["dice"]["average"] <= 100 for r in rows)


def test_translator_starts_script_prints_every_start_and_the_choice(tmp_path, tiny_bundle_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    write_dataset(tmp_path / "data", n_cases=6, seed=2, preset="tiny")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "translator_starts.py"
    out = subprocess.run([sys.executable, str(script), "--model", str(tiny_bundle_path), "--data",
                          str(tmp_path / "data"), "--source", "t1", "--target", "t2", "--translator",
                          '{"steps": 5, "starts": 2, "max_starts": 3, "screen_steps": 1, "batch_size": 1, '
                          '"screen_slices": 2}'], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    *starts, last = rows
    assert [r["start"] for r in starts] == list(range(last["starts"])) and last["after_steps"] == 1
    assert 2 <= last["starts"] <= 3 and last["identity_distance"] > 0
    assert last["chosen_start"] == min(starts, key=lambda r: r["distance"])["start"]
    assert all(-1 <= r["check_corr_input_output"] <= 1 for r in starts)


def _tiny_data_and_translator(tmp_path, tiny_bundle_path):
    """tmp_path/data (6 tiny cases) and tmp_path/tr.safetensors, a translate-only bundle of split 0."""
    from bigl.adapt import AdaptConfig, TranslatorTrainConfig, adapt
    from bigl.benchmark import split_dataset
    from bigl.checkpoint import load_bundle, save_bundle
    from bigl.io import list_cases
    from bigl.models.translator import TranslatorConfig

    write_dataset(tmp_path / "data", n_cases=6, seed=2, preset="tiny")
    splits = split_dataset(list_cases(tmp_path / "data"), 0)
    tiny = TranslatorTrainConfig(steps=1, batch_size=1, starts=1, translator=TranslatorConfig(width=4, n_down=0,
                                                                                             n_res_blocks=1, kernel=3))
    translated = adapt(load_bundle(tiny_bundle_path), splits.source, "t1", splits.target, "t2",
                       AdaptConfig(method="translate", translator=tiny), device="cpu").bundle
    save_bundle(translated, tmp_path / "tr.safetensors")


def test_snapshot_scores_script_scores_every_snapshot(tmp_path, tiny_bundle_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    _tiny_data_and_translator(tmp_path, tiny_bundle_path)
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "snapshot_scores.py"
    out = subprocess.run([sys.executable, str(script), "--model", str(tiny_bundle_path), "--translators",
                          str(tmp_path / "tr.safetensors"), "--data", str(tmp_path / "data"), "--source", "t1",
                          "--target", "t2", "--device", "cpu", "--adapt",
                          '{"steps": 2, "batch_size": 1, "checkpoint_every": 1, "selection_volumes": 1}'],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["step"] for r in rows[:-1]] == [1, 2] and rows[-1]["chosen_step"] in (1, 2)
    assert all(0 <= r[m] <= 100 for r in rows[:-1] for m in ("direct", "ensemble", "translate"))


def test_shortcut_probe_script_reports_steps(tmp_path, tiny_bundle_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    _tiny_data_and_translator(tmp_path, tiny_bundle_path)
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "shortcut_probe.py"
    out = subprocess.run([sys.executable, str(script), "--model", str(tiny_bundle_path), "--translators",
                          str(tmp_path / "tr.safetensors"), "--data", str(tmp_path / "data"), "--source", "t1",
                          "--target", "t2", "--steps", "2", "--every", "1", "--adapt",
                          '{"batch_size": 1, "lambda_seg_s2t": 1.0}'],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert {"seg_s", "seg_s2t", "anchor", "adv"} <= set(rows[-1]["terms"])
    assert all(0 <= r[m] <= 100 for r in rows for m in ("direct", "translate"))


def test_rescore_script_scores_the_rows_of_a_benchmark_run(tmp_path, tiny_bundle_path):
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from bigl.benchmark import ROWS, row_bundle_path

    _tiny_data_and_translator(tmp_path, tiny_bundle_path)
    seed_dir = tmp_path / "run" / "seed0"
    seed_dir.mkdir(parents=True)
    rows = [ROWS["translate"][0], ROWS["source-only"][0]]        # the source-only row's bundle is missing
    (tmp_path / "run" / "results.json").write_text(json.dumps({"seeds": [0], "runs": [{"row": r, "seed": 0}
                                                                                       for r in rows]}))
    shutil.copy(tmp_path / "tr.safetensors", row_bundle_path(seed_dir, ROWS["translate"][0]))
    shutil.copy(tiny_bundle_path, seed_dir / "source_t1.safetensors")  # a trained model, not a row
    shutil.copy(tiny_bundle_path, seed_dir / "source_t1.last.safetensors")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "rescore.py"

    def rescore(*extra):
        out = subprocess.run([sys.executable, str(script), "--runs", str(tmp_path / "run"), "--data",
                              str(tmp_path / "data"), "--device", "cpu", *extra],
                             capture_output=True, text=True, timeout=300, check=False)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    *cases, mean = rescore("--target", "t2")
    assert [(r["seed"], r["row"]) for r in cases] == [(0, "translate_only")]
    assert 0 <= cases[0]["average"] <= 100 and mean == {"row": "translate_only", "seeds": 1,
                                                        "mean average Dice": cases[0]["average"]}
    *cases, _ = rescore("--target", "t1", "--rows", "source_t1")
    assert [r["row"] for r in cases] == ["source_t1"]
