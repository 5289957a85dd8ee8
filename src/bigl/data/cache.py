"""On-disk cache of preprocessed cases: what training and adaptation read instead of NIfTI files.

A case is read, normalised (:data:`bigl.preprocess.NORMALIZATION`) and, if asked,
brought to one in-plane spacing once; the result is kept as ``.npy`` files that
are memory-mapped slice by slice while training runs, so the memory a run
needs does not grow with the number of cases.

Layout: ``<cache root>/<case id>__<sequences>[__labels]__<key>/`` holding

- ``image.npy``: float32 ``(z, y, x)``, or ``(z, C, y, x)`` for several sequences;
- ``mask.npy``: bool ``(z, y, x)`` brain mask;
- ``target.npy``: int8 ``(z, y, x)`` class indices 0..3 (labelled entries only);
- ``meta.json``: spacing, brain and tumour slice indices, the brain's centre.

``key`` hashes the source files' names, sizes and modification times, the
sequences, the normalisation, the in-plane spacing and :data:`CACHE_VERSION`;
when any of them changes the entry is rebuilt and the old one removed. An
entry appears by renaming a finished temporary folder, so an interrupted build
leaves nothing that is read later. The cache root defaults to
``<dataset folder>.bigl-cache`` beside the dataset folder, or, where that
cannot be written, ``~/.cache/bigl/<dataset name>-<hash>`` (``$XDG_CACHE_HOME``);
``cache_dir`` (the CLI's ``--cache-dir``) overrides both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bigl._fs import pid_alive
from bigl.errors import BiglError
from bigl.io import Case, load_images, load_labels
from bigl.preprocess import NORMALIZATION, PreparedVolume, bounding_box, prepare, resample_prepared
from bigl.progress import CancelFn, ProgressFn, Reporter

log = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_SUFFIX = ".bigl-cache"


def load_prepared(cases: list[Case], sequences: str | Sequence[str], *, labels: bool,
                  inplane_mm: tuple[float, float] | None = None) -> list[PreparedVolume]:
    """Read and normalise one sequence, or several as channels (and, if asked, the labels) of each case, in memory.

    ``inplane_mm``: bring every volume to this in-plane (y, x) spacing
    (:func:`bigl.preprocess.resample_prepared`); None keeps each as it is.
    """
    seqs = [sequences] if isinstance(sequences, str) else list(sequences)
    out = []
    for case in cases:
        images = load_images(case, seqs)
        seg = load_labels(case).data if labels else None
        data = images[seqs[0]].data if len(seqs) == 1 else [images[s].data for s in seqs]
        vol = prepare(data, seg, name=case.case_id)
        vol.spacing = images[seqs[0]].spacing
        out.append(resample_prepared(vol, inplane_mm) if inplane_mm else vol)
    return out


@dataclass
class CachedVolume:
    """A cached case; reads like a :class:`~bigl.preprocess.PreparedVolume`, its arrays memory-mapped on access.

    Every access of ``image``, ``mask`` or ``target`` maps the file anew and the
    mapping goes when the array does: pages a run touched do not stay in its memory.
    """

    folder: Path
    name: str
    spacing: tuple[float, float, float]
    channels: int
    brain_slices: np.ndarray
    tumour_slices: np.ndarray
    brain_center: tuple[float, float]
    brain_box: tuple[int, int, int, int]             # in-plane (y0, y1, x0, x1) of the brain over all slices
    labelled: bool
    pseudo_target: np.ndarray | None = field(default=None, repr=False)   # pseudo-labels held in memory

    @property
    def image(self) -> np.ndarray:
        return np.load(self.folder / "image.npy", mmap_mode="r")

    @property
    def mask(self) -> np.ndarray:
        return np.load(self.folder / "mask.npy", mmap_mode="r")

    @property
    def target(self) -> np.ndarray | None:
        if self.pseudo_target is not None:
            return self.pseudo_target
        return np.load(self.folder / "target.npy", mmap_mode="r") if self.labelled else None


def with_target(vol: PreparedVolume | CachedVolume, target: np.ndarray) -> PreparedVolume | CachedVolume:
    """``vol`` with other class indices (self-training's pseudo-labels); the image stays where it is."""
    from dataclasses import replace

    if isinstance(vol, CachedVolume):
        return replace(vol, pseudo_target=target.astype(np.int8),
                       tumour_slices=np.flatnonzero((target > 0).any(axis=(1, 2))))
    return replace(vol, target=target)


def default_cache_dir(dataset_dir: str | os.PathLike) -> Path:
    """``<dataset folder>.bigl-cache``, beside the dataset folder."""
    dataset_dir = Path(dataset_dir).resolve()
    return dataset_dir.parent / (dataset_dir.name + CACHE_SUFFIX)


def _entry_prefix(case: Case, seqs: Sequence[str], labels: bool, inplane_mm: tuple[float, float] | None) -> str:
    """What an entry is of: the case, its sequences, whether labels are in, and the in-plane grid.

    Everything else (the files' sizes and times, the normalisation) is in the key after it. A build removes
    the entries of the same prefix (a changed file, a killed build), so entries that differ only in the
    in-plane grid — training's (resampled to the model's spacing) and adaptation's (native) entry of one
    case — must differ here: they used to remove each other, under a run reading the other one.
    """
    grid = "native" if inplane_mm is None else "x".join(f"{float(v):g}" for v in inplane_mm) + "mm"
    return f"{case.case_id}__{'+'.join(seqs)}{'__labels' if labels else ''}__{grid}__"


def cache_key(case: Case, seqs: Sequence[str], labels: bool, inplane_mm: tuple[float, float] | None) -> str:
    """Hash of everything an entry depends on: source files (name, size, mtime), sequences, normalisation, spacing."""
    files = {}
    for key in list(seqs) + (["seg"] if labels else []):
        st = Path(case.files[key]).stat()
        files[key] = [Path(case.files[key]).name, st.st_size, st.st_mtime_ns]
    doc = {"version": CACHE_VERSION, "sequences": list(seqs), "labels": labels, "files": files,
           "normalization": NORMALIZATION, "inplane_mm": [round(float(v), 6) for v in inplane_mm] if inplane_mm
           else None}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _write_entry(vol: PreparedVolume, folder: Path) -> None:
    """Write ``vol`` as a cache entry: into a temporary folder, renamed into place when complete."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{os.getpid()}.", dir=folder.parent))
    try:
        np.save(tmp / "image.npy", np.ascontiguousarray(vol.image, dtype=np.float32))
        np.save(tmp / "mask.npy", np.ascontiguousarray(vol.mask, dtype=bool))
        if vol.target is not None:
            np.save(tmp / "target.npy", vol.target.astype(np.int8))
        ys, xs = bounding_box(vol.mask.any(axis=0))
        meta = {"name": vol.name, "spacing": list(vol.spacing), "channels": vol.channels,
                "brain_slices": vol.brain_slices.tolist(), "tumour_slices": vol.tumour_slices.tolist(),
                "brain_center": list(vol.brain_center), "brain_box": [ys.start, ys.stop, xs.start, xs.stop],
                "labelled": vol.target is not None}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, folder)
        except OSError:
            # another process (a second run on the same data) finished the same entry first: the
            # entries are identical by their key, so keep that one and drop ours
            if not (folder / "meta.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _live_build(path: Path) -> bool:
    """Whether ``path`` is the temporary folder of an entry another running process is writing
    (``.<entry>.<pid>.<random>``, made by :func:`_write_entry`)."""
    parts = path.name.split(".")
    return path.name.startswith(".") and len(parts) >= 4 and parts[-2].isdigit() and pid_alive(int(parts[-2]))


def _read_entry(folder: Path) -> CachedVolume:
    meta = json.loads((folder / "meta.json").read_text())
    return CachedVolume(folder, meta["name"], tuple(meta["spacing"]), meta["channels"],
                        np.asarray(meta["brain_slices"], dtype=np.int64),
                        np.asarray(meta["tumour_slices"], dtype=np.int64), tuple(meta["brain_center"]),
                        tuple(meta["brain_box"]), meta["labelled"])


def _user_cache_dir(dataset_dir: Path) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(dataset_dir.resolve()).encode()).hexdigest()[:12]
    return base / "bigl" / f"{dataset_dir.name}-{digest}"


def _root_for(case: Case, cache_dir: str | os.PathLike | None) -> Path:
    """The cache folder of ``case``: ``cache_dir``, else beside its dataset, else (read-only dataset) the user's cache."""
    candidates = [Path(cache_dir)] if cache_dir is not None else [default_cache_dir(case.path.parent),
                                                                 _user_cache_dir(case.path.parent)]
    for root in candidates:
        try:
            root.mkdir(parents=True, exist_ok=True)
            if os.access(root, os.W_OK):
                return root
        except OSError as exc:
            log.debug("cannot use %s as the cache: %s", root, exc)
    raise BiglError(f"cannot create the preprocessed-data cache in {' or '.join(map(str, candidates))}; pass a "
                    "writable folder as --cache-dir (cache_dir=...)")


def cache_cases(cases: list[Case], sequences: str | Sequence[str], *, labels: bool,
                inplane_mm: tuple[float, float] | None = None, cache_dir: str | os.PathLike | None = None,
                progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> list[CachedVolume]:
    """The cached, preprocessed form of ``cases`` (as :func:`load_prepared` would make it), building what is missing.

    Cases are built one at a time, so building needs the memory of one case.
    Building is announced in the log (the CLI shows it) with the cache's location.
    """
    seqs = [sequences] if isinstance(sequences, str) else list(sequences)
    entries = []
    for case in cases:
        prefix = _entry_prefix(case, seqs, labels, inplane_mm)
        entries.append((case, prefix, _root_for(case, cache_dir) / (prefix + cache_key(case, seqs, labels,
                                                                                       inplane_mm))))
    missing = [(case, prefix, folder) for case, prefix, folder in entries if not (folder / "meta.json").exists()]
    if missing:
        roots = sorted({str(folder.parent) for _, _, folder in missing})
        log.info("preprocessing %d of %d cases (%s) into the cache %s; later runs reuse it while the files, the "
                 "normalisation and the in-plane spacing stay the same", len(missing), len(cases), "+".join(seqs),
                 ", ".join(roots))
        report = Reporter("cache", len(missing), progress, cancel)
        for n, (case, prefix, folder) in enumerate(missing):
            report(n)
            if (folder / "meta.json").exists():
                continue    # another run on the same data (two trainings started together) built it meanwhile
            for old in [*folder.parent.glob(prefix + "*"), *folder.parent.glob("." + prefix + "*")]:
                # changed files or settings, or a killed build; not a running build, and not this very entry,
                # which only appears complete (by a rename) and another run may be reading by now
                if not _live_build(old) and not (old == folder and (old / "meta.json").exists()):
                    shutil.rmtree(old, ignore_errors=True)
            _write_entry(load_prepared([case], seqs, labels=labels, inplane_mm=inplane_mm)[0], folder)
        report(len(missing))
    return [_read_entry(folder) for _, _, folder in entries]
