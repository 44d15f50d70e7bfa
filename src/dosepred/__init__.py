"""dosepred: 3D dose prediction for head-and-neck radiotherapy with clinical DVH metric losses.

Conventions (stated once, used everywhere):

- Arrays keep the source's axis order; ``spacing`` is mm per array axis.
- CT in HU (int16), dose in Gy (float32), volumes in cc, percentages 0-100.
- ROIs travel as one unsigned integer volume of bit-mask codes: bit k set <=> voxel in ROI k of
  the dataset's :class:`RoiSet` (see :mod:`dosepred.roi`).
- Tensors are (B, C, *spatial).
"""

from .patient import Patient, Roi, RoiSet

__version__ = "0.1.0"

__all__ = ["Patient", "Roi", "RoiSet", "__version__"]
