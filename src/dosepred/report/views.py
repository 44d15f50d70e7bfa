"""Three orthogonal dose views for the HTML report, oriented from the patient geometry.

Each view is a stack of pre-rendered slices (base64 PNG) that an ``<input type=range>`` switches in
plain JavaScript. Orientation follows radiology convention and is derived from the
:class:`~dosepred.geometry.Geometry`, never from the array order:

- axial: anterior up, the patient's right on the image left;
- coronal: superior up, the patient's right on the image left;
- sagittal: superior up, anterior on the image left.

The edge letters are computed from the direction cosines of the two in-plane axes after the flips,
so an oblique or unusual grid is labelled by what it shows. Pixels are resampled to a square size
(``mm_per_px``) so that the mm scale bar holds in both directions.

Each slice image is one row of panels (e.g. plan | prediction | plan - prediction): CT in grey,
the dose as a colour wash with isodose lines (2 px) at the prescription levels, ROI contours (1 px),
and the difference in a diverging map that leaves |difference| below ``dead_zone`` Gy transparent
(no speckle where plan and prediction agree). Isodose and ROI colours are distinct
(:data:`ISO_COLOURS`, :data:`PALETTE`).
"""

from __future__ import annotations

import base64
import html
import io
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..patient import Patient
from ..resample import zoom_axis

#: (view name, anatomical axis normal to the slice, (row axis, wanted row letter), (col axis, letter))
#: The letter is where the axis must run *towards* as the index grows (down the rows, right along
#: the columns).
VIEWS = (
    ("axial", "SI", ("AP", "P"), ("LR", "L")),
    ("coronal", "AP", ("SI", "I"), ("LR", "L")),
    ("sagittal", "LR", ("SI", "I"), ("AP", "P")),
)
#: Where each view's slider runs as it moves right (OpenKBP's array order), whatever the grid's layout.
SLIDE_TOWARDS = {"axial": "I", "coronal": "P", "sagittal": "L"}
_LET = (("R", "L"), ("A", "P"), ("I", "S"))
_OPP = {"R": "L", "L": "R", "A": "P", "P": "A", "I": "S", "S": "I"}

#: ROI colours (RGB 0-255), in RoiSet order: matplotlib's tab10, then five more of which none is
#: near an isodose colour (the DVH plots use the same, :func:`dosepred.report.plots.roi_colours`).
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
           (189, 183, 107), (255, 187, 120), (152, 223, 138), (255, 152, 150), (150, 0, 60)]
#: Isodose line colours by rank of prescription (highest first): bright and saturated (or white),
#: unlike the mid-tone ROI colours (CIELAB distance >= 30 from each of them and from each other), and
#: shown in the legend on a dark chip like the CT they are drawn on. Only the four highest
#: prescriptions get a line (the legend says when levels are left out).
ISO_COLOURS = [(255, 255, 255), (255, 0, 255), (0, 255, 0), (255, 255, 0)]
#: The background of the legend's isodose swatches (about soft tissue in the views' CT window).
ISO_CHIP = (64, 64, 64)


def roi_colours(names: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def hex_colour(c: Sequence[float]) -> str:
    return "#" + "".join(f"{int(x):02x}" for x in c[:3])


@dataclass
class Orientation:
    """How to cut a view from the volume: slice axis, the (row, col) array axes and their flips and
    the edge letters (top, bottom, left, right)."""

    name: str
    slice_axis: int
    row_axis: int
    col_axis: int
    flip_row: bool
    flip_col: bool
    letters: tuple[str, str, str, str]
    slice_letter: str  # the letter the slice axis runs towards


def orientations(patient: Patient) -> list[Orientation]:
    g = patient.geometry
    assert g is not None
    letters = g.axis_letters()  # the letter each array axis runs towards (ties at 45 degrees resolved)
    out = []
    for name, normal, (ra, rl), (ca, cl) in VIEWS:
        s_ax, r_ax, c_ax = g.axis_along(normal), g.axis_along(ra), g.axis_along(ca)
        flip_r, flip_c = letters[r_ax] != rl, letters[c_ax] != cl
        bottom = _OPP[letters[r_ax]] if flip_r else letters[r_ax]
        right = _OPP[letters[c_ax]] if flip_c else letters[c_ax]
        out.append(Orientation(name, s_ax, r_ax, c_ax, flip_r, flip_c,
                               (_OPP[bottom], bottom, _OPP[right], right), letters[s_ax]))
    return out


def _LET_INDEX(letter: str) -> int:  # noqa: N802 - tiny helper
    return next(k for k, pair in enumerate(_LET) if letter in pair)


def target_centroid(patient: Patient) -> np.ndarray:
    """Array index (float, 3) of the centroid of the highest-prescription target present, else of
    the dose maximum region (dose >= 90 % of max), else the grid centre."""
    rs = patient.roi_set
    targets = sorted((r for r in rs if r.kind == "target" and r.name not in patient.missing_rois),
                     key=lambda r: -(r.prescription or 0))
    for r in targets:
        m = patient.mask(r.name)
        if m.any():
            return np.array([ix.mean() for ix in np.nonzero(m)])
    if patient.dose is not None and patient.dose.max() > 0:
        return np.array([ix.mean() for ix in np.nonzero(patient.dose >= 0.9 * patient.dose.max())])
    return (np.asarray(patient.shape, dtype=float) - 1) / 2


def _lut(name: str) -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.float32)


def _boundary(m: np.ndarray) -> np.ndarray:
    """Inner boundary pixels of a 2-D bool mask (4-neighbourhood)."""
    if not m.any():
        return m
    p = np.pad(m, 1, constant_values=False)
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def _thick(b: np.ndarray) -> np.ndarray:
    out = b.copy()
    out[1:, :] |= b[:-1, :]
    out[:, 1:] |= b[:, :-1]
    return out


def _png(rgb: np.ndarray) -> str:
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    im = im.quantize(colors=255, method=Image.Quantize.FASTOCTREE)
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=False, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class Panel:
    label: str
    dose: np.ndarray  # 3-D, Gy
    kind: str = "dose"  # "dose" | "diff"


class ViewRenderer:
    """Renders the slices of the three views of one patient for a set of panels.

    The box shown (ROIs and dose above 10 % of the maximum, plus ``margin_mm``) is shown in square
    ``mm_per_px`` voxels: a virtual grid over the box, linear for CT and doses, nearest for the ROI
    codes (as ``scipy.ndimage.zoom(order=1, grid_mode=True)`` of the box). Only the slices shown are
    resampled (:meth:`ct_slice`, :meth:`dose_slice`, :meth:`masks_slice`): the views show about 60
    slices, a few percent of the planes of the whole resampled box, which is several times larger than
    the patient's grid (1.5 mm pixels from 3-5 mm voxels)."""

    def __init__(self, patient: Patient, panels: Sequence[Panel], levels: Sequence[float] | None = None,
                 point: np.ndarray | None = None, mm_per_px: float = 1.5, step_mm: float = 6.0,
                 dead_zone: float = 1.0, diff_max: float = 10.0, dose_max: float | None = None,
                 margin_mm: float = 15.0, max_slices: int = 21) -> None:
        self.p = patient
        self.panels = list(panels)
        rx = sorted({float(r.prescription) for r in patient.roi_set
                     if r.kind == "target" and r.prescription and r.name not in patient.missing_rois},
                    reverse=True)
        self.levels = list(levels) if levels is not None else rx
        self.point = target_centroid(patient) if point is None else np.asarray(point, dtype=float)
        self.mm_per_px = mm_per_px
        self.step_mm = step_mm
        self.dead_zone = dead_zone
        self.diff_max = diff_max
        doses = [pn.dose for pn in self.panels if pn.kind == "dose"]
        floor = [self.levels[0] if self.levels else 1.0]
        self.dose_max = dose_max or max([float(d.max()) for d in doses] + floor)
        self.names = [n for n in patient.roi_set.names if n not in patient.missing_rois]
        self.colours = roi_colours(list(patient.roi_set.names))
        self.margin_mm = margin_mm
        self.max_slices = max_slices
        self._jet = _lut("jet")
        self._div = _lut("RdBu_r")
        self.box = self._box()
        bx = tuple(slice(a, b) for a, b in self.box)
        self._off = np.array([a for a, _ in self.box], dtype=float)
        self._z = np.array(patient.spacing) / mm_per_px
        shape = tuple(max(1, int(round((b - a) * z))) for (a, b), z in zip(self.box, self._z, strict=True))
        self._z = np.array(shape) / np.array([b - a for a, b in self.box])  # exact factors
        self.shape = shape  # of the virtual resampled box
        self._ct = np.asarray(patient.require_ct("the report's viewer")[bx], dtype=np.float32)
        self._doses = [np.asarray(pn.dose[bx], dtype=np.float32) for pn in self.panels]
        self._codes = patient.roi_codes[bx]
        self._overlays: dict = {}
        self._nearest = [np.minimum(((np.arange(n) + 0.5) / z).astype(int), b - a - 1)
                         for n, z, (a, b) in zip(shape, self._z, self.box, strict=True)]

    def _box(self) -> list[tuple[int, int]]:
        """Index range per axis shown: ROIs, dose above 10 % of max, with a margin."""
        p = self.p
        sel = p.roi_codes != 0
        for pn in self.panels:
            if pn.kind == "dose":
                sel = sel | (pn.dose > 0.1 * self.dose_max)
        if not sel.any():
            return [(0, n) for n in p.shape]
        out = []
        for ax in range(3):
            other = tuple(a for a in range(3) if a != ax)
            hit = np.nonzero(sel.any(axis=other))[0]
            m = int(round(self.margin_mm / p.spacing[ax]))
            out.append((max(int(hit[0]) - m, 0), min(int(hit[-1]) + m + 1, p.shape[ax])))
        return out

    def _plane(self, vol: np.ndarray, o: Orientation, j: int) -> np.ndarray:
        """Slice ``j`` (on the view's slice axis) of ``vol`` (the box on the patient's grid) resampled
        linearly, oriented like the view: one plane along the slice axis, then the two in-plane axes."""
        ax = o.slice_axis
        n = vol.shape[ax]
        x = min(max((j + 0.5) / self._z[ax] - 0.5, 0.0), n - 1.0)
        lo = min(int(np.floor(x)), max(n - 2, 0))
        w = np.float32(x - lo)
        a = np.take(vol, lo, axis=ax)
        if w > 0:
            a = a + w * (np.take(vol, min(lo + 1, n - 1), axis=ax) - a)
        rest = [k for k in range(3) if k != ax]
        for i, k in enumerate(rest):
            a = zoom_axis(a, i, float(self._z[k]), self.shape[k])
        return self._orient(a, o)

    @staticmethod
    def _orient(a: np.ndarray, o: Orientation) -> np.ndarray:
        """A plane with its axes in array order, as the view shows it (rows down, columns right)."""
        if o.row_axis > o.col_axis:
            a = a.T
        if o.flip_row:
            a = a[::-1]
        if o.flip_col:
            a = a[:, ::-1]
        return a

    def ct_slice(self, o: Orientation, j: int) -> np.ndarray:
        """CT (HU) of slice ``j`` of view ``o`` in square pixels, rows and columns as shown."""
        return self._plane(self._ct, o, j)

    def dose_slice(self, k: int, o: Orientation, j: int) -> np.ndarray:
        """Panel ``k``'s dose (Gy) of slice ``j`` of view ``o``."""
        return self._plane(self._doses[k], o, j)

    def masks_slice(self, o: Orientation, j: int) -> dict[str, np.ndarray]:
        """ROI masks (nearest) of slice ``j`` of view ``o``, by ROI name."""
        ax = o.slice_axis
        codes = np.take(self._codes, int(self._nearest[ax][j]), axis=ax)
        rest = [k for k in range(3) if k != ax]
        codes = self._orient(codes[np.ix_(self._nearest[rest[0]], self._nearest[rest[1]])], o)
        one = codes.dtype.type(1)
        return {n: ((codes >> codes.dtype.type(self.p.roi_set.index(n))) & one).astype(bool)
                for n in self.names}

    def _to_resampled(self, ax: int, k: float) -> int:
        n = self.shape[ax]
        return int(np.clip(round((k - self._off[ax] + 0.5) * self._z[ax] - 0.5), 0, n - 1))

    def _to_original(self, ax: int, j: int) -> float:
        return self._off[ax] + (j + 0.5) / self._z[ax] - 0.5

    def slice_positions(self, o: Orientation) -> tuple[list[int], int]:
        """Slice indices (in the resampled box) of a view, every ``step_mm`` (more when the box is
        long) through the point's slice, and the position of that slice among them."""
        n = self.shape[o.slice_axis]
        c = self._to_resampled(o.slice_axis, self.point[o.slice_axis])
        step = max(1, int(round(self.step_mm / self.mm_per_px)))
        while n / step > self.max_slices:
            step += 1
        idx = sorted(set(range(c, -1, -step)) | set(range(c, n, step)))
        return idx, idx.index(c)

    def render(self, o: Orientation, j: int) -> np.ndarray:
        """One RGB image (uint8) of resampled slice ``j``: the panels side by side."""
        ct = self.ct_slice(o, j)
        grey = np.clip((ct + 200.0) / 500.0, 0, 1) * 200.0
        base = np.repeat(grey[..., None], 3, axis=2)
        # ROI contours (1 px), in the legend's colours; later ROIs drawn over earlier ones
        contour = np.zeros(base.shape, dtype=np.float32)
        on_contour = np.zeros(base.shape[:2], dtype=bool)
        for n, m in self.masks_slice(o, j).items():
            b = _boundary(m)
            if b.any():
                contour[b] = self.colours[n]
                on_contour |= b
        tiles = []
        for k, pn in enumerate(self.panels):
            d = self.dose_slice(k, o, j)
            if pn.kind == "dose":
                show = (d >= 0.1 * self.dose_max)[..., None]
                col = self._jet[np.clip(d * (255.0 / self.dose_max), 0, 255).astype(np.int32)]
                img = np.where(show, 0.55 * base + 0.45 * col, base)
                for lev, ic in zip(self.levels, ISO_COLOURS, strict=False):
                    img[_thick(_boundary(d >= lev))] = ic  # 2 px; ROI contours are 1 px
            else:
                show = (np.abs(d) >= self.dead_zone)[..., None]
                col = self._div[np.clip((d / self.diff_max + 1) * 127.5, 0, 255).astype(np.int32)]
                img = np.where(show, 0.2 * base + 0.8 * col, base)
            np.copyto(img, contour, where=on_contour[..., None])
            tiles.append(img)
        gap = np.full((tiles[0].shape[0], 4, 3), 255.0)
        row = np.concatenate(list(itertools.chain.from_iterable((t, gap) for t in tiles))[:-1], axis=1)
        return self._letters(np.clip(row, 0, 255).astype(np.uint8), o, tiles[0].shape[1])

    def _letters(self, rgb: np.ndarray, o: Orientation, w: int) -> np.ndarray:
        """Draw the edge letters (from the geometry) into every panel. The letters of a view are the
        same on all its slices: they are drawn once into a transparent overlay, then blended."""
        key = (o.letters, rgb.shape, w)
        if key not in self._overlays:
            a = np.asarray(self._letter_overlay(rgb.shape[:2], o, w), dtype=np.float32)
            alpha = a[..., 3:] / 255.0
            where = alpha[..., 0] > 0
            self._overlays[key] = (where, alpha[where], (a[..., :3] * alpha)[where])
        where, alpha, premult = self._overlays[key]
        out = rgb.copy()
        out[where] = np.clip(rgb[where] * (1.0 - alpha) + premult + 0.5, 0, 255).astype(np.uint8)
        return out

    @staticmethod
    def _letter_overlay(shape: tuple[int, int], o: Orientation, w: int):  # type: ignore[no-untyped-def]
        """A transparent RGBA image (PIL) of ``shape`` with the edge letters of every panel."""
        from PIL import Image, ImageDraw, ImageFont

        im = Image.new("RGBA", (shape[1], shape[0]), (0, 0, 0, 0))
        dr = ImageDraw.Draw(im)
        try:
            font = ImageFont.load_default(size=13)
        except TypeError:  # Pillow < 10.1
            font = ImageFont.load_default()
        h = shape[0]
        t, b, lft, r = o.letters
        n = (shape[1] + 4) // (w + 4)
        for i in range(n):
            x0 = i * (w + 4)
            for text, (x, y) in ((t, (x0 + w / 2, 2)), (b, (x0 + w / 2, h - 15)), (lft, (x0 + 3, h / 2 - 7)),
                                 (r, (x0 + w - 11, h / 2 - 7))):
                dr.text((x, y), text, fill=(255, 255, 80, 255), font=font, stroke_width=2,
                        stroke_fill=(0, 0, 0, 255))
        return im

    def views(self) -> list[dict]:
        """Per view: name, letters, images (data URIs), slice labels, start index, panel width (px)."""
        out = []
        g = self.p.geometry
        assert g is not None
        for o in orientations(self.p):
            idx, start = self.slice_positions(o)
            imgs, labels = [], []
            axis = _LET_INDEX(o.slice_letter)
            for j in idx:
                imgs.append(_png(self.render(o, j)))
                ix = np.array(self.point, dtype=float)
                ix[o.slice_axis] = self._to_original(o.slice_axis, j)
                labels.append(f"{'xyz'[axis]} = {g.to_patient(ix)[axis]:+.1f} mm")
            if o.slice_letter != SLIDE_TOWARDS[o.name]:  # the slider runs one anatomical way for any layout
                imgs, labels, start = imgs[::-1], labels[::-1], len(idx) - 1 - start
            out.append({"name": o.name, "letters": o.letters, "images": imgs, "labels": labels,
                        "start": start, "panel_px": self.shape[o.col_axis],
                        "img_px": self.shape[o.col_axis] * len(self.panels) + 4 * (len(self.panels) - 1)})
        return out


_counter = itertools.count()


def viewer_html(renderer: ViewRenderer, scale_mm: float = 50.0, zoom: float = 1.4) -> str:
    """The HTML of the three views with sliders, a mm scale bar, the panel titles and the legends
    (ROIs, isodose levels, colour scales). Edge letters are drawn into each panel; images are shown
    ``zoom`` times their pixel size (the scale bar follows)."""
    e = html.escape
    parts = ["<div class='views'>"]
    labels = "".join(f"<span class='pt' >{e(pn.label)}</span>" for pn in renderer.panels)
    for v in renderer.views():
        uid = f"v{next(_counter)}"
        bar_px = int(round(scale_mm / renderer.mm_per_px * zoom))
        ppx = int(round((v["panel_px"] + 4) * zoom))
        img_w = int(round(v["img_px"] * zoom))
        parts.append(
            f"<div class='view'><div class='vt'>{e(v['name'])}: "
            f"<span id='{uid}l'>{e(v['labels'][v['start']])}"
            f"</span> <input type='range' min='0' max='{len(v['images']) - 1}' value='{v['start']}' "
            f"data-view='{uid}' oninput='dpShow(this)' aria-label='{e(v['name'])} slice'> "
            f"<span class='meta'>{len(v['images'])} slices</span></div>"
            f"<div class='ptitles' style='grid-template-columns:repeat({len(renderer.panels)},{ppx}px)'>"
            f"{labels}</div>"
            f"<img id='{uid}' class='vimg' style='width:{img_w}px' src='{v['images'][v['start']]}' "
            f"alt='{e(v['name'])} view'>"
            f"<div class='scale'><span style='width:{bar_px}px'></span> {scale_mm:g} mm</div>"
            f"<script>DP['{uid}']={{i:{_js_list(v['images'])},l:{_js_list(v['labels'])}}};</script></div>")
    parts.append("</div>")
    parts.append(legend_html(renderer))
    return "".join(parts)


def _js_list(items: Sequence[str]) -> str:
    import json

    return json.dumps(list(items))


def legend_html(renderer: ViewRenderer) -> str:
    e = html.escape
    rois = "".join(f"<span class='sw' style='background:{hex_colour(renderer.colours[n])}'></span>{e(n)} "
                   for n in renderer.names)
    iso = "".join(f"<span class='sw iso' style='background:{hex_colour(ISO_CHIP)}'><span "
                  f"style='background:{hex_colour(c)}'></span></span>{lev:g} Gy "
                  for lev, c in zip(renderer.levels, ISO_COLOURS, strict=False))
    if len(renderer.levels) > len(ISO_COLOURS):
        iso += (f"(the {len(ISO_COLOURS)} highest prescriptions; no line at "
                f"{', '.join(f'{v:g}' for v in renderer.levels[len(ISO_COLOURS):])} Gy)")
    jet = ",".join(hex_colour(c) for c in renderer._jet[::32])
    div = ",".join(hex_colour(c) for c in renderer._div[::32])
    return (f"<div class='legend'><div><b>ROI contours</b> (1 px): {rois}</div>"
            f"<div><b>isodose lines</b> (2 px): {iso}</div>"
            f"<div><b>dose</b> 0 <span class='bar' style='background:linear-gradient(90deg,{jet})'></span> "
            f"{renderer.dose_max:.0f} Gy (wash from {0.1 * renderer.dose_max:.0f} Gy)</div>"
            f"<div><b>difference</b> -{renderer.diff_max:g} <span class='bar' "
            f"style='background:linear-gradient(90deg,{div})'></span> +{renderer.diff_max:g} Gy "
            f"(|difference| &lt; {renderer.dead_zone:g} Gy not coloured; red: first dose higher)</div></div>")


VIEW_CSS = """
.views{display:flex;flex-direction:column;gap:10px}
.view .vt{font-size:13px;margin:4px 0} .view input[type=range]{width:260px;vertical-align:middle}
.ptitles{display:grid;font-size:12px;color:#333} .ptitles .pt{text-align:center}
img.vimg{display:block;image-rendering:auto}
.scale{font-size:12px;margin-top:2px}
.scale span{display:inline-block;height:6px;background:#222;vertical-align:middle}
.legend{font-size:12px;margin:6px 0;line-height:1.8}
.sw{display:inline-block;width:12px;height:12px;margin:0 3px 0 8px;vertical-align:middle}
.sw.iso{width:22px;position:relative}
.sw.iso span{position:absolute;left:3px;right:3px;top:5px;height:2px}
.bar{display:inline-block;width:160px;height:10px;vertical-align:middle;border:1px solid #999}
"""

VIEW_JS = """
var DP={};
function dpShow(el){var v=DP[el.dataset.view];var i=+el.value;
document.getElementById(el.dataset.view).src=v.i[i];document.getElementById(el.dataset.view+'l').textContent=v.l[i];}
"""
