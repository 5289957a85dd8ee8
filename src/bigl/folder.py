"""Folder inference: every case folder of a dataset segmented into ``<out>/<case id>.nii.gz``.

Reading the next case and writing the previous one overlap with segmenting the
current one (worker threads); a case that fails is recorded and the rest go on.
The volume inference itself is :func:`bigl.infer.segment_volume`.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from bigl._fs import check_output
from bigl.checkpoint import Bundle
from bigl.errors import BiglError
from bigl.infer import resolve_device, segment_volume
from bigl.io import NIFTI_OUTPUT, list_cases, load_images, write_like
from bigl.progress import CancelFn, ProgressFn, Reporter


@dataclass
class FolderResult:
    """What :func:`segment_folder` did, by case id."""

    written: dict[str, Path]
    skipped: dict[str, Path]          # outputs that existed already (kept without ``overwrite``)
    failed: dict[str, str]            # why each failed case failed


def segment_folder(bundle: Bundle, dataset_dir: str | Path, out_dir: str | Path, *, modality: str | None = None,
                   device: str | torch.device = "auto", overwrite: bool = False, mirror: bool | None = None,
                   progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> FolderResult:
    """Segment every case folder of a dataset into ``out_dir/<case id>.nii.gz``, on each case's grid.

    A multi-sequence bundle reads its sequences of each case; a single-sequence
    bundle reads ``modality`` (default: the bundle's own sequence). Existing
    outputs are kept and skipped unless ``overwrite``. A case that cannot be
    read, segmented or written is recorded in ``failed`` and the rest go on.
    The next case is read and the previous one written on worker threads
    while a case is segmented (NIfTI decompression and compression release the GIL).
    ``mirror``: as :func:`bigl.infer.segment_volume`'s.
    """
    out_dir = Path(out_dir)
    if out_dir.name.lower().endswith(NIFTI_OUTPUT):
        raise BiglError(f"{out_dir}: with a dataset folder as input, --out is a folder for one <case id>.nii.gz "
                        "per case, not a file")
    cases = list_cases(dataset_dir)
    seqs = tuple(bundle.sequences) if len(bundle.sequences) > 1 else (modality or bundle.sequences[0],)
    result = FolderResult({}, {}, {})
    todo = []
    for case in cases:
        target = out_dir / f"{case.case_id}.nii.gz"
        if target.exists() and not overwrite:
            result.skipped[case.case_id] = target
        else:
            todo.append((case, target))
    if todo:
        out_dir.mkdir(parents=True, exist_ok=True)
        check_output(todo[0][1], suffix=NIFTI_OUTPUT, overwrite=overwrite, what="NIfTI output")  # writable here
    dev = resolve_device(device)
    report = Reporter("cases", len(todo), progress, cancel)

    def read(case):
        images = load_images(case, seqs)
        return images[seqs[0]], (images if len(seqs) > 1 else images[seqs[0]])

    def finish(writing: tuple[str, Future] | None) -> None:
        if writing is None:
            return
        case_id, job = writing
        try:
            result.written[case_id] = job.result()
        except (BiglError, OSError) as exc:
            result.failed[case_id] = str(exc)

    with ThreadPoolExecutor(max_workers=2) as pool:
        reading = pool.submit(read, todo[0][0]) if todo else None
        writing = None                  # at most one case waits to be written: memory stays one case's
        for i, (case, target) in enumerate(todo):
            report(i)
            try:
                volume, inputs = reading.result()
            except (BiglError, OSError, ValueError) as exc:
                result.failed[case.case_id] = str(exc)
                continue
            finally:
                reading = pool.submit(read, todo[i + 1][0]) if i + 1 < len(todo) else None
            try:
                seg = segment_volume(bundle, inputs, sequence=None if len(seqs) > 1 else seqs[0], device=dev,
                                     with_attention=False, with_probabilities=False, mirror=mirror)
            except (BiglError, ValueError, RuntimeError) as exc:
                result.failed[case.case_id] = str(exc)
                continue
            finish(writing)
            writing = (case.case_id, pool.submit(write_like, seg.labels, volume, target, overwrite=overwrite))
        finish(writing)
    report(len(todo))
    return result
