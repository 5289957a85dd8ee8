"""napari-bigl: the napari plugin over the `bigl` library (thin: every action is one call into bigl)."""

from bigl import __version__

__all__ = ["__version__"]
