"""bigl — brain-tumour segmentation with BiGL unsupervised cross-modality adaptation.

A plain PyTorch library: no Qt, no napari, no magicgui. The napari plugin
(`napari_bigl`) is a thin layer on top of it.
"""

from bigl.errors import BiglError

__version__ = "0.1.0"

__all__ = ["BiglError", "__version__"]
