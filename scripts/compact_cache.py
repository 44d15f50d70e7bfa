"""Pack a dosepred cache into a compact transport copy, and unpack it back into a cache.

A thin command-line wrapper of :func:`dosepred.io.pack.pack_cache` and
:func:`dosepred.io.pack.unpack_cache` (see :mod:`dosepred.io.pack` for what is kept: everything but
CT and dose bit for bit; CT clipped to the network's window in steps of ``--ct-step`` HU, dose in
steps of ``--dose-step`` cGy).

usage: python scripts/compact_cache.py pack CACHE OUT [--ct-step 4] [--dose-step 1] [--jobs 2] [--overwrite]
       python scripts/compact_cache.py unpack PACKED CACHE [--jobs N] [--overwrite]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dosepred.fsutil import OutputError
from dosepred.io.cache import CacheError
from dosepred.io.pack import pack_cache, unpack_cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("cache", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--ct-step", type=int, default=4)
    p.add_argument("--dose-step", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--overwrite", action="store_true")
    u = sub.add_parser("unpack")
    u.add_argument("packed", type=Path)
    u.add_argument("cache", type=Path)
    u.add_argument("--jobs", type=int, default=None)
    u.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()
    try:
        if a.cmd == "pack":
            r = pack_cache(a.cache, a.out, a.ct_step, a.dose_step, a.jobs, a.overwrite)
            print(f"packed {r.patients} patients: {r.nbytes / 2**20:.1f} MiB (ct step {r.ct_step} HU, "
                  f"dose step {r.dose_step} cGy)")
        else:
            c = unpack_cache(a.packed, a.cache, a.jobs, a.overwrite)
            print(f"unpacked {len(c)} patients into {c.root}")
    except (CacheError, OutputError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
