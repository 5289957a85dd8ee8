"""The model bundles shipped with bigl, and which one a command uses when no ``--model`` is given.

- ``t1.safetensors``: a single-sequence T1 model, an ensemble of two networks
  (seeds 1 and 2 of one command; probabilities averaged). Used for one volume (a file,
  or ``--modality X``); on another sequence it warns and points at
  adaptation ("Adapt to this modality" / ``bigl adapt``), which starts from its
  first network.
- ``t1_to_t2.safetensors``: the T1 model adapted to T2 by ``bigl adapt`` (BiGL, no
  T2 labels); the demo shows it next to the T1 model failing on T2.
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


def default_model(*, case_folder: bool, modality: str | None) -> Path:
    """The bundled model for an input: the four-sequence model for a whole case folder, else the T1 model."""
    return MULTI_MODEL if case_folder and modality is None else T1_MODEL
