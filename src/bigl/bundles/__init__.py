"""The model bundles shipped with bigl, and which one a command uses when no ``--model`` is given.

- ``t1.safetensors``: a single-sequence T1 model, an ensemble of two networks with region
  outputs (one trained on MPRAGE T1, one on MPRAGE and bright-edema T1; probabilities
  averaged). Used for one volume of T1, T1ce, FLAIR or an unknown sequence (a file, or
  ``--modality X``); on a sequence other than T1 it warns and points at adaptation ("Adapt
  to this modality" / ``bigl adapt``), which starts from its first network.
- ``t1_to_t2.safetensors``: the T1 model adapted to T2 by ``bigl adapt`` (BiGL, no T2
  labels). Used for one volume of T2 (``--modality t2``, or a file named ``*_t2*``); the
  demo shows it next to the T1 model failing on T2.
- ``multi.safetensors``: a four-sequence model (t1, t1ce, t2, flair as input
  channels), two networks averaged like the T1 model's. Used for a case folder
  when no ``--modality`` is given.

The T1 and four-sequence models are trained by the documented commands in
``docs/training.md``, the adapted model by the one in ``docs/adaptation.md``.
"""

from __future__ import annotations

from pathlib import Path

BUNDLE_DIR = Path(__file__).resolve().parent
T1_MODEL = BUNDLE_DIR / "t1.safetensors"
MULTI_MODEL = BUNDLE_DIR / "multi.safetensors"
ADAPTED_T2_MODEL = BUNDLE_DIR / "t1_to_t2.safetensors"


def adapted_model_for(sequence: str | None) -> Path | None:
    """The shipped model adapted to ``sequence`` without its labels, if there is one (T2 only)."""
    return ADAPTED_T2_MODEL if sequence == "t2" else None


def default_model(*, case_folder: bool, modality: str | None) -> Path:
    """The bundled model for an input: the four-sequence model for a whole case folder (no ``modality``), the
    adapted model for a sequence that has one, else the T1 model."""
    if case_folder and modality is None:
        return MULTI_MODEL
    return adapted_model_for(modality) or T1_MODEL
