"""napari sample data "BiGL phantom case": four MR sequences and their tumour labels.

Loads the first case folder in the repository's ``sample_data/`` (phantom cases
written by ``bigl phantom``; read exactly as the reader reads a case folder, so
the layers carry their file grid). Where there is no such folder, e.g. a
non-editable install, the same kind of case is generated in memory with
:func:`bigl.phantom.make_case` (seed 0, preset ``"small"``: 72x100x84 voxels at
2 mm, under a second).
"""

from __future__ import annotations

import logging
from pathlib import Path

from bigl.errors import BiglError
from bigl.io import SEQUENCES, list_cases, volume_from_array
from bigl.phantom import SAMPLE_DIR

from napari_bigl._layers import LayerDataTuple, image_layer_data, labels_layer_data
from napari_bigl._reader import case_layers

logger = logging.getLogger(__name__)

GENERATED_ID = "Phantom_seed0"


def bundled_case_layers(sample_dir: Path | None = None) -> list[LayerDataTuple] | None:
    """Layers of the first case in ``sample_dir`` (default :data:`SAMPLE_DIR`), or None if none is readable."""
    sample_dir = SAMPLE_DIR if sample_dir is None else Path(sample_dir)
    if not sample_dir.is_dir():
        return None
    try:
        cases = list_cases(sample_dir)
        return case_layers(cases[0])
    except BiglError as exc:
        logger.warning("no usable sample case in %s (%s); generating one", sample_dir, exc)
        return None


def generated_case_layers(seed: int = 0, preset: str = "small") -> list[LayerDataTuple]:
    """Layers of a phantom case made in memory (no files; the grid is a plain RAS+ one).

    Case 0 of ``bigl phantom --seed SEED``: the same anatomy as the first bundled sample case.
    """
    from bigl.phantom import case_seed, make_case  # generating is the rare path; keep import cost off the menu

    case = make_case(case_seed(seed, 0), preset)
    layers = [image_layer_data(volume_from_array(case.images[key], case.spacing),
                               f"{GENERATED_ID} {key}", key, visible=(i == 0))
              for i, key in enumerate(SEQUENCES)]
    layers.append(labels_layer_data(volume_from_array(case.seg, case.spacing), f"{GENERATED_ID} seg"))
    return layers


def phantom_case() -> list[LayerDataTuple]:
    """The sample "BiGL phantom case": bundled if present, else generated (seed 0, "small")."""
    return bundled_case_layers() or generated_case_layers()
