"""Qt-free logic of the "BiGL Segment" widget (:mod:`napari_bigl._widget`).

Everything here can be tested without a display: reading a napari image layer
as a :class:`bigl.io.Volume`, the sequence guess, the model and device notes,
error texts, progress texts, the default source dataset for adaptation, and
the "latest request wins" queue behind the live attention query (results ->
layer data is :mod:`napari_bigl._results`). No model, IO or numerics: those are single calls into
:mod:`bigl` (``segment_volume``, ``attention_query``, ``adapt``,
``translate_volume``, ``load_bundle``/``save_bundle``).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from bigl.adapt import AdaptConfig, adapt
from bigl.checkpoint import Bundle, read_document
from bigl.errors import BiglError
from bigl.infer import SequenceMismatchWarning, check_sequence, model_input, segment_volume
from bigl.io import SEQUENCES, Volume, sequence_from_name
from bigl.progress import CancelFn, Cancelled, Progress, ProgressFn
from bigl.translate import translate_volume

from napari_bigl._layers import SEQUENCE_KEY, LayerDataTuple, layer_volume
from napari_bigl._results import ImageRef, Shown, labels_layer, segment_for_display, translated_layer
from napari_bigl._sample_data import SAMPLE_DIR

DEVICES = ("auto", "cpu", "cuda")
ADAPT_STEPS = 200                   # stage-2 alignment steps (see docs/plugin.md for CPU timings)
TRANSLATOR_STEPS = 200              # stage-1 translator steps
PREVIEW_EVERY = 50


# ----------------------------------------------------------------------------- inputs
def image_input(layer: Any) -> Volume:
    """The Volume a napari image layer shows, on its file grid; a clear BiglError for what bigl cannot segment."""
    if layer is None:
        raise BiglError("no image layer is selected; open a case (File > Open, or File > Open Sample > "
                        "napari-bigl > BiGL phantom case) and pick its image in the 'image' list")
    if getattr(layer, "multiscale", False):
        raise BiglError(f"layer '{layer.name}' is multiscale; BiGL segments a single-resolution 3D volume. "
                        "Open the series at full resolution")
    if getattr(layer, "rgb", False):
        raise BiglError(f"layer '{layer.name}' is an RGB image; BiGL segments one grey-scale MR series (z, y, x)")
    data = layer.data
    if data.ndim != 3:
        raise BiglError(f"layer '{layer.name}' is {data.ndim}D with shape {tuple(data.shape)}; BiGL segments a "
                        "3D MR volume (z, y, x). Open the whole series (a NIfTI file or a BraTS case folder), "
                        "not a single slice")
    return layer_volume(data, layer.metadata, layer.scale)


def guess_sequence(layer: Any) -> str | None:
    """The layer's sequence: the reader's ``metadata["sequence"]``, else a guess from the layer name."""
    if layer is None:
        return None
    seq = (layer.metadata or {}).get(SEQUENCE_KEY)
    return seq if seq in SEQUENCES else sequence_from_name(layer.name)


def require_sequence(sequence: str | None, layer_name: str) -> str:
    if sequence not in SEQUENCES:
        raise BiglError(f"the MR sequence of layer '{layer_name}' is not known (it could not be guessed from its "
                        f"name); choose it in the 'sequence' list ({', '.join(SEQUENCES)})")
    return sequence


def model_sequences(path: str) -> tuple[str, ...]:
    """The sequences a model file reads, in channel order, from its document alone (no weights loaded); () if unknown."""
    try:
        return tuple(read_document(path).get("sequences", ()))
    except BiglError:
        return ()


def match_sequences(needed: tuple[str, ...], layers: list[Any], image: Any = None) -> dict[str, str]:
    """Pre-fill a multi-sequence model's inputs: ``{sequence: layer name}`` of the open image layers.

    A layer matches a sequence by the reader's ``metadata["sequence"]``, else by
    its name (:func:`bigl.io.sequence_from_name`). Among several matches the
    selected ``image`` itself, then a layer of the same case ("<case> <seq>"), then the first one wins.
    Sequences without a match are left out.
    """
    case = case_name(image) if image is not None else None
    chosen: dict[str, str] = {}
    for seq in needed:
        matches = [lyr for lyr in layers if guess_sequence(lyr) == seq]
        matches.sort(key=lambda lyr: (lyr is not image, case is None or case_name(lyr) != case))
        if matches:
            chosen[seq] = matches[0].name
    return chosen


@dataclass(frozen=True)
class _Needs:
    """What :func:`bigl.infer.model_input` reads of a bundle: its sequences (checked before the model is loaded)."""

    sequences: tuple[str, ...]


def sequence_inputs(needed: tuple[str, ...], chosen: dict[str, Any], image: Any = None) -> dict[str, Volume]:
    """``{sequence: Volume}`` of the layers chosen for a multi-sequence model, checked as bigl checks them.

    A clear BiglError when a sequence has no layer, a layer is not a 3D volume,
    or the layers (and the ``image`` the results are shown over) do not share one voxel grid.
    """
    missing = [s for s in needed if chosen.get(s) is None]
    if missing:
        raise BiglError(f"this model reads {', '.join(needed)}: no image layer is chosen for {', '.join(missing)}. "
                        "Open the case's other series (File > Open Folder… on the case) and choose each in its "
                        "list under 'image', or use a single-sequence model")
    volumes = {s: image_input(chosen[s]) for s in needed}
    model_input(_Needs(needed), volumes)      # bigl's own check: one grid, else what to co-register with
    if image is not None and all(chosen[s] is not image for s in needed):
        shape = tuple(image.data.shape)
        if shape != volumes[needed[0]].data.shape:
            raise BiglError(f"the results are shown over '{image.name}' {shape}, which is not on the grid of the "
                            f"chosen sequences {volumes[needed[0]].data.shape}; choose one of them in the 'image' list")
    return volumes


def check_model_inputs(bundle: Bundle, sequences: tuple[str, ...]) -> None:
    """A BiglError when the loaded model reads other sequences than the inputs the widget gathered for it."""
    if len(bundle.sequences) > 1 and tuple(bundle.sequences) != tuple(sequences):
        raise BiglError(f"this model reads {', '.join(bundle.sequences)}: choose the image layer of each in the lists "
                        "under 'image', then press Segment again")


def sequence_warnings(bundle: Bundle, sequence: str) -> list[str]:
    """bigl's sequence-mismatch warning (naming the fix, "Adapt to this modality") as texts, or []."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SequenceMismatchWarning)
        check_sequence(bundle, sequence)
    return [str(w.message) for w in caught]


def model_note(path: str) -> str:
    """One line under the model field: what the bundle was trained on, or why it cannot be used."""
    try:
        doc = read_document(path)
    except BiglError as exc:
        text = str(exc)
        for prefix in (f"{path}: ", f"{Path(path)}: "):
            text = text.removeprefix(prefix)
        return f"⚠ {text}"
    n = doc.get("segmenters", 1)
    return f"trained on {', '.join(doc.get('sequences', []))}" + (f"; {n} networks averaged" if n > 1 else "")


def case_name(layer: Any) -> str:
    """The case a layer belongs to: its name without the reader's trailing sequence word ("<case> <sequence>")."""
    name = str(layer.name)
    head, _, last = name.rpartition(" ")
    return head if head and (last in SEQUENCES or sequence_from_name(last)) else name


def file_key(path: str) -> tuple[str, float | None]:
    """Identifies a model file's current content well enough to reuse a loaded bundle."""
    try:
        return path, os.stat(path).st_mtime
    except OSError:
        return path, None


def dialog_save_path(chosen: str) -> tuple[Path, bool]:
    """(path, overwrite) for a name from a save dialog, which has already confirmed replacing *that* name.

    A name without ``.safetensors`` gets the suffix, and then nothing was
    confirmed for the new name, so it must not replace an existing file.
    """
    path = Path(chosen)
    if path.suffix == ".safetensors":
        return path, True
    return path.with_name(path.name + ".safetensors"), False


def cuda_available() -> bool:
    return torch.cuda.is_available()


def device_note(choice: str, has_cuda: bool | None = None) -> str:
    """One line under the device list saying where the work will run."""
    has_cuda = cuda_available() if has_cuda is None else has_cuda
    if choice == "cuda" and not has_cuda:
        return "⚠ No CUDA GPU found: choose auto or cpu."
    if choice == "cpu" or not has_cuda:
        return ("Runs on the CPU: segmenting takes seconds; adapting takes minutes to tens of minutes "
                "(fewer steps: faster).")
    return "Runs on the GPU."


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s"


def format_progress(p: Progress) -> str:
    text = f"{p.stage} {p.step}/{p.total}"
    if p.eta_s is not None and p.step < p.total:
        text += f" · ETA {format_seconds(p.eta_s)}"
    return text


def describe_error(exc: BaseException, action: str) -> str:
    """The notification text for an exception raised by a bigl call."""
    if isinstance(exc, BiglError):
        return str(exc)
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return (f"{action}: out of memory. Choose device 'cpu' (GPU memory is usually the smaller), close other "
                "programs, or crop/downsample the volume and try again.")
    return f"{action} failed: {type(exc).__name__}: {exc}"


def point_voxel(points: Any, index: int, image: Any, shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """The image voxel (z, y, x) under point ``index`` of a points layer, or None outside the volume."""
    world = points.data_to_world(points.data[index])
    zyx = tuple(int(round(float(v))) for v in image.world_to_data(world))
    return zyx if all(0 <= v < n for v, n in zip(zyx, shape)) else None  # type: ignore[return-value]


# ----------------------------------------------------------------------------- adaptation
def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "napari-bigl"


PHANTOM_SOURCE_DIR_NAME = "phantom_source"


def default_source_dir(sample_dir: Path = SAMPLE_DIR) -> Path:
    """Labelled source cases for adaptation: the repo's ``sample_data/`` when there is one, else the cache.

    A ``sample_data/`` folder that exists but cannot be read is still returned:
    adapting then fails with bigl's message naming the broken file, rather than
    quietly adapting from generated phantoms instead.
    """
    if sample_dir.is_dir():
        return sample_dir
    return cache_dir() / PHANTOM_SOURCE_DIR_NAME


def ensure_source_dataset(path: Path) -> Path:
    """Generate the phantom source set the first time the cache default is used (seconds; once)."""
    path = Path(path)
    if path == cache_dir() / PHANTOM_SOURCE_DIR_NAME and not path.exists():
        from bigl.phantom import write_dataset

        write_dataset(path, n_cases=6, seed=0, preset="small")
    return path


def source_sequence(bundle: Bundle, target: str) -> str:
    """The labelled sequence to adapt from; a BiglError when the model already handles ``target``."""
    if target in bundle.sequences:
        raise BiglError(f"the model already works on {target} (it was trained or adapted on "
                        f"{', '.join(bundle.sequences)}); adapt when the image is another sequence")
    return bundle.source_sequence or bundle.sequences[0]


@dataclass
class Adapted:
    bundle: Bundle                        # the adapted model (in memory)
    seconds: float
    shown: Shown | None                   # the target image segmented by it; None if that step was cancelled
    translated: LayerDataTuple | None     # x_t→s of the target image, when the bundle has G_t→s


def adapt_to_image(bundle: Bundle, source_dir: Path, volume: Volume, image: ImageRef, target: str,
                   config: AdaptConfig, *, device: str, progress: ProgressFn, cancel: CancelFn,
                   preview: Callable[[int, LayerDataTuple], None], preview_every: int, palette: str,
                   with_uncertainty: bool) -> Adapted:
    """The widget's "Adapt to this modality": adapt to the open image, then segment and translate it.

    ``preview(step, labels layer tuple)`` gets the image's labels under the
    model snapshot of that step (segmented here, in the worker thread). The
    labelled source cases are the ``source_dir`` folder (generated once if it is
    the cache default). Cancelling after :func:`bigl.adapt.adapt` has returned
    keeps the adapted model and skips only the final segmentation and translation.
    """
    def on_snapshot(step: int, snapshot: Bundle) -> None:
        # a preview: one pass (no mirror) keeps the adaptation it interrupts waiting half as long
        labels = segment_volume(snapshot, volume, device=device, with_attention=False, mirror=False,
                                cancel=cancel).labels
        preview(step, labels_layer(image, labels, palette))

    result = adapt(bundle, ensure_source_dataset(source_dir), source_sequence(bundle, target), [volume], target,
                   config, device=device, progress=progress, cancel=cancel, preview=on_snapshot,
                   preview_every=preview_every)
    try:
        out = segment_for_display(result.bundle, volume, image, (target,), device=device, palette=palette,
                                  with_uncertainty=with_uncertainty, progress=progress, cancel=cancel)
        translated = None
        if result.bundle.translator_t2s is not None:
            translated = translated_layer(image, translate_volume(result.bundle, volume, device=device,
                                                                  progress=progress, cancel=cancel))
    except Cancelled:
        return Adapted(result.bundle, result.seconds, None, None)
    return Adapted(result.bundle, result.seconds, out, translated)


# ----------------------------------------------------------------------------- threading helpers
class CancelFlag:
    """A thread-safe cancel flag, callable as bigl's ``cancel()``."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()


@dataclass(frozen=True)
class QueryRequest:
    serial: int
    zyx: tuple[int, int, int]


class LatestOnly:
    """Debounce for the live attention query: one request in flight, only the newest one waiting.

    ``submit`` returns the request to start now, or None when one is running
    (then the new request replaces any waiting one: stale positions are dropped).
    ``done`` returns the waiting request to start next, if any. ``is_latest``
    says whether a finished request's result is still wanted.
    """

    def __init__(self) -> None:
        self._serial = 0
        self._running: QueryRequest | None = None
        self._waiting: QueryRequest | None = None

    def submit(self, zyx: tuple[int, int, int]) -> QueryRequest | None:
        self._serial += 1
        req = QueryRequest(self._serial, zyx)
        if self._running is None:
            self._running = req
            return req
        self._waiting = req
        return None

    def done(self) -> QueryRequest | None:
        self._running, self._waiting = self._waiting, None
        return self._running

    def is_latest(self, req: QueryRequest) -> bool:
        return req.serial == self._serial

    def reset(self) -> None:
        self._serial += 1          # results of anything in flight are now stale
        self._waiting = None
