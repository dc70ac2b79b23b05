"""pcdet: an OpenPCDet-compatible LiDAR perception toolbox with no compile step.

Importing the package is cheap: sub-packages (`pcdet.datasets`, `pcdet.models`, `pcdet.ops`) import only
torch/numpy at module level; optional extras (spconv, waymo-open-dataset) are imported inside the
functions that need them.
"""
from .version import __version__

__all__ = ['__version__']
