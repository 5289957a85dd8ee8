"""Model bundles: one safetensors file holding the weights and a JSON document.

A bundle is a single ``*.safetensors`` file (or a directory holding exactly
one). Its safetensors metadata carries ``format = "bigl-bundle"``,
``format_version`` and ``document``: a JSON object with

- ``segmenter``: the :class:`~bigl.models.segmenter.SegmenterConfig` fields,
- ``segmenters``: how many segmenters of that config the bundle holds (an ensemble when more than one:
  weights ``segmenter.*``, ``segmenter_1.*``, ...; inference averages their softmaxes),
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
from safetensors.torch import load_file, safe_open, save

from bigl import __version__
from bigl._fs import atomic_path, check_output
from bigl.bundles import T1_MODEL
from bigl.errors import BiglError
from bigl.models.segmenter import DualAttentionUNet, SegmenterConfig
from bigl.models.translator import Generator, TranslatorConfig

log = logging.getLogger(__name__)

FORMAT = "bigl-bundle"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
DEMO_BUNDLE = T1_MODEL  # the default single-sequence model, see bigl.bundles


@dataclass
class Bundle:
    """A segmenter plus everything needed to use it correctly (and, after adaptation, the translators)."""

    segmenter: DualAttentionUNet               # the one adaptation starts from and attention maps come from
    sequences: tuple[str, ...]
    patch_size: tuple[int, int] | None = None
    normalization: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    translator_t2s: Generator | None = None     # G_t->s: target sequence -> source look
    translator_s2t: Generator | None = None     # G_s->t
    source_sequence: str | None = None          # set on adapted bundles
    inference: str = "direct"                   # "direct": Φ(x); "translate": Φ(G_t->s(x)); "ensemble": mean of both
    path: Path | None = None
    members: tuple[DualAttentionUNet, ...] = ()   # further segmenters (same config) averaged with ``segmenter``

    @property
    def config(self) -> SegmenterConfig:
        return self.segmenter.config

    @property
    def segmenters(self) -> tuple[DualAttentionUNet, ...]:
        """Every segmenter whose softmax inference averages: ``segmenter`` first, then ``members``."""
        return (self.segmenter, *self.members)

    def parts(self) -> dict[str, torch.nn.Module]:
        """The networks the bundle holds by weight-name prefix: segmenter(s), then translators when present."""
        named = {"segmenter": self.segmenter} | {f"segmenter_{k}": m for k, m in enumerate(self.members, 1)}
        translators = {"translator_t2s": self.translator_t2s, "translator_s2t": self.translator_s2t}
        return named | {k: m for k, m in translators.items() if m is not None}

    def document(self) -> dict[str, Any]:
        from bigl.io import LABEL_VALUES
        from bigl.preprocess import NORMALIZATION

        translator = self.translator_t2s or self.translator_s2t
        s2t = self.translator_s2t
        return {
            "segmenter": dataclasses.asdict(self.segmenter.config),
            "segmenters": len(self.segmenters),
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
    return {f"{prefix}.{k}": v.detach().to("cpu").contiguous()
            for prefix, module in bundle.parts().items() for k, v in module.state_dict().items()}


def save_bundle(bundle: Bundle, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``bundle`` to ``path`` (a ``.safetensors`` file) atomically; refuse to replace a file unless ``overwrite``."""
    path = check_output(path, suffix=SUFFIX, overwrite=overwrite, what="model bundle")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                    "document": json.dumps(bundle.document(), sort_keys=True)}
        # serialised in memory and written by us: safetensors' own save_file writes through a ".tmpXXXXXX"
        # file of its own, which a kill would leave behind under a name no cleaner knows
        data = save(_state(bundle), metadata=metadata)
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(data)
    except OSError as exc:
        raise BiglError(f"{path} could not be written ({exc}); check free space and permissions") from exc
    bundle.path = path
    log.info("saved bundle %s", path)
    return path


def partial_path(path: str | os.PathLike) -> Path:
    """Where a run writes its best-so-far bundle for final ``path`` until it finishes: ``<stem>.partial.safetensors``.

    A killed or cancelled run leaves only this name, so nothing at ``path``
    looks finished; :func:`promote_partial` moves it to ``path`` at the end.
    """
    path = Path(path)
    return path.with_name(path.stem + ".partial" + SUFFIX)


def promote_partial(path: str | os.PathLike) -> Path:
    """Atomically rename ``partial_path(path)`` to ``path`` (the run finished); return ``path``."""
    path = Path(path)
    os.replace(partial_path(path), path)
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
    except (KeyError, ValueError, RecursionError) as exc:
        raise BiglError(f"{path}: the bundle's metadata is damaged ({exc}); re-create the bundle") from exc
    if version > FORMAT_VERSION:
        raise BiglError(f"{path}: bundle format {version} was written by a newer bigl (this is bigl {__version__}, "
                        f"format {FORMAT_VERSION}); upgrade bigl to load it")
    try:
        check_document(doc)
    except BiglError as exc:
        raise BiglError(f"{path}: {exc}; re-create the bundle with `bigl train` / `bigl adapt`") from exc
    return doc


def load_bundle(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle (default: the bundled demo model) onto ``device``, in eval mode. Never unpickles.

    Before any network is built, the document is validated and bounded
    (:func:`check_document`) and the tensor names and shapes that its configs
    imply are compared with the weights file's header (:func:`check_weights`),
    so a hostile or damaged config cannot make bigl allocate more than the
    file holds.
    """
    path = _resolve(Path(path) if path is not None else DEMO_BUNDLE)
    doc = read_document(path)
    try:
        header = tensor_header(path)
        configs = part_configs(doc, header)
        check_weights(configs, header)
        tensors = load_file(str(path), device="cpu")
        parts: dict[str, torch.nn.Module] = {}
        for name, cfg in configs.items():
            parts[name] = _network(name, cfg)
            _load_part(parts[name], tensors, name)
    except BiglError as exc:
        raise BiglError(f"{path}: {exc}") from exc
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError, OSError) as exc:
        raise BiglError(f"{path}: the bundle's weights do not match its config ({exc}); re-create the bundle") from exc
    if doc.get("inference", "direct") != "direct" and "translator_t2s" not in parts:
        raise BiglError(f"{path}: the bundle asks for '{doc['inference']}' inference but holds no translator; "
                        "re-create it with `bigl adapt`")
    if path.name.endswith(".partial" + SUFFIX):
        log.warning("%s is the best-so-far snapshot of a run that did not finish", path)
    bundle = Bundle(
        segmenter=parts["segmenter"],
        sequences=tuple(doc["sequences"]),
        patch_size=tuple(doc["patch_size"]) if doc.get("patch_size") else None,
        normalization=doc.get("normalization") or {},
        provenance=doc.get("provenance") or {},
        translator_t2s=parts.get("translator_t2s"),
        translator_s2t=parts.get("translator_s2t"),
        source_sequence=doc.get("source_sequence"),
        inference=doc.get("inference", "direct"),
        path=path,
        members=tuple(parts[f"segmenter_{k}"] for k in range(1, doc.get("segmenters", 1))),
    )
    for module in bundle.parts().values():
        module.to(device).eval()
    return bundle


def ensemble(bundles: list[Bundle], *, provenance: dict[str, Any] | None = None) -> Bundle:
    """One bundle holding every segmenter of ``bundles`` (first bundle's first), whose inference averages them all.

    The bundles must be plain supervised models that read the same sequences
    the same way: one segmenter config, sequences and normalisation (the in-plane
    spacing included), and no translators. BiglError naming the bundle that
    differs otherwise. Their training windows may differ (another seed splits
    the cases otherwise; inference cuts its own window): the ensemble records the first's.
    """
    if len(bundles) < 2:
        raise BiglError(f"an ensemble needs at least two model bundles, got {len(bundles)}")
    first = bundles[0]
    name = lambda b: str(b.path) if b.path else "a bundle in memory"  # noqa: E731
    for b in bundles:
        if b.translator_t2s is not None or b.translator_s2t is not None or b.inference != "direct":
            raise BiglError(f"{name(b)} is an adapted bundle (it carries translators); an ensemble combines "
                            "supervised models from `bigl train` — adapt the ensemble afterwards instead")
        for what, mine, theirs in (("segmenter config", b.config, first.config),
                                   ("sequences", b.sequences, first.sequences),
                                   ("intensity normalisation", b.normalization, first.normalization)):
            if mine != theirs:
                raise BiglError(f"{name(b)} differs from {name(first)} in its {what} ({mine} vs {theirs}); the "
                                "members of an ensemble must be trained the same way on the same sequences")
    nets = [net for b in bundles for net in b.segmenters]
    if len(nets) > MAX_SEGMENTERS:
        raise BiglError(f"an ensemble holds at most {MAX_SEGMENTERS} segmenters, these bundles have {len(nets)}")
    made = {"ensemble_of": [{"path": name(b), "segmenters": len(b.segmenters), "provenance": b.provenance}
                            for b in bundles]}
    return dataclasses.replace(first, segmenter=nets[0], members=tuple(nets[1:]), path=None,
                               provenance={**(provenance or {}), **made})


# --------------------------------------------------------------------------- validation before allocation

INFERENCE_MODES = ("direct", "translate", "ensemble")
MAX_PARAMETERS = 100_000_000    # 400 MB of float32; the demo segmenter has ~0.5 M, a translator a few M
MAX_PATCH = 4096                # pixels per side of the training window
MAX_SEGMENTERS = 16             # members of an ensemble bundle
# Inclusive bounds on architecture fields, checked before any network is built (even on the meta device).
SEGMENTER_BOUNDS = {"in_channels": (1, 64), "num_classes": (2, 16), "attention_reduction": (1, 1024)}
SEGMENTER_WIDTH, SEGMENTER_LEVELS = (1, 1024), (1, 8)
TRANSLATOR_BOUNDS = {"channels": (1, 64), "cond_channels": (0, 64), "width": (1, 512), "n_res_blocks": (0, 64),
                     "n_down": (0, 6), "kernel": (1, 31)}
_PARTS = ("segmenter", "translator_t2s", "translator_s2t")


def _bounded(cfg: Any, bounds: dict[str, tuple[int, int]], where: str) -> None:
    for name, (lo, hi) in bounds.items():
        value = getattr(cfg, name)
        if not lo <= value <= hi:
            raise BiglError(f"{where}.{name} = {value} is outside the supported range {lo}..{hi}")


def _sequence_list(value: Any, key: str) -> list[str]:
    from bigl.io import SEQUENCES

    ok = (isinstance(value, list) and 1 <= len(value) <= len(SEQUENCES) and len(set(map(str, value))) == len(value)
          and all(isinstance(v, str) and v in SEQUENCES for v in value))
    if not ok:
        raise BiglError(f"the document's '{key}' must be a list of 1-{len(SEQUENCES)} distinct sequences from "
                        f"{list(SEQUENCES)}, got {value!r:.80}")
    return value


def check_document(doc: Any) -> None:
    """Validate a bundle document's types and bounds (no weights read, nothing allocated); raise BiglError."""
    if not isinstance(doc, dict):
        raise BiglError(f"the bundle document must be a JSON object, got {type(doc).__name__}")
    for key in ("segmenter", "sequences"):
        if key not in doc:
            raise BiglError(f"the bundle document has no '{key}' entry")
    _sequence_list(doc["sequences"], "sequences")
    if doc.get("source_sequence") is not None:
        _sequence_list([doc["source_sequence"]], "source_sequence")
    patch = doc.get("patch_size")
    if patch is not None and not (isinstance(patch, list) and len(patch) == 2
                                  and all(type(v) is int and 1 <= v <= MAX_PATCH for v in patch)):
        raise BiglError(f"the document's 'patch_size' must be null or two ints in 1..{MAX_PATCH}, got {patch!r:.80}")
    n = doc.get("segmenters", 1)
    if type(n) is not int or not 1 <= n <= MAX_SEGMENTERS:
        raise BiglError(f"the document's 'segmenters' must be an int in 1..{MAX_SEGMENTERS}, got {n!r:.80}")
    if doc.get("inference", "direct") not in INFERENCE_MODES:
        raise BiglError(f"the document's 'inference' must be one of {INFERENCE_MODES}, got {doc['inference']!r:.80}")
    for key in ("normalization", "provenance", "labels"):
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            raise BiglError(f"the document's '{key}' must be a JSON object, got {type(doc[key]).__name__}")
    seg = SegmenterConfig.from_dict(doc["segmenter"])
    _bounded(seg, SEGMENTER_BOUNDS, "segmenter")
    lo, hi = SEGMENTER_WIDTH
    if not (SEGMENTER_LEVELS[0] <= len(seg.widths) <= SEGMENTER_LEVELS[1] and all(lo <= w <= hi for w in seg.widths)):
        raise BiglError(f"segmenter.widths {list(seg.widths)!r:.80} is outside the supported range "
                        f"({SEGMENTER_LEVELS[0]}-{SEGMENTER_LEVELS[1]} levels of {lo}..{hi} channels)")
    for key in ("translator", "translator_s2t"):
        if doc.get(key) is not None:
            _bounded(TranslatorConfig.from_dict(doc[key]), TRANSLATOR_BOUNDS, key)


def tensor_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, shape) of every tensor in a safetensors file, from its header only."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (str(f.get_slice(k).get_dtype()), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise BiglError(f"the weights header is unreadable ({exc}); re-create the bundle") from exc


def part_configs(doc: dict[str, Any], header: dict[str, Any]) -> dict[str, Any]:
    """The config of each network the bundle holds (translators only where the header has their tensors)."""
    seg = SegmenterConfig.from_dict(doc["segmenter"])
    configs: dict[str, Any] = {"segmenter": seg} | {f"segmenter_{k}": seg for k in range(1, doc.get("segmenters", 1))}
    present = {k.split(".", 1)[0] for k in header}
    unknown = sorted(present - set(_PARTS) - set(configs))
    if unknown:
        raise BiglError(f"the weights hold tensors of unknown parts {unknown[:3]}; this is not a bundle bigl wrote")
    if doc.get("translator"):
        t2s = TranslatorConfig.from_dict(doc["translator"])
        s2t = TranslatorConfig.from_dict(doc["translator_s2t"]) if doc.get("translator_s2t") else t2s
        configs |= {name: cfg for name, cfg in (("translator_t2s", t2s), ("translator_s2t", s2t)) if name in present}
    elif present - set(configs):
        raise BiglError("the weights hold translator tensors but the document describes no translator")
    return configs


def _network(part: str, cfg: Any) -> torch.nn.Module:
    """The network of a bundle part (``segmenter``, ``segmenter_<k>``, ``translator_*``) built from its config."""
    return (DualAttentionUNet if part.startswith("segmenter") else Generator)(cfg)


def check_weights(configs: dict[str, Any], header: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """Compare the tensors the configs imply (built on the meta device: no memory) with the weights' header.

    Raises BiglError on a parameter count above :data:`MAX_PARAMETERS`, a
    missing or unexpected tensor, or a shape that differs.
    """
    for name, cfg in configs.items():
        with torch.device("meta"):
            module = _network(name, cfg)
        n_params = sum(p.numel() for p in module.parameters())
        if n_params > MAX_PARAMETERS:
            raise BiglError(f"the {name} config implies {n_params:,} parameters, above the cap of "
                            f"{MAX_PARAMETERS:,}")
        expected = {f"{name}.{k}": tuple(v.shape) for k, v in module.state_dict().items()}
        stored = {k: shape for k, (_, shape) in header.items() if k.startswith(name + ".")}
        missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
        wrong = [k for k in expected if k in stored and stored[k] != expected[k]]
        if missing or extra or wrong:
            detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra else
                      f"{wrong[0]} is {list(stored[wrong[0]])} in the file but {list(expected[wrong[0]])} "
                      "by the config")
            raise BiglError(f"the bundle's weights do not match its {name} config ({detail}; the config implies "
                            f"{n_params:,} parameters); re-create the bundle")


def _load_part(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    n = len(prefix) + 1
    state = {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    module.load_state_dict(state, strict=True)
