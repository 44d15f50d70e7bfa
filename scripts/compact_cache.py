"""Pack a dosepred v2 cache into a compact transport copy, and unpack it back into a v2 cache.

What it is for: taking the OpenKBP training cache (154 MB) to a machine that can receive only a few
tens of MB, e.g. a lent GPU machine whose working tree may hold 64 MiB in all (docs/results.md,
"GPU run"). Everything except CT and dose is kept bit for bit; the CT is clipped to the range the
network reads (``HU_MIN..HU_MAX`` of :mod:`dosepred.models.unet`, so with ``--ct-step 1`` the
network input is unchanged) and stored in steps of ``--ct-step`` HU; the dose is stored in steps of
``--dose-step`` cGy (rounded, so at most half a step off). Each patient becomes one ``.xz`` file
(an npz compressed with LZMA); ``dataset.json`` is copied.

usage: python scripts/compact_cache.py pack CACHE OUT [--ct-step 4] [--dose-step 1] [--jobs 2]
       python scripts/compact_cache.py unpack PACKED CACHE [--jobs 16]
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HU_MIN, HU_MAX = -1000, 2000  # dosepred.models.unet.HU_MIN/HU_MAX (not imported: pack runs anywhere)


def _pack_one(args: tuple[str, str, int, int]) -> int:
    src, dst, ct_step, dose_step = args
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    ct = np.clip(arrays.pop("ct").astype(np.int32), HU_MIN, HU_MAX)
    arrays["ct_q"] = np.rint((ct - HU_MIN) / ct_step).astype(np.uint16)
    arrays["dose_q"] = np.rint(arrays.pop("dose").astype(np.float64) * 100.0 / dose_step).astype(np.uint16)
    arrays["steps"] = np.asarray([ct_step, dose_step], np.int32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = lzma.compress(buf.getvalue(), preset=9)
    tmp = Path(dst + ".part")
    tmp.write_bytes(data)
    tmp.replace(dst)
    return len(data)


def _unpack_one(args: tuple[str, str]) -> None:
    from dosepred.io.cache import _atomic_write_bytes, _write_npz

    src, dst = args
    with np.load(io.BytesIO(lzma.decompress(Path(src).read_bytes()))) as z:
        arrays = {k: z[k] for k in z.files}
    ct_step, dose_step = (int(v) for v in arrays.pop("steps"))
    ct = arrays.pop("ct_q").astype(np.int32) * ct_step + HU_MIN
    dose = (arrays.pop("dose_q").astype(np.float64) * (dose_step / 100.0)).astype(np.float32)
    order = ["boxes", "possible_dose_mask", "dose_support", "dose", "roi_index", "roi_codes", "ct", "ct_fill"]
    full = {**arrays, "dose": dose, "ct": ct.astype(np.int16)}
    out = {k: full[k] for k in order if k in full}
    out.update({k: v for k, v in full.items() if k not in out})
    _atomic_write_bytes(Path(dst), lambda fh: _write_npz(fh, out, deflate=("ct",)))


def pack(cache: Path, out: Path, ct_step: int, dose_step: int, jobs: int) -> None:
    meta = json.loads((cache / "dataset.json").read_text())
    if meta.get("version") not in (2, 3):
        sys.exit(f"{cache}: only v2/v3 caches can be packed (found version {meta.get('version')})")
    out.mkdir(parents=True, exist_ok=True)
    work = [(str(cache / p["file"]), str(out / (Path(p["file"]).stem + ".xz")), ct_step, dose_step)
            for p in meta["patients"]]
    with ProcessPoolExecutor(jobs) as ex:
        sizes = list(ex.map(_pack_one, work))
    shutil.copy(cache / "dataset.json", out / "dataset.json")
    print(f"packed {len(sizes)} patients: {sum(sizes) / 2**20:.1f} MiB (ct step {ct_step} HU, "
          f"dose step {dose_step} cGy)")


def unpack(packed: Path, cache: Path, jobs: int) -> None:
    meta = json.loads((packed / "dataset.json").read_text())
    cache.mkdir(parents=True, exist_ok=True)
    work = [(str(packed / (Path(p["file"]).stem + ".xz")), str(cache / p["file"])) for p in meta["patients"]]
    with ProcessPoolExecutor(jobs) as ex:
        list(ex.map(_unpack_one, work))
    shutil.copy(packed / "dataset.json", cache / "dataset.json")  # last: marks the cache complete
    print(f"unpacked {len(work)} patients into {cache}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("cache", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--ct-step", type=int, default=4)
    p.add_argument("--dose-step", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2)
    u = sub.add_parser("unpack")
    u.add_argument("packed", type=Path)
    u.add_argument("cache", type=Path)
    u.add_argument("--jobs", type=int, default=16)
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(a.cache, a.out, a.ct_step, a.dose_step, a.jobs)
    else:
        unpack(a.packed, a.cache, a.jobs)


if __name__ == "__main__":
    main()
