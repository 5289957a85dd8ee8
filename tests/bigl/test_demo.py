"""`bigl demo` tells the product's story on the bundled sample cases, with the bundled models."""

from __future__ import annotations

from bigl.demo import run_demo
from bigl.phantom import SAMPLE_DIR


def test_demo_shows_the_t1_model_failing_on_t2_and_the_adapted_model_recovering():
    report = run_demo(SAMPLE_DIR, device="cpu")
    on_t1, on_t2, adapted, multi = report.mean_dice.values()
    for title in report.mean_dice:
        assert title in report.text
    assert on_t2 < 0.15                       # the T1 model never saw T2
    assert adapted > on_t2 + 0.15             # adaptation without T2 labels recovers a real share of it
    assert multi > 0.7 and on_t1 > 0.3
    assert "t1_to_t2.safetensors (adapted from t1 to t2" in report.text


def test_demo_adapts_live_with_progress(tmp_path):
    """`bigl demo --adapt`: section 3 is a model adapted now, on the sample cases, reported step by step."""
    import shutil

    from bigl.adapt import AdaptConfig, TranslatorTrainConfig
    from bigl.io import list_cases

    for case in list_cases(SAMPLE_DIR)[:2]:
        shutil.copytree(case.path, tmp_path / case.case_id)
    events = []
    tiny = AdaptConfig(steps=2, batch_size=2, checkpoint_every=1, selection_volumes=1,
                       translator=TranslatorTrainConfig(steps=2, batch_size=2, starts=1, screen_steps=0))
    notes = []
    report = run_demo(tmp_path, device="cpu", live=True, progress=events.append, adapt_config=tiny,
                      notify=notes.append)
    assert len(notes) == 1 and notes[0].startswith("Adapting the T1 model to T2 now (2 translator steps, then 2")
    assert "adapted just now" in report.text and "model: adapted now (adapted from t1 to t2" in report.text
    assert {e.stage for e in events} >= {"align"} and len(report.mean_dice) == 4
