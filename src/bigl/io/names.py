"""Sequence names: the sequence a file or layer name stands for, and the input of ``bigl segment``."""

from __future__ import annotations

import os
import re
from pathlib import Path

from bigl.errors import BiglError
from bigl.io.cases import find_case, load_images
from bigl.io.reading import _strip_nifti_suffix, read_nifti
from bigl.io.volume import SEQUENCES, Volume

_FLAIR_TOKENS = {"flair", "t2f", "t2flair"}
_T1CE_TOKENS = {"t1ce", "t1c", "t1gd", "t1gad", "t1post", "t1contrast"}
_T1_TOKENS = {"t1", "t1n", "t1w", "t1native", "t1pre"}
_T2_TOKENS = {"t2", "t2w"}
_CONTRAST_WORDS = {"post", "contrast", "gd", "gad", "gadolinium", "ce", "c", "enhanced", "pc"}


def sequence_from_name(name: str) -> str | None:
    """Guess the sequence key from a file or napari layer name, or None.

    ``"BraTS19_001_t1ce.nii.gz"`` -> ``"t1ce"``, ``"x-t2f"`` -> ``"flair"``,
    ``"T2w"`` -> ``"t2"``, ``"T1 post-contrast"`` -> ``"t1ce"``, ``"t1n"`` -> ``"t1"``.
    """
    base = Path(str(name)).name
    stem = _strip_nifti_suffix(base) or base
    tokens = [t for t in re.split(r"[^a-z0-9]+", stem.lower()) if t]
    if not tokens:
        return None
    if any(t in _FLAIR_TOKENS for t in tokens):
        return "flair"
    if any(t in _T1CE_TOKENS for t in tokens):
        return "t1ce"
    if any(t in _T1_TOKENS for t in tokens) and any(t in _CONTRAST_WORDS for t in tokens):
        return "t1ce"
    for tok in reversed(tokens):  # the sequence is usually the last part of a name
        if tok in _T1_TOKENS:
            return "t1"
        if tok in _T2_TOKENS:
            return "t2"
    return None


def read_input(path: str | os.PathLike, sequence: str | None = None) -> tuple[Volume, str | None]:
    """Read the input of ``bigl segment --input PATH [--modality SEQ]``.

    A ``.nii``/``.nii.gz`` file gives ``(volume, sequence)`` with the sequence
    guessed from its name unless given (None if it cannot be guessed). A case
    folder gives the given sequence's volume, or its only sequence.
    """
    path = Path(path)
    if sequence is not None and sequence not in SEQUENCES:
        raise BiglError(f"unknown sequence {sequence!r}; choose from {', '.join(SEQUENCES)}.")
    if not path.exists():
        raise BiglError(f"{path}: no such file or folder. Check the --input path.")
    if path.is_dir():
        case = find_case(path)
        if sequence is None:
            if len(case.sequences) != 1:
                raise BiglError(
                    f"case folder {path} has several sequences ({', '.join(case.sequences) or 'none'}); "
                    "say which one to segment with --modality."
                )
            sequence = case.sequences[0]
        return load_images(case, (sequence,))[sequence], sequence
    volume = read_nifti(path)
    return volume, sequence if sequence is not None else sequence_from_name(path.name)
