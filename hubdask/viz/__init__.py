"""Pictures of arrays: Jupyter's repr, images of slices (PNG, matplotlib) and the local slice viewer."""

from hubdask.viz.html import repr_html, thumbnail
from hubdask.viz.plot import plot, show, to_png

__all__ = ["plot", "repr_html", "show", "thumbnail", "to_png"]
