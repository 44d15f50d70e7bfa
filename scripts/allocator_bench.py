"""Issue 28: is the glibc allocator tweak (dosepred._malloc.keep_freed_memory, which
``dosepred evaluate`` calls first) still worth keeping? Runs ``dosepred evaluate`` on the same
reference and prediction in fresh processes, with the tweak and with it disabled, in alternating
rounds, and prints each one's best wall time (patients/s) and their ratio; the two JSONs are checked
byte-identical. The tweak was removed after this measurement (session 11): the comparison needs a
tree that still has ``dosepred/_malloc.py`` (commit cb1a7a6 or earlier), e.g.
``PYTHONPATH=<that tree>/src python scripts/allocator_bench.py ...``.

    python scripts/allocator_bench.py --reference REF --prediction PRED [--rounds 3] [--protocol openkbp]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = """
import sys
import dosepred._malloc as m
if sys.argv[1] == "off":
    m.keep_freed_memory = lambda: False
    import dosepred.workflows as w
    w.keep_freed_memory = lambda: False
from dosepred.cli import main
sys.argv = ["dosepred", "evaluate", "--reference", sys.argv[2], "--prediction", sys.argv[3],
            "--protocol", sys.argv[4], "--json", sys.argv[5], "--no-progress", "--overwrite"]
main()
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", required=True)
    ap.add_argument("--prediction", required=True)
    ap.add_argument("--protocol", default="openkbp")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
                out = Path(tmp) / f"{mode}.json"
                t0 = time.perf_counter()
                args = [mode, a.reference, a.prediction, a.protocol, str(out)]
                subprocess.run([sys.executable, "-c", RUN, *args], check=True, stdout=subprocess.DEVNULL)
                dt = time.perf_counter() - t0
                best[mode] = min(best.get(mode, dt), dt)
                print(f"round {r + 1} {mode}: {dt:.2f} s", flush=True)
        same = (Path(tmp) / "on.json").read_bytes() == (Path(tmp) / "off.json").read_bytes()
        n = len(json.loads((Path(tmp) / "on.json").read_text())["patients"])
    on, off = best["on"], best["off"]
    print(f"{n} patients; tweak on: best {on:.2f} s ({n / on:.1f} patients/s, whole process); "
          f"off: {off:.2f} s ({n / off:.1f} patients/s); off/on time {off / on:.2f}; "
          f"JSON byte-identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
