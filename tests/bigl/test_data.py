"""The data path: on-disk cache of preprocessed cases and the torch.utils.data slice loader."""

import logging
import os
import shutil

import numpy as np
import pytest
import torch

from bigl.data.cache import CachedVolume, cache_cases, default_cache_dir, load_prepared
from bigl.data.slices import batches, shard
from bigl.io import list_cases
from bigl.preprocess import patch_size_for


@pytest.fixture()
def dataset(tiny_dataset, tmp_path):
    """A private copy of the tiny dataset (tests here change files and build caches beside it)."""
    return shutil.copytree(tiny_dataset, tmp_path / "data")


def test_cache_matches_in_memory_preparation_and_is_reused(dataset, caplog):
    cases = list_cases(dataset)[:2]
    with caplog.at_level(logging.INFO, logger="bigl.data.cache"):
        cached = cache_cases(cases, "t1", labels=True, inplane_mm=(5.0, 5.0))
    assert "preprocessing 2 of 2 cases" in caplog.text and str(default_cache_dir(dataset)) in caplog.text
    assert default_cache_dir(dataset) == dataset.parent / "data.bigl-cache"
    ref = load_prepared(cases, "t1", labels=True, inplane_mm=(5.0, 5.0))
    for c, r in zip(cached, ref):
        assert isinstance(c, CachedVolume) and isinstance(c.image, np.memmap)
        np.testing.assert_array_equal(c.image, r.image)
        np.testing.assert_array_equal(c.mask, r.mask)
        np.testing.assert_array_equal(c.target, r.target)
        assert c.spacing == r.spacing and c.brain_center == r.brain_center
        assert c.brain_slices.tolist() == r.brain_slices.tolist()
        assert c.tumour_slices.tolist() == r.tumour_slices.tolist()
    assert patch_size_for(cached, 8) == patch_size_for(ref, 8)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bigl.data.cache"):
        again = cache_cases(cases, "t1", labels=True, inplane_mm=(5.0, 5.0))
    assert "preprocessing" not in caplog.text and [a.folder for a in again] == [c.folder for c in cached]


def test_cache_is_rebuilt_when_a_file_or_the_spacing_changes(dataset, tmp_path):
    case = list_cases(dataset)[0]
    first = cache_cases([case], "t1", labels=False, cache_dir=tmp_path / "cache")[0]
    st = case.files["t1"].stat()
    os.utime(case.files["t1"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))      # the file was replaced
    second = cache_cases([case], "t1", labels=False, cache_dir=tmp_path / "cache")[0]
    assert second.folder != first.folder and not first.folder.exists()            # old entry removed
    # another in-plane grid (training resamples, adaptation does not) is an entry of its own: building one
    # must not remove the other, which a concurrent run may be reading (two benchmark seeds crashed so)
    third = cache_cases([case], "t1", labels=False, inplane_mm=(3.0, 3.0), cache_dir=tmp_path / "cache")[0]
    assert third.folder != second.folder and third.spacing[1:] == (3.0, 3.0)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([second.folder.name, third.folder.name])
    assert np.array_equal(second.image, load_prepared([case], "t1", labels=False)[0].image)
    # another sequence of the same case is an entry of its own
    t2 = cache_cases([case], "t2", labels=False, cache_dir=tmp_path / "cache")[0]
    assert third.folder.exists() and t2.folder.exists() and t2.target is None


def test_an_interrupted_build_leaves_nothing_that_is_read(dataset, tmp_path, monkeypatch):
    import bigl.data.cache as cache

    case = list_cases(dataset)[0]
    monkeypatch.setattr(cache.np, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        cache_cases([case], "t1", labels=True, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    assert cache_cases([case], "t1", labels=True, cache_dir=tmp_path / "cache")[0].labelled


def test_a_build_removes_killed_builds_but_not_running_ones(dataset, tmp_path):
    import subprocess
    import sys

    case = list_cases(dataset)[0]
    entry = cache_cases([case], "t1", labels=False, cache_dir=tmp_path / "cache")[0].folder
    shutil.rmtree(entry)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / "cache" / f".{entry.name}.{int(dead.stdout)}.abc123"
    running = tmp_path / "cache" / f".{entry.name}.{os.getpid()}.def456"     # this process: alive
    for folder in (killed, running):
        folder.mkdir()
    cache_cases([case], "t1", labels=False, cache_dir=tmp_path / "cache")
    assert not killed.exists() and running.exists() and entry.exists()


def test_an_entry_another_run_finished_meanwhile_is_kept_not_rebuilt(dataset, tmp_path, monkeypatch):
    """Two runs started together on one dataset: the second listed the case as missing, the first then finished
    it. The second used to remove that entry as stale and rebuild it, under the first run reading it
    (FileNotFoundError on its meta.json)."""
    import bigl.data.cache as cache

    case = list_cases(dataset)[0]
    builds, other = [], {}
    real_load = cache.load_prepared
    monkeypatch.setattr(cache, "load_prepared", lambda *a, **k: builds.append(1) or real_load(*a, **k))

    def other_run_finishes_first(progress):
        if not other:      # before this run builds: the other run writes the same entry
            other["vol"] = cache_cases([case], "t1", labels=True, cache_dir=tmp_path / "cache")[0]
            other["inode"] = (other["vol"].folder / "image.npy").stat().st_ino

    mine = cache_cases([case], "t1", labels=True, cache_dir=tmp_path / "cache", progress=other_run_finishes_first)[0]
    assert len(builds) == 1 and mine.folder == other["vol"].folder
    assert (mine.folder / "image.npy").stat().st_ino == other["inode"]     # not removed and written again
    np.testing.assert_array_equal(other["vol"].image, mine.image)


def test_batches_are_reproducible_with_any_worker_count(dataset, tmp_path):
    vols = cache_cases(list_cases(dataset), "t1", labels=True, cache_dir=tmp_path / "cache")
    kw = dict(batch_size=3, n_batches=4, seed=(5, 0), tumour_fraction=0.5, jitter=4, augment=True, context=1)
    a = list(batches(vols, (32, 32), workers=0, **kw))
    b = list(batches(vols, (32, 32), workers=2, **kw))
    assert len(a) == 4 and a[0][0].shape == (3, 3, 32, 32) and a[0][1].shape == (3, 32, 32)
    assert a[0][1].dtype == torch.int64
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = next(batches(vols, (32, 32), workers=0, **(kw | {"seed": (5, 1)})))
    assert not torch.equal(other[0], a[0][0])                       # another rank draws other slices
    unlabelled = next(batches(load_prepared(list_cases(dataset)[:1], "t2", labels=False), (32, 32), **kw))
    assert unlabelled[1] is None and (unlabelled[0][:, :, 0, 0] == 0).all()   # background stays 0


def test_shard_splits_cases_between_ranks():
    assert shard(list(range(5)), 0, 2) == [0, 2, 4] and shard(list(range(5)), 1, 2) == [1, 3]
    assert shard([0], 1, 2) == [0]


def test_cache_falls_back_to_the_user_cache_when_beside_the_dataset_is_not_writable(dataset, tmp_path, monkeypatch):
    import bigl.data.cache as cache

    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(cache, "default_cache_dir", lambda d: tmp_path / "a_file" / "x.bigl-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    vol = cache_cases(list_cases(dataset)[:1], "t1", labels=False)[0]
    assert vol.folder.parent.parent == tmp_path / "user" / "bigl" and vol.folder.parent.name.startswith("data-")


def test_loading_off_the_main_thread_stays_in_process(dataset, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    vols = cache_cases(list_cases(dataset)[:2], "t1", labels=True, cache_dir=tmp_path / "cache")
    kw = dict(batch_size=2, n_batches=2, seed=0, tumour_fraction=0.5, jitter=0, augment=False, workers=2)
    with ThreadPoolExecutor(1) as pool:   # a GUI's background job: no fork of a threaded process
        x, y = pool.submit(lambda: next(batches(vols, (32, 32), **kw))).result()
    assert torch.equal(x, next(batches(vols, (32, 32), **kw))[0])
