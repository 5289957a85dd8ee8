import dataclasses
import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from bigl import checkpoint
from bigl.checkpoint import Bundle, load_bundle, read_document, save_bundle
from bigl.errors import BiglError
from bigl.models.segmenter import DualAttentionUNet, SegmenterConfig
from bigl.models.translator import Generator, TranslatorConfig


def _bundle(**kw):
    torch.manual_seed(0)
    seg = DualAttentionUNet(SegmenterConfig(widths=(8, 16, 32)))
    return Bundle(segmenter=seg, sequences=("t1",), patch_size=(32, 40), provenance={"steps": 3, "seed": 1}, **kw)


def test_round_trip_same_outputs_and_document(tmp_path):
    b = _bundle()
    p = save_bundle(b, tmp_path / "m.safetensors")
    loaded = load_bundle(p)
    x = torch.randn(2, 1, 32, 40)
    b.segmenter.eval()
    assert torch.equal(b.segmenter(x), loaded.segmenter(x))
    assert loaded.sequences == ("t1",) and loaded.patch_size == (32, 40)
    doc = read_document(p)
    assert doc["provenance"] == {"steps": 3, "seed": 1}
    assert doc["labels"]["class_to_label"] == [0, 1, 2, 4]
    assert doc["library_version"] and doc["normalization"]["method"] == "zscore_in_brain"
    assert doc["segmenter"]["widths"] == [8, 16, 32]


def test_round_trip_with_translators(tmp_path):
    g = Generator(TranslatorConfig(width=8, n_res_blocks=1))
    g_s2t = Generator(TranslatorConfig(width=8, n_res_blocks=1, cond_channels=3))  # label-conditioned G_s→t
    b = _bundle(translator_t2s=g, translator_s2t=g_s2t, inference="ensemble", source_sequence="t1")
    loaded = load_bundle(save_bundle(b, tmp_path / "a.safetensors"))
    x, cond = torch.randn(1, 1, 32, 40), torch.rand(1, 3, 32, 40)
    assert torch.equal(g.eval()(x), loaded.translator_t2s(x))
    assert torch.equal(g_s2t.eval()(x, None, cond), loaded.translator_s2t(x, None, cond))
    assert loaded.translator_s2t.config.cond_channels == 3 and loaded.translator_t2s.config.cond_channels == 0
    assert loaded.inference == "ensemble" and loaded.source_sequence == "t1"


def test_directory_bundle(tmp_path):
    save_bundle(_bundle(), tmp_path / "d" / "m.safetensors")
    assert load_bundle(tmp_path / "d").sequences == ("t1",)


def test_refuses_overwrite_and_bad_suffix(tmp_path):
    p = save_bundle(_bundle(), tmp_path / "m.safetensors")
    with pytest.raises(BiglError, match="already exists.*--overwrite"):
        save_bundle(_bundle(), p)
    with pytest.raises(BiglError, match=r"\.safetensors"):
        save_bundle(_bundle(), tmp_path / "m.pt")


def test_interrupted_save_leaves_old_bundle_intact(tmp_path, monkeypatch):
    p = save_bundle(_bundle(), tmp_path / "m.safetensors")
    before = hashlib.sha256(p.read_bytes()).hexdigest()

    def boom(self, data):  # the write to the temporary file is interrupted half-way
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.Path, "write_bytes", boom)
    with pytest.raises(KeyboardInterrupt):
        save_bundle(_bundle(), p, overwrite=True)
    assert hashlib.sha256(p.read_bytes()).hexdigest() == before
    assert [f.name for f in tmp_path.iterdir()] == ["m.safetensors"]   # no temporary file left behind


def test_corrupt_file(tmp_path):
    p = tmp_path / "junk.safetensors"
    p.write_bytes(b"\x00\x01 not a bundle at all" * 10)
    with pytest.raises(BiglError, match="junk.safetensors.*not a readable model bundle"):
        load_bundle(p)


def test_truncated_bundle(tmp_path):
    p = save_bundle(_bundle(), tmp_path / "m.safetensors")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(BiglError, match="m.safetensors"):
        load_bundle(p)


def test_pickle_is_refused_not_unpickled(tmp_path):
    p = tmp_path / "model.safetensors"
    torch.save({"a": torch.zeros(1)}, p)
    with pytest.raises(BiglError, match="model.safetensors"):
        load_bundle(p)


def test_foreign_safetensors(tmp_path):
    p = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(BiglError, match="not a bigl model bundle"):
        load_bundle(p)


def test_newer_format_is_refused(tmp_path):
    b = _bundle()
    p = tmp_path / "new.safetensors"
    save_file(checkpoint._state(b), str(p), metadata={"format": "bigl-bundle", "format_version": "99",
                                                     "document": json.dumps(b.document())})
    with pytest.raises(BiglError, match="newer bigl.*upgrade"):
        load_bundle(p)


def test_weights_not_matching_config(tmp_path):
    b = _bundle()
    doc = b.document()
    doc["segmenter"]["widths"] = [8, 16, 64]
    p = tmp_path / "bad.safetensors"
    save_file(checkpoint._state(b), str(p), metadata={"format": "bigl-bundle", "format_version": "1",
                                                     "document": json.dumps(doc)})
    with pytest.raises(BiglError, match="bad.safetensors.*do not match"):
        load_bundle(p)


def test_missing_bundle_names_the_path(tmp_path):
    with pytest.raises(BiglError, match="nope.safetensors"):
        load_bundle(tmp_path / "nope.safetensors")


def _member(seed, widths=(8, 16, 32)):
    torch.manual_seed(seed)
    return Bundle(segmenter=DualAttentionUNet(SegmenterConfig(widths=widths)), sequences=("t1",), patch_size=(32, 40),
                  provenance={"seed": seed})


def test_ensemble_round_trip_keeps_every_segmenter_in_order(tmp_path):
    pair = checkpoint.ensemble([_member(1), _member(2)])
    triple = checkpoint.ensemble([pair, _member(3)], provenance={"command": "test"})   # an ensemble of ensembles
    loaded = load_bundle(save_bundle(triple, tmp_path / "e.safetensors"))
    assert len(loaded.segmenters) == 3 and read_document(loaded.path)["segmenters"] == 3
    x = torch.randn(1, 1, 32, 40)
    for seed, net in zip((1, 2, 3), loaded.segmenters):
        assert torch.equal(_member(seed).segmenter.eval()(x), net(x))
    made = loaded.provenance["ensemble_of"]
    assert loaded.provenance["command"] == "test" and [m["segmenters"] for m in made] == [2, 1]
    assert made[1]["provenance"] == {"seed": 3}
    assert not any(n.training for n in loaded.segmenters)


@pytest.mark.parametrize("other, match", [
    (lambda: _member(2, widths=(8, 16, 64)), "segmenter config"),
    (lambda: dataclasses.replace(_member(2), sequences=("t2",)), "sequences"),
    (lambda: dataclasses.replace(_member(2), normalization={"inplane_spacing_mm": 1.0}), "normalisation"),
    (lambda: dataclasses.replace(_member(2), translator_t2s=Generator(TranslatorConfig(width=8, n_res_blocks=1)),
                                 inference="translate"), "adapted bundle"),
])
def test_ensemble_refuses_members_that_differ(other, match):
    with pytest.raises(BiglError, match=match):
        checkpoint.ensemble([_member(1), other()])
    with pytest.raises(BiglError, match="at least two"):
        checkpoint.ensemble([_member(1)])


def test_ensemble_accepts_members_trained_on_other_windows():
    # another seed splits the cases otherwise, so its training window differs; inference cuts its own window
    other = dataclasses.replace(_member(2), patch_size=(32, 48))
    assert checkpoint.ensemble([_member(1), other]).patch_size == (32, 40)


def test_segmenter_count_must_match_the_weights(tmp_path):
    b = checkpoint.ensemble([_member(1), _member(2)])
    for count, match in ((3, "missing"), (1, "unknown parts"), (0, "'segmenters' must be"), ("2", "'segmenters' must be")):
        doc = b.document() | {"segmenters": count}
        p = tmp_path / f"bad{count}.safetensors"
        save_file(checkpoint._state(b), str(p), metadata={"format": "bigl-bundle", "format_version": "1",
                                                         "document": json.dumps(doc)})
        with pytest.raises(BiglError, match=match):
            load_bundle(p)
