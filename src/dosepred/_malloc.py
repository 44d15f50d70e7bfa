"""Let a process keep the memory it frees (glibc), for commands that allocate and free the same
multi-MB arrays over and over, one patient after another (``dosepred evaluate``).

With glibc's defaults every such array is a fresh ``mmap`` (or heap memory that was just trimmed),
so each of its pages is faulted in again: on the OpenKBP validation split that made evaluation from
the cache about 1.5x slower (docs/results.md, "Evaluation throughput"). Raising the mmap and trim
thresholds keeps freed blocks in the heap for reuse; the process's resident memory then stays at its
peak until it exits, which suits a command-line run. Elsewhere (not glibc) this does nothing.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_MAX = 32 << 20  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit
_state: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Raise glibc's mmap threshold to 32 MB and its trim threshold to 1 GB for this process.
    Returns whether the allocator took the settings (False where there is no glibc ``mallopt``)."""
    if "ok" in _state:
        return _state["ok"]
    ok = False
    if sys.platform.startswith("linux"):
        try:
            mallopt = ctypes.CDLL(None).mallopt
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            mallopt.restype = ctypes.c_int
            ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
        except (OSError, AttributeError):
            ok = False
    _state["ok"] = ok
    return ok
