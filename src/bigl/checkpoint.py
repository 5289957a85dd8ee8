"""Model bundles: one safetensors file holding the weights and a JSON document.

A bundle is a single ``*.safetensors`` file (or a directory holding exactly
one). Its safetensors metadata carries ``format = "bigl-bundle"``,
``format_version`` and ``document``: a JSON object with

- ``segmenter``: the :class:`~bigl.models.segmenter.SegmenterConfig` fields,
- ``sequences``: the input sequence(s) the model was trained or adapted on,
- ``normalization``: the intensity normalisation (:data:`bigl.preprocess.NORMALIZATION`),
- ``labels``: the label convention (class index -> BraTS label),
- ``patch_size``: the training slice window (h, w),
- ``inference``: ``direct`` (Φ(x)), ``translate`` (Φ(G_t→s(x))) or ``ensemble``
  (mean of both softmaxes) — how an adapted bundle segments its target sequence,
- ``translator``: the translator config when the bundle carries the stage-1
  generators of an adaptation (weights ``translator_t2s.*`` / ``translator_s2t.*``);
  ``translator_s2t``: G_s→t's own config when it differs (a label-conditioned G_s→t),
- ``provenance``: how it was made (command, data, steps, seed, metrics, time),
- ``library_version``.

Loading never unpickles (safetensors only), checks the format and version,
and fails with :class:`~bigl.errors.BiglError` naming the file for anything
corrupt, foreign or too new. Saving is atomic: a temporary file in the same
folder is renamed over the target only once it is complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from bigl import __version__
from bigl._fs import atomic_path
from bigl.errors import BiglError
from bigl.models.segmenter import DualAttentionUNet, SegmenterConfig
from bigl.models.translator import Generator, TranslatorConfig

log = logging.getLogger(__name__)

FORMAT = "bigl-bundle"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
DEMO_BUNDLE = Path(__file__).parent / "data" / "demo_t1.safetensors"


@dataclass
class Bundle:
    """A segmenter plus everything needed to use it correctly (and, after adaptation, the translators)."""

    segmenter: DualAttentionUNet
    sequences: tuple[str, ...]
    patch_size: tuple[int, int] | None = None
    normalization: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    translator_t2s: Generator | None = None     # G_t->s: target sequence -> source look
    translator_s2t: Generator | None = None     # G_s->t
    source_sequence: str | None = None          # set on adapted bundles
    inference: str = "direct"                   # "direct": Φ(x); "translate": Φ(G_t->s(x)); "ensemble": mean of both
    path: Path | None = None

    @property
    def config(self) -> SegmenterConfig:
        return self.segmenter.config

    def document(self) -> dict[str, Any]:
        from bigl.io import LABEL_VALUES
        from bigl.preprocess import NORMALIZATION

        translator = self.translator_t2s or self.translator_s2t
        s2t = self.translator_s2t
        return {
            "segmenter": dataclasses.asdict(self.segmenter.config),
            "sequences": list(self.sequences),
            "source_sequence": self.source_sequence,
            "inference": self.inference,
            "normalization": self.normalization or NORMALIZATION,
            "labels": {"class_to_label": list(LABEL_VALUES), "names": ["background", "NCR/NET", "ED", "ET"]},
            "patch_size": list(self.patch_size) if self.patch_size else None,
            "translator": dataclasses.asdict(translator.config) if translator is not None else None,
            "translator_s2t": (dataclasses.asdict(s2t.config)
                               if s2t is not None and s2t.config != translator.config else None),
            "provenance": self.provenance,
            "library_version": __version__,
        }


def jsonable(obj: Any) -> Any:
    """Tuples -> lists, recursively, so a dataclass dict survives a JSON round trip unchanged in shape."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def _state(bundle: Bundle) -> dict[str, torch.Tensor]:
    tensors = {}
    parts = {"segmenter": bundle.segmenter, "translator_t2s": bundle.translator_t2s,
             "translator_s2t": bundle.translator_s2t}
    for prefix, module in parts.items():
        if module is None:
            continue
        for k, v in module.state_dict().items():
            tensors[f"{prefix}.{k}"] = v.detach().to("cpu").contiguous()
    return tensors


def save_bundle(bundle: Bundle, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``bundle`` to ``path`` (a ``.safetensors`` file) atomically; refuse to replace a file unless ``overwrite``."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise BiglError(f"{path}: a model bundle file must end in {SUFFIX} (e.g. {path.with_suffix(SUFFIX).name})")
    if path.exists() and not overwrite:
        raise BiglError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it, or choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "document": json.dumps(bundle.document(), sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(_state(bundle), tmp, metadata=metadata)
    bundle.path = path
    log.info("saved bundle %s", path)
    return path


def _resolve(path: Path) -> Path:
    if path.is_dir():
        found = sorted(path.glob(f"*{SUFFIX}"))
        if len(found) != 1:
            raise BiglError(f"{path}: a bundle folder must hold exactly one *{SUFFIX} file, found {len(found)}")
        return found[0]
    if not path.exists():
        raise BiglError(f"{path}: no such model bundle; check the path (the demo bundle is {DEMO_BUNDLE})")
    return path


def read_document(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a bundle's JSON document without loading its weights."""
    path = _resolve(Path(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise BiglError(f"{path}: not a readable model bundle (corrupt or not a safetensors file: {exc}); "
                        "re-download or re-create it with `bigl train` / `bigl adapt`") from exc
    if meta.get("format") != FORMAT:
        raise BiglError(f"{path}: a safetensors file, but not a bigl model bundle (no '{FORMAT}' metadata); "
                        "pass a bundle written by `bigl train` or `bigl adapt`")
    try:
        version = int(meta.get("format_version", "0"))
        doc = json.loads(meta["document"])
    except (KeyError, ValueError) as exc:
        raise BiglError(f"{path}: the bundle's metadata is damaged ({exc}); re-create the bundle") from exc
    if version > FORMAT_VERSION:
        raise BiglError(f"{path}: bundle format {version} was written by a newer bigl (this is bigl {__version__}, "
                        f"format {FORMAT_VERSION}); upgrade bigl to load it")
    return doc


def load_bundle(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle (default: the bundled demo model) onto ``device``, in eval mode. Never unpickles."""
    path = _resolve(Path(path) if path is not None else DEMO_BUNDLE)
    doc = read_document(path)
    try:
        tensors = load_file(str(path), device="cpu")
        segmenter = DualAttentionUNet(SegmenterConfig.from_dict(doc["segmenter"]))
        _load_part(segmenter, tensors, "segmenter")
        translators = {}
        if doc.get("translator"):
            tcfg = TranslatorConfig.from_dict(doc["translator"])
            configs = {"translator_t2s": tcfg,
                       "translator_s2t": TranslatorConfig.from_dict(doc["translator_s2t"])
                       if doc.get("translator_s2t") else tcfg}
            for name in ("translator_t2s", "translator_s2t"):
                if any(k.startswith(name + ".") for k in tensors):
                    translators[name] = Generator(configs[name])
                    _load_part(translators[name], tensors, name)
    except BiglError as exc:
        raise BiglError(f"{path}: {exc}") from exc
    except (KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        raise BiglError(f"{path}: the bundle's weights do not match its config ({exc}); re-create the bundle") from exc
    if doc.get("inference", "direct") != "direct" and "translator_t2s" not in translators:
        raise BiglError(f"{path}: the bundle asks for '{doc['inference']}' inference but holds no translator; "
                        "re-create it with `bigl adapt`")
    bundle = Bundle(
        segmenter=segmenter,
        sequences=tuple(doc["sequences"]),
        patch_size=tuple(doc["patch_size"]) if doc.get("patch_size") else None,
        normalization=doc.get("normalization", {}),
        provenance=doc.get("provenance", {}),
        translator_t2s=translators.get("translator_t2s"),
        translator_s2t=translators.get("translator_s2t"),
        source_sequence=doc.get("source_sequence"),
        inference=doc.get("inference", "direct"),
        path=path,
    )
    for module in (bundle.segmenter, bundle.translator_t2s, bundle.translator_s2t):
        if module is not None:
            module.to(device).eval()
    return bundle


def _load_part(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    n = len(prefix) + 1
    state = {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    module.load_state_dict(state, strict=True)
