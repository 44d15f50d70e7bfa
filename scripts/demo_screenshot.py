"""The README's picture of the demo: the first screens of ``demo-out/report.html`` as a small PNG.

    dosepred demo --out demo-out
    python scripts/demo_screenshot.py demo-out/report.html docs/img/demo-report.png

Headless Chromium renders the report (``scripts/screenshot_report.sh``; Debian: ``apt-get install -y
chromium``) at WIDTH x HEIGHT CSS pixels: the title, the released models' table and verdict, and the
plan QA of the first-ranked plan (flagged criteria, DVH with the calibrated bands, the first view).
Pillow then scales it by SCALE and quantises it to COLOURS colours, so the committed file stays well
under 200 KB. Prints the size; fails when the PNG is larger than --max-kb.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, help="the demo's report.html")
    ap.add_argument("out", type=Path, help="PNG to write (e.g. docs/img/demo-report.png)")
    ap.add_argument("--width", type=int, default=1400, help="browser width, CSS pixels [1400]")
    ap.add_argument("--height", type=int, default=1950, help="height kept from the top, CSS pixels [1950]")
    ap.add_argument("--scale", type=float, default=0.7, help="scale of the PNG [0.7]")
    ap.add_argument("--colours", type=int, default=256, help="palette size [256]")
    ap.add_argument("--max-kb", type=float, default=200.0, help="fail above this size [200]")
    a = ap.parse_args(argv)
    if not a.report.is_file():
        print(f"error: {a.report}: no such report (run `dosepred demo --out demo-out` first)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "shot"
        r = subprocess.run(["bash", str(HERE / "screenshot_report.sh"), str(a.report), str(prefix),
                            str(a.width), str(a.height)], capture_output=True, text=True)
        if r.returncode != 0 or not prefix.with_suffix(".png").is_file():
            print(f"error: {a.report}: chromium did not render it: {r.stderr.strip()}", file=sys.stderr)
            return 2
        img = Image.open(prefix.with_suffix(".png")).convert("RGB")
    size = (round(img.width * a.scale), round(img.height * a.scale))
    img = img.resize(size, Image.Resampling.LANCZOS)
    # octree keeps the DVH colours apart (median cut merged the ROI colours of the legend)
    img = img.quantize(colors=a.colours, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(a.out, optimize=True)
    kb = a.out.stat().st_size / 1024
    print(f"wrote {a.out}: {size[0]} x {size[1]} px, {kb:.0f} KB")
    if kb > a.max_kb:
        print(f"error: {a.out} is {kb:.0f} KB, more than --max-kb {a.max_kb:g}: lower --height, --scale or "
              "--colours", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
