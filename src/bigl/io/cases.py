"""BraTS case folders and datasets: files found by name (2019-2021 and 2023+ conventions), images and labels
read and checked to lie on one grid."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bigl.errors import BiglError
from bigl.io.reading import _CAVITY, _LOAD_ERRORS, _strip_nifti_suffix, read_nifti
from bigl.io.volume import SEQUENCES, Volume

logger = logging.getLogger(__name__)

# File-name suffix (without extension) of each key, per naming convention.
_NAMING: dict[str, dict[str, str]] = {
    "brats2021": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "brats2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}
_LABEL_MAPS: dict[str, dict[int, int] | None] = {"brats2021": None, "brats2023": {3: 4}}
# BraTS 2024 post-treatment files use 2023 names with 4 = resection cavity (RC), not enhancing tumour.
# load_labels(cavity=...) decides: "error" (default) refuses such a file, "background" maps RC to 0.
CAVITY_CHOICES = ("error", "background")


@dataclass
class Case:
    """One BraTS case folder: which files exist, found by name (no voxels read)."""

    case_id: str
    path: Path
    files: dict[str, Path]
    naming: str

    @property
    def sequences(self) -> tuple[str, ...]:
        """Present image sequences, in :data:`SEQUENCES` order."""
        return tuple(s for s in SEQUENCES if s in self.files)

    @property
    def has_labels(self) -> bool:
        """True if the folder holds a segmentation file."""
        return "seg" in self.files


def _expected_names(key: str) -> str:
    return f"*{_NAMING['brats2021'][key]}.nii.gz or *{_NAMING['brats2023'][key]}.nii.gz"


def _match_case_file(name: str) -> tuple[str, str, str] | None:
    """(naming, key, case_id prefix) for a BraTS file name, else None."""
    stem = _strip_nifti_suffix(name)
    if stem is None or name.startswith("."):
        return None
    low = stem.lower()
    for naming, keys in _NAMING.items():
        for key, suffix in keys.items():
            if low.endswith(suffix) and len(low) > len(suffix):
                return naming, key, stem[: -len(suffix)]
    return None


def find_case(path: str | os.PathLike) -> Case:
    """Discover a BraTS case folder's files by name (never reads voxels)."""
    path = Path(path)
    if not path.exists():
        raise BiglError(f"{path}: no such folder. Check the case path.")
    if not path.is_dir():
        raise BiglError(f"{path} is not a folder; pass a case folder (or use a .nii.gz file as --input).")
    files: dict[str, Path] = {}
    namings: dict[str, Path] = {}
    prefixes: dict[str, Path] = {}
    for entry in sorted(path.iterdir()):
        if not entry.is_file():
            continue
        match = _match_case_file(entry.name)
        if match is None:
            continue
        naming, key, prefix = match
        if key in files:
            raise BiglError(
                f"case folder {path} has two {key} files ({files[key].name} and {entry.name}); "
                "keep only one."
            )
        files[key] = entry
        namings.setdefault(naming, entry)
        prefixes.setdefault(prefix, entry)
    if not files:
        raise BiglError(
            f"{path} contains no recognised BraTS files; expected names like <id>_t1.nii.gz, "
            "<id>_t1ce, <id>_t2, <id>_flair, <id>_seg (BraTS 2019-2021) or <id>-t1n, -t1c, -t2w, "
            "-t2f, -seg (BraTS 2023+)."
        )
    if len(namings) > 1:
        a, b = namings.values()
        raise BiglError(
            f"case folder {path} mixes BraTS 2021 and 2023 naming ({a.name}, {b.name}); "
            "use one convention per case."
        )
    if len(prefixes) > 1:
        a, b = list(prefixes.values())[:2]
        raise BiglError(
            f"case folder {path} holds files of different cases ({a.name}, {b.name}); "
            "put each case in its own folder."
        )
    (naming,) = namings
    (case_id,) = prefixes
    return Case(case_id=case_id, path=path, files=files, naming=naming)


def list_cases(dataset_dir: str | os.PathLike) -> list[Case]:
    """All case folders of a BraTS training layout (a folder of case folders), sorted by id."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.exists():
        raise BiglError(f"{dataset_dir}: no such dataset folder. Check the path.")
    if not dataset_dir.is_dir():
        raise BiglError(f"{dataset_dir} is not a folder; pass a dataset folder holding one folder per case.")
    cases, unnamed = [], []
    for sub in sorted(p for p in dataset_dir.iterdir() if p.is_dir()):
        try:
            cases.append(find_case(sub))
        except BiglError as exc:
            if not any(_match_case_file(p.name) for p in sub.iterdir() if p.is_file()):
                niftis = [p for p in sub.iterdir() if p.is_file() and _strip_nifti_suffix(p.name)]
                (unnamed.append(sub) if niftis else logger.info("skipping %s: no NIfTI files", sub))
                continue
            raise exc
    if unnamed:
        # a warning, not an info line: an evaluation would otherwise count fewer cases without a word
        logger.warning(
            "%s: skipping %d folder(s) whose NIfTI files have unrecognised names (%s); rename the files "
            "<id>_t1.nii.gz, _t1ce, _t2, _flair, _seg (BraTS 2019-2021) or <id>-t1n, -t1c, -t2w, -t2f, -seg "
            "(BraTS 2023+) to include them", dataset_dir, len(unnamed),
            ", ".join(p.name for p in unnamed[:5]) + (" ..." if len(unnamed) > 5 else ""))
    if not cases:
        hint = ""
        if any(_match_case_file(p.name) for p in dataset_dir.iterdir() if p.is_file()):
            hint = " It looks like a single case folder; pass its parent folder instead."
        raise BiglError(
            f"dataset folder {dataset_dir} holds no BraTS case folders (expected one sub-folder per "
            f"case with files like <id>_t1.nii.gz or <id>-t1n.nii.gz).{hint}"
        )
    return sorted(cases, key=lambda c: c.case_id)


def load_images(case: Case, sequences: tuple[str, ...] | list[str] | None = None) -> dict[str, Volume]:
    """Read the requested sequences of a case (all present ones if None).

    All must share shape and affine (``np.allclose``, atol 1e-3).
    """
    wanted = tuple(case.sequences if sequences is None else sequences)
    if not wanted:
        raise BiglError(f"case {case.case_id} ({case.path}) has no image files; expected {', '.join(SEQUENCES)}.")
    for key in wanted:
        if key not in SEQUENCES:
            raise BiglError(f"unknown sequence {key!r}; choose from {', '.join(SEQUENCES)}.")
        if key not in case.files:
            raise BiglError(
                f"case {case.case_id} ({case.path}) has no {key} file (expected {_expected_names(key)}); "
                f"it has {', '.join(case.sequences) or 'no images'}. Pick a present sequence or add the file."
            )
    volumes: dict[str, Volume] = {}
    first: Volume | None = None
    for key in wanted:
        vol = read_nifti(case.files[key])
        if first is None:
            first = vol
        else:
            _check_same_grid(first, vol)
        volumes[key] = vol
    return volumes


def _check_same_grid(a: Volume, b: Volume) -> None:
    if a._file_shape != b._file_shape:
        raise BiglError(
            f"{b.path} has shape {b._file_shape} but {a.path} has {a._file_shape}; all sequences of a case "
            "must be co-registered on one grid. Resample/register them to the same grid first."
        )
    if not np.allclose(a.affine, b.affine, atol=1e-3):
        raise BiglError(
            f"{b.path} and {a.path} have different affines (voxel-to-world mappings); all sequences of a "
            "case must be co-registered on one grid. Resample/register them first."
        )


def load_labels(case: Case, *, cavity: str = "error") -> Volume:
    """Read the case's segmentation (BraTS 2023 ET 3 -> 4), checked against the grid of every image of the case.

    ``cavity`` says what a 4 in a BraTS 2023-named file (the BraTS 2024 resection
    cavity) becomes: ``"error"`` refuses the file, ``"background"`` maps it to 0
    so that it counts in no region.
    """
    if "seg" not in case.files:
        raise BiglError(
            f"case {case.case_id} ({case.path}) has no segmentation (expected {_expected_names('seg')}); "
            "labels are needed for training/evaluation."
        )
    if cavity not in CAVITY_CHOICES:
        raise BiglError(f"unknown resection-cavity handling {cavity!r}; choose from {', '.join(CAVITY_CHOICES)}.")
    label_map = _LABEL_MAPS[case.naming]
    if case.naming == "brats2023":
        label_map = {**(label_map or {}), 4: _CAVITY if cavity == "error" else 0}
    labels = read_nifti(case.files["seg"], label=True, label_map=label_map)
    for sequence in case.sequences:  # every image, not only the first: training may read any of them
        # Header only: nibabel does not read voxels for .shape/.affine.
        ref_path = case.files[sequence]
        try:
            ref = nib.load(str(ref_path))
            ref_shape = tuple(int(s) for s in ref.shape)
            ref_affine = np.asarray(ref.affine)
        except _LOAD_ERRORS as exc:
            raise BiglError(f"{ref_path} could not be read as NIfTI ({exc}); re-export it.") from exc
        while len(ref_shape) > 3 and ref_shape[-1] == 1:
            ref_shape = ref_shape[:-1]
        if ref_shape != labels._file_shape or not np.allclose(ref_affine, labels.affine, atol=1e-3):
            shift = (f", origins {np.linalg.norm(ref_affine[:3, 3] - labels.affine[:3, 3]):.1f} mm apart"
                     if ref_shape == labels._file_shape else "")
            raise BiglError(
                f"{labels.path} is not on the grid of {ref_path} (shape {labels._file_shape} vs {ref_shape}, "
                f"or different affines{shift}); the segmentation must match every image's grid. "
                "Register/resample the image onto the segmentation's grid, or remove the case."
            )
    return labels
