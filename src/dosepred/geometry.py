"""Where a voxel grid lies in the patient: :class:`Geometry` (origin, direction cosines, spacing).

Coordinates are DICOM patient coordinates, **LPS, mm**: +x towards the patient's left, +y towards
posterior, +z towards the head (superior). A grid of shape ``(n0, n1, n2)`` maps array index
``i = (i0, i1, i2)`` to the patient point

    p = origin + direction @ (spacing * i)

``origin`` is the centre of voxel ``(0, 0, 0)``; column ``j`` of ``direction`` is the unit vector
along which array axis ``j`` increases; ``spacing[j]`` is the step in mm along axis ``j``. Nothing in
dosepred assumes an axis order: the anatomical meaning of an axis (which one runs left-right, for
flips) is read from ``direction``.

Conventions per source (see docs/formats.md):

- **DICOM**: array ``(slice, row, column)``; axis 0 along ``row_dir x col_dir`` (slices sorted
  ascending along it), axis 1 along the column direction (second ImageOrientationPatient triple),
  axis 2 along the row direction (first triple); origin = ImagePositionPatient of the first slice.
- **NIfTI**: the file's affine is RAS; ``Geometry.from_ras_affine`` flips x and y.
- **OpenKBP**: the CSV files carry no position. Checked on the anatomy of all 202 train and
  validation patients (brainstem superior to larynx, mandible anterior to the spinal cord, left
  parotid on the patient's left), the 128^3 arrays run axis 0 anterior->posterior, axis 1
  right->left, axis 2 superior->inferior (``describe()``: "A->P, R->L, S->I"), with
  ``voxel_dimensions.csv`` the spacing per array axis. dosepred places the grid centre at the origin
  of patient coordinates (:meth:`Geometry.openkbp`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DosepredError

#: Letters of the LPS axes: (towards -, towards +) for x, y, z.
_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "I": "S", "S": "I"}
#: Anatomical axis names accepted by :meth:`Geometry.axis_along`.
_AXIS_OF = {"LR": 0, "RL": 0, "x": 0, "AP": 1, "PA": 1, "y": 1, "SI": 2, "IS": 2, "z": 2}

#: The OpenKBP array convention as the letters each array axis runs towards.
OPENKBP_AXES = "PLI"


class GeometryError(DosepredError, ValueError):
    """A transform that is not a valid voxel grid (degenerate, non-finite, not unit directions)."""


def _frozen(a: Any, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.array(a, dtype=np.float64).reshape(shape)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Geometry:
    """A voxel grid's placement in patient coordinates (LPS, mm); see the module docstring."""

    origin: np.ndarray  # (3,) mm, centre of voxel (0, 0, 0)
    direction: np.ndarray  # (3, 3); column j = unit vector of array axis j
    spacing: tuple[float, float, float]  # mm per array axis

    def __post_init__(self) -> None:
        try:
            origin = _frozen(self.origin, (3,))
            direction = _frozen(self.direction, (3, 3))
            spacing = tuple(float(s) for s in self.spacing)
        except (ValueError, TypeError) as e:
            raise GeometryError("geometry needs a 3-vector origin, a 3x3 direction and 3 spacings: "
                                f"{e}") from None
        if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise GeometryError(f"spacing must be three positive finite mm values, got {self.spacing}")
        if not (np.all(np.isfinite(origin)) and np.all(np.isfinite(direction))):
            raise GeometryError("origin and direction must be finite")
        norms = np.linalg.norm(direction, axis=0)
        if not np.allclose(norms, 1.0, atol=1e-3):
            raise GeometryError("direction columns must be unit vectors, got norms "
                                f"{np.round(norms, 4).tolist()}")
        direction = _frozen(direction / norms, (3, 3))
        if abs(np.linalg.det(direction)) < 1e-3:
            raise GeometryError(f"degenerate orientation: array axes are (nearly) parallel "
                                f"(direction columns {np.round(direction.T, 4).tolist()})")
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "spacing", spacing)

    # construction ----------------------------------------------------------------------------
    @classmethod
    def openkbp(cls, shape: Sequence[int], spacing: Sequence[float]) -> Geometry:
        """The OpenKBP array convention (axis 0 A->P, axis 1 R->L, axis 2 S->I), grid centre at 0."""
        direction = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
        return cls.centred(shape, spacing, direction)

    @classmethod
    def centred(cls, shape: Sequence[int], spacing: Sequence[float], direction: Any) -> Geometry:
        """A grid with the given axes whose centre lies at the origin of patient coordinates."""
        d = np.asarray(direction, dtype=np.float64)
        half = (np.asarray(shape, dtype=np.float64) - 1) / 2 * np.asarray(spacing, dtype=np.float64)
        return cls(-(d @ half), d, tuple(spacing))  # type: ignore[arg-type]

    @classmethod
    def from_affine(cls, affine: Any) -> Geometry:
        """From a 4x4 index -> LPS mm affine."""
        a = np.asarray(affine, dtype=np.float64)
        if a.shape != (4, 4):
            raise GeometryError(f"an affine must be 4x4, got shape {a.shape}")
        m = a[:3, :3]
        sp = np.linalg.norm(m, axis=0)
        if np.any(sp <= 0) or not np.all(np.isfinite(sp)):
            raise GeometryError(f"affine has a zero or non-finite axis: {a.tolist()}")
        return cls(a[:3, 3], m / sp, tuple(float(s) for s in sp))  # type: ignore[arg-type]

    @classmethod
    def from_ras_affine(cls, affine: Any) -> Geometry:
        """From a NIfTI (RAS) 4x4 affine."""
        return cls.from_affine(np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64))

    @classmethod
    def from_dicom(cls, position: Sequence[float], orientation: Sequence[float],
                   spacing: Sequence[float]) -> Geometry:
        """A ``(slice, row, column)`` array from the first slice's ImagePositionPatient, the
        ImageOrientationPatient (row direction, column direction) and ``(slice gap, PixelSpacing[0],
        PixelSpacing[1])``; slices ascend along ``row_dir x col_dir``."""
        o = np.asarray(orientation, dtype=np.float64).reshape(-1)
        if o.shape != (6,):
            raise GeometryError(f"ImageOrientationPatient must hold 6 numbers, got {list(o)}")
        row, col = o[:3], o[3:]
        for name, v in (("row", row), ("column", col)):
            if not abs(np.linalg.norm(v) - 1.0) < 1e-3:
                raise GeometryError(f"ImageOrientationPatient {name} direction {v.tolist()} "
                                    "is not a unit vector")
        if abs(float(row @ col)) > 1e-3:
            raise GeometryError(f"ImageOrientationPatient row {row.tolist()} and column {col.tolist()} "
                                "directions are not perpendicular")
        normal = np.cross(row, col)
        return cls(np.asarray(position, dtype=np.float64), np.stack([normal, col, row], axis=1),
                   tuple(spacing))  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        return cls(np.asarray(d["origin"]), np.asarray(d["direction"]), tuple(d["spacing"]))

    def to_dict(self) -> dict[str, Any]:
        return {"origin": [float(v) for v in self.origin],
                "direction": [[float(v) for v in row] for row in self.direction],
                "spacing": list(self.spacing)}

    # transforms ------------------------------------------------------------------------------
    @property
    def matrix(self) -> np.ndarray:
        """3x3: column j is the mm step of array axis j."""
        return self.direction * np.asarray(self.spacing)

    @property
    def affine(self) -> np.ndarray:
        """4x4 index -> LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.matrix
        a[:3, 3] = self.origin
        return a

    @property
    def ras_affine(self) -> np.ndarray:
        """4x4 index -> RAS mm (what NIfTI stores)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine

    def to_patient(self, index: Any) -> np.ndarray:
        """Array indices (..., 3) -> patient points (..., 3), LPS mm."""
        return np.asarray(index, dtype=np.float64) @ self.matrix.T + self.origin

    def to_index(self, points: Any) -> np.ndarray:
        """Patient points (..., 3), LPS mm -> continuous array indices (..., 3)."""
        return (np.asarray(points, dtype=np.float64) - self.origin) @ np.linalg.inv(self.matrix).T

    def centre(self, shape: Sequence[int]) -> np.ndarray:
        """Patient point of the grid centre."""
        return self.to_patient((np.asarray(shape, dtype=np.float64) - 1) / 2)

    # anatomy -----------------------------------------------------------------------------------
    def axis_letters(self) -> str:
        """The letter each array axis runs *towards*, by its nearest LPS axis, e.g. ``"PLI"`` for
        OpenKBP arrays (axis 0 towards posterior, 1 towards the left, 2 towards the feet)."""
        a = np.abs(self.direction)
        ks = [int(np.argmax(a[:, j])) for j in range(3)]
        if len(set(ks)) != 3:  # a tie (an axis at 45 degrees): the assignment with the largest cosines
            from itertools import permutations

            ks = list(max(permutations(range(3)), key=lambda ks: sum(a[k, j] for j, k in enumerate(ks))))
        out = [_LETTERS[k][1 if self.direction[k, j] > 0 else 0] for j, k in enumerate(ks)]
        if len({_axis_family(c) for c in out}) != 3:
            raise GeometryError(f"array axes {out} do not map to three distinct anatomical axes")
        return "".join(out)

    def describe(self) -> str:
        """Each array axis anatomically, e.g. ``"A->P, R->L, S->I"``; ``~`` marks oblique axes."""
        parts = []
        for j, c in enumerate(self.axis_letters()):
            v = self.direction[:, j]
            oblique = float(np.max(np.abs(v))) < 1 - 1e-6
            parts.append(f"{'~' if oblique else ''}{_OPPOSITE[c]}->{c}")
        return ", ".join(parts)

    def axis_along(self, anatomical: str) -> int:
        """The array axis closest to an anatomical axis: ``"LR"``, ``"AP"`` or ``"SI"``."""
        try:
            k = _AXIS_OF[anatomical]
        except KeyError:
            raise ValueError(f"anatomical axis must be one of LR, AP, SI, got {anatomical!r}") from None
        return next(j for j, c in enumerate(self.axis_letters()) if _axis_family(c) == k)  # as its letter

    def is_axis_aligned(self, tol: float = 1e-6) -> bool:
        """True when every array axis runs along an LPS axis (up to ``tol`` in direction cosine)."""
        return bool(np.all(np.max(np.abs(self.direction), axis=0) > 1 - tol))

    # reorientation --------------------------------------------------------------------------
    def permutation_to(self, letters: str) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
        """``(perm, flips)`` that bring this grid's arrays to axes running towards ``letters``
        (e.g. ``"PLI"``): ``reorient(arr, perm, flips)``; new axis i is old axis ``perm[i]``,
        reversed when ``flips[i]``. Oblique grids map to the nearest axes (resample for exactness)."""
        letters = letters.upper()
        have = self.axis_letters()
        if sorted(_axis_family(c) for c in letters) != [0, 1, 2]:
            raise GeometryError(f"target axes {letters!r} must name three distinct anatomical axes")
        perm, flips = [], []
        for c in letters:
            j = next(j for j, h in enumerate(have) if _axis_family(h) == _axis_family(c))
            perm.append(j)
            flips.append(have[j] != c)
        return tuple(perm), tuple(flips)  # type: ignore[return-value]

    def reoriented(self, perm: Sequence[int], flips: Sequence[bool], shape: Sequence[int]) -> Geometry:
        """The geometry of ``reorient(arr, perm, flips)`` for an array of ``shape`` (this grid's)."""
        first = np.zeros(3)
        for j, f in zip(perm, flips, strict=True):
            if f:
                first[j] = shape[j] - 1
        d = np.stack([self.direction[:, j] * (-1.0 if f else 1.0) for j, f in zip(perm, flips, strict=True)],
                     axis=1)
        return Geometry(self.to_patient(first), d, tuple(self.spacing[j] for j in perm))  # type: ignore[arg-type]

    # comparison -----------------------------------------------------------------------------
    def same_as(self, other: Geometry, tol_mm: float = 1e-3, tol_dir: float = 1e-5) -> bool:
        """Same grid placement: origins within ``tol_mm``, directions within ``tol_dir``, spacings
        within ``tol_mm``."""
        return (bool(np.allclose(self.origin, other.origin, atol=tol_mm, rtol=0))
                and bool(np.allclose(self.direction, other.direction, atol=tol_dir, rtol=0))
                and bool(np.allclose(self.spacing, other.spacing, atol=tol_mm, rtol=0)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        return (np.array_equal(self.origin, other.origin) and np.array_equal(self.direction, other.direction)
                and self.spacing == other.spacing)

    def __hash__(self) -> int:
        return hash((self.origin.tobytes(), self.direction.tobytes(), self.spacing))

    def __repr__(self) -> str:
        o = ", ".join(f"{v:.6g}" for v in self.origin)
        s = ", ".join(f"{v:.6g}" for v in self.spacing)
        try:
            d = self.describe()
        except GeometryError:
            d = "oblique"
        return f"Geometry({d}; origin ({o}) mm; spacing ({s}) mm)"


#: |cos| of the angle between two array axes above which a grid is sheared (0.006 degrees from 90)
SHEAR_TOL = 1e-4


def shear_problem(g: Geometry) -> str | None:
    """Why grid ``g`` cannot be used as it is (its array axes not perpendicular: a sheared grid, e.g.
    a CT with gantry tilt stored as one volume), in words; None for a grid with perpendicular axes.
    Voxel volumes, DVHs and every mm measured on a sheared grid from its spacing alone would be wrong
    (the voxel's true volume is the determinant), so readers and scoring refuse it."""
    d = g.direction
    worst = max(((abs(float(d[:, i] @ d[:, j])), i, j) for i, j in ((0, 1), (0, 2), (1, 2))))
    if worst[0] <= SHEAR_TOL:
        return None
    _, i, j = worst
    angle = math.degrees(math.acos(max(-1.0, min(1.0, float(d[:, i] @ d[:, j])))))
    true = abs(float(np.linalg.det(g.matrix)))
    nominal = float(np.prod(g.spacing))
    return (f"its array axes {i} and {j} are {angle:.1f} degrees apart, not 90: a sheared grid (e.g. a CT "
            f"with gantry tilt), whose voxels hold {true:.4g} mm3, not the {nominal:.4g} mm3 of their "
            f"spacing ({100 * (nominal / true - 1):+.1f} %); resample it onto a grid with perpendicular axes "
            "first")


def _axis_family(letter: str) -> int:
    for k, pair in enumerate(_LETTERS):
        if letter in pair:
            return k
    raise GeometryError(f"{letter!r} is not an anatomical direction letter (R, L, A, P, I, S)")


def reorient(arr: np.ndarray, perm: Sequence[int], flips: Sequence[bool]) -> np.ndarray:
    """Permute and flip the first three axes of ``arr`` (see :meth:`Geometry.permutation_to`);
    trailing axes stay. Returns a view when possible."""
    axes = list(perm) + list(range(3, arr.ndim))
    out = np.transpose(arr, axes)
    flip_axes = [i for i, f in enumerate(flips) if f]
    return np.flip(out, axis=flip_axes) if flip_axes else out


def unreorient(arr: np.ndarray, perm: Sequence[int], flips: Sequence[bool]) -> np.ndarray:
    """Inverse of :func:`reorient`."""
    flip_axes = [i for i, f in enumerate(flips) if f]
    out = np.flip(arr, axis=flip_axes) if flip_axes else arr
    inv = list(np.argsort(perm)) + list(range(3, arr.ndim))
    return np.transpose(out, inv)


#: a body mask whose axial slices, each filled, hold more than this many times its voxels is an outline
#: (a skin rind a few mm thick: TotalSegmentator's skin.nii.gz, a clinic's "Skin" ROI), not the body
OUTLINE_FILL_RATIO = 1.5


#: half the thickness (mm) that tells the patient from devices in the CT: a part of ``CT > BODY_HU`` no
#: voxel of which lies deeper than this from air in its axial slice (thinner than about 2 x 12 mm) is a
#: treatment couch top, headrest or immobilisation frame, a thermoplastic mask, a wire, a marker or noise
DEVICE_MM = 12.0
#: a thin part joined to the patient (beyond ``DEVICE_MM`` of its thicker parts) is a device touching it
#: (the wings of a couch top under the back, a headrest) from this volume (ml) on; the patient's own
#: (nose, ears, fingers: at most 11 ml on the 33 OpenKBP validation patients) are kept
DEVICE_JOINED_ML = 50.0
#: air gaps (mm) closed before the thickness is taken: the walls of the nasal cavity and sinuses are thin
_CLOSE_MM = 10.0


def _depth(mask: np.ndarray, sp: tuple[float, ...], ax: int) -> np.ndarray:
    """mm from each voxel to the nearest voxel outside ``mask`` in its own axial slice (across ``ax``)."""
    from scipy import ndimage

    sp2 = tuple(s for i, s in enumerate(sp) if i != ax)
    return np.moveaxis(np.stack([ndimage.distance_transform_edt(s, sampling=sp2)
                                 for s in np.moveaxis(mask, ax, 0)]), 0, ax)


def _coarse(mask: np.ndarray, f: tuple[int, ...]) -> np.ndarray:
    """``mask`` on a grid ``f`` times coarser per axis: a coarse voxel is in it when half its voxels are."""
    if f == (1, 1, 1):
        return mask
    pad = [(0, -n % k) for n, k in zip(mask.shape, f, strict=True)]
    m = np.pad(mask, pad).astype(np.float32)
    c = m.reshape(m.shape[0] // f[0], f[0], m.shape[1] // f[1], f[1], m.shape[2] // f[2], f[2])
    return c.mean(axis=(1, 3, 5)) >= 0.5


def _fine(mask: np.ndarray, f: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """The coarse ``mask`` back on the grid of ``shape`` (each voxel takes its coarse voxel's value)."""
    if f == (1, 1, 1):
        return mask
    return mask[np.ix_(*[np.arange(n) // k for n, k in zip(shape, f, strict=True)])]


def _filled(mask: np.ndarray, ax: int) -> np.ndarray:
    """``mask`` with each axial slice's holes filled (slices across ``ax``)."""
    from scipy import ndimage  # heavy: scipy.ndimage, only for bodies taken from the CT or checked

    return np.moveaxis(np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, ax, 0)]), 0, ax)


def ct_body(ct: np.ndarray, geometry: Geometry, threshold: float = -500.0) -> tuple[np.ndarray, str]:
    """``(body, what was removed)`` of a patient without a body contour: ``ct > threshold`` (HU;
    ``BODY_HU``) without the devices in the CT, then each axial slice's holes filled (across the array
    axis closest to head-feet in ``geometry``), so that the air inside the patient (airways, oral cavity,
    sinuses) is body, as in a drawn body contour. Unfilled, a target reaching into the airway lay partly
    outside the possible-dose mask (PTV70 D95 0 Gy on a validation patient).

    Devices are thin in their axial slices (no voxel deeper than :data:`DEVICE_MM` from air): each such
    3D-connected piece apart from the patient (a couch top or headrest frame, even a few mm below it, a
    mask frame, wires, markers, noise), and each such part joined to the patient, beyond ``DEVICE_MM``
    of its thicker parts, of :data:`DEVICE_JOINED_ML` or more (the wings of a couch top or headrest
    touching it; the part under the patient stays). Every thicker piece is kept, however many (arms, a
    shoulder). Without this, the couch boards of OpenKBP's CTs were body, and their foam cores were filled
    as holes. The words name what was removed (pieces, voxels, ml), "" when nothing was; a CT with no
    thick piece (a phantom of thin parts) is left whole."""
    from scipy import ndimage  # heavy: scipy.ndimage, only for patients without a body

    raw = np.asarray(ct) > threshold
    if not raw.any():
        return raw, ""
    sp = tuple(float(s) for s in geometry.spacing)
    # air around it, where the grid has some, past the gaps closed: the box's edge would read as body
    pad = [int(math.ceil(_CLOSE_MM / s)) + 1 for s in sp]
    box = tuple(slice(max(int(i.min()) - m, 0), int(i.max()) + 1 + m)
                for i, m in zip(np.nonzero(raw), pad, strict=True))
    body = raw[box]
    ax = geometry.axis_along("SI")
    # thickness on a grid of about 2 mm in-plane at the finest (a 512 x 512 CT: 4 times fewer voxels)
    f = tuple(1 if i == ax else max(1, int(2.0 // s)) for i, s in enumerate(sp))
    csp = tuple(s * k for s, k in zip(sp, f, strict=True))
    edge = DEVICE_MM + max(s for i, s in enumerate(csp) if i != ax) / 2  # voxel centres: half a voxel deeper
    labels, n = ndimage.label(body)
    deep = _fine(_depth(_coarse(body, f), csp, ax) > edge, f, body.shape)
    thick = np.zeros(n + 1, bool)
    thick[np.unique(labels[deep & body])] = True
    thick[0] = False
    words = []
    if thick.any() and not thick[1:].all():
        apart = ~thick[labels] & body
        words.append(f"{n - int(thick.sum())} piece(s) thinner than {2 * DEVICE_MM:g} mm apart from the "
                     f"patient ({_ml(apart, sp)})")
        body = body & ~apart
    if thick.any():
        cb = _coarse(body, f)
        closed = _depth(_depth(~cb, csp, ax) <= _CLOSE_MM, csp, ax) > _CLOSE_MM  # airways' thin walls
        core = _depth(_filled(closed | cb, ax), csp, ax) > edge
        near = _fine(_depth(~core, csp, ax) <= DEVICE_MM, f, body.shape)
        thin, k = ndimage.label(body & ~near)  # beyond the body, opened
        sizes = np.bincount(thin.ravel(), minlength=k + 1)[1:] * float(np.prod(sp)) / 1000.0
        big = np.concatenate([[False], sizes >= DEVICE_JOINED_ML])[thin]
        if big.any():
            words.append(f"{int((sizes >= DEVICE_JOINED_ML).sum())} thin part(s) of {DEVICE_JOINED_ML:g} ml "
                         f"or more joined to it ({_ml(big, sp)})")
            body = body & ~big
    out = np.zeros(raw.shape, bool)
    out[box] = _filled(body, ax)
    if not words:
        return out, ""
    return out, ("devices removed (couch, headrest, immobilisation, markers or noise): " + ", ".join(words)
                 + f"; {int(out.sum())} voxels kept")


def _ml(mask: np.ndarray, spacing: tuple[float, ...]) -> str:
    from scipy import ndimage

    n = int(mask.sum())
    ml = float(np.prod(spacing)) / 1000.0
    labels, k = ndimage.label(mask)
    largest = int(np.bincount(labels.ravel())[1:].max()) if k > 1 else n
    return f"{n} voxels, {n * ml:.1f} ml" + (f", the largest {largest * ml:.1f} ml" if k > 1 else "")


def body_from_ct(ct: np.ndarray, geometry: Geometry, threshold: float = -500.0) -> np.ndarray:
    """The body of a patient without a body contour (:func:`ct_body`, without its words)."""
    return ct_body(ct, geometry, threshold)[0]


def filled_outline(body: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, float] | None:
    """``(the mask with each axial slice's holes filled, filled / original voxels)`` when ``body`` is an
    outline (:data:`OUTLINE_FILL_RATIO`), else None (a solid or empty mask). The axial slices are those
    across the array axis closest to head-feet in ``geometry``. Readers use it to refuse a shell as the
    possible-dose mask, which would leave the inside of the patient out of every prediction and score."""
    body = np.asarray(body, bool)
    n = int(body.sum())
    if not n:
        return None
    filled = _filled(body, geometry.axis_along("SI"))
    ratio = float(filled.sum()) / n
    return (filled, ratio) if ratio > OUTLINE_FILL_RATIO else None

