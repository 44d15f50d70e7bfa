"""Constants shared by several stages, defined once here and imported where they are used.

- ``HU_MIN``, ``HU_MAX``: the CT window the network reads (HU outside it are clipped), which is
  also the range :func:`dosepred.io.pack.pack_cache` keeps;
- ``HU_SCALE``: the clipped HU are divided by it to form the network's CT channel.
"""

from __future__ import annotations

HU_MIN, HU_MAX, HU_SCALE = -1000.0, 2000.0, 1000.0

__all__ = ["HU_MAX", "HU_MIN", "HU_SCALE"]
