"""The space a model was trained in, and moving a patient into it and its dose back out.

A model sees arrays, not patients: it learns in the axis order and voxel sizes of its training data.
:class:`ModelSpace` records them with every trained model (checkpoint ``"space"``, released model
``config.json`` ``"space"``):

- ``axes``: the letters the array axes run towards (:meth:`dosepred.geometry.Geometry.axis_letters`),
  e.g. ``"PLI"`` for OpenKBP arrays (axis 0 A->P, axis 1 R->L, axis 2 S->I); training brings every
  patient into these axes by permutation/flip (:meth:`dosepred.patient.Patient.reoriented`);
- ``spacing_min`` / ``spacing_max``: the voxel size range (mm) per model axis over the training patients;
- ``fov_min`` / ``fov_max``: the field-of-view range (mm, array extent = shape x spacing) per model axis;
- ``masked``: every training patient had a possible-dose (body) mask (not all voxels);
- ``absent_rois``: the model's ROIs that some training patients lacked (not contoured): a patient
  may lack them at prediction time as well (:func:`dosepred.predict.match_rois`); None for a record
  made before it was kept;
- ``absent_counts`` and ``absent_patients``: how many training patients lacked each of ``absent_rois``
  (``{name: count}``) of how many in all (``patients``, or more for a fine-tune, whose ``--init``
  model's patients count too): one lacked by fewer than :data:`RARELY_ABSENT` of them (a cord, a
  parotid) is rarely missing, so a patient lacking it more likely has it under a name nobody
  recognised, and ``predict`` and ``qa`` warn (:meth:`ModelSpace.rarely_absent`); None for a record
  with only the list (every ROI of it then "may be missing", a note);
- ``patients`` and ``source`` (how the record came about).

:func:`into_space` brings any patient into that space: without interpolation where its grid is a
permutation/flip of the model's axes and its spacing is inside the range (``SPACING_TOL`` relative
slack); otherwise it is resampled onto a grid along the model's axes with, per axis, the in-range
spacing nearest to its own (CT linear, ROIs and the possible-dose mask by
:func:`dosepred.resample.resample_mask`, which keeps small structures). :meth:`Placement.back` brings a
dose predicted there back onto the patient's own grid (the inverse permutation, or linear resampling
in patient coordinates), masked by the patient's possible-dose mask. A patient far from the training
data gets a warning naming what differs (:meth:`ModelSpace.differences`).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..boxes import box_shape, grow, mask_box
from ..constants import BODY_HU, CT_FILL_HU
from ..errors import InputError
from ..geometry import Geometry, unreorient
from ..patient import Patient
from ..resample import extend_dose, index_map, resample, resample_mask, sub_grid

#: Relative slack on the spacing range: a spacing within 1 % of it is taken as inside (no resampling).
SPACING_TOL = 0.01
#: A spacing this many times coarser than the training maximum is "far off" (warned: detail is lost).
COARSE_FACTOR = 1.5
#: A field of view below ``FOV_FACTOR`` x the training minimum or above ``1 / FOV_FACTOR`` x the maximum
#: is "much smaller / larger" (warned).
FOV_FACTOR = 0.5

#: A CT whose median inside the body (possible-dose mask) lies farther than this from 0 HU is not in HU
#: (OpenKBP train and validation: -61 to 35 HU, soft tissue); one stored with an offset (raw values
#: without the rescale intercept of -1024, or + 1000) has its soft tissue near 1000
CT_BODY_MEDIAN_HU = 500.0

#: ROIs some patients of the OpenKBP train split lack (from its 169 patients' missing ROIs: every ROI
#: but PTV70); the record of the released models and of models saved without one
OPENKBP_ABSENT_ROIS = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx",
                       "Mandible", "PTV56", "PTV63")
#: How many of those 169 patients lack each (their dataset's ``missing_rois``)
OPENKBP_ABSENT_COUNTS = {"Brainstem": 13, "SpinalCord": 1, "RightParotid": 7, "LeftParotid": 6,
                         "Esophagus": 111, "Larynx": 89, "Mandible": 57, "PTV56": 15, "PTV63": 84}
#: An ROI lacked by fewer than this share of the training patients is "rarely missing": a patient
#: without it is warned (the organ is more likely there under a name nobody recognised, and the dose
#: near it would be predicted as for a patient without it); at least this share: a note
RARELY_ABSENT = 0.05

_AXIS_NAME = {"L": "R->L", "R": "L->R", "P": "A->P", "A": "P->A", "S": "I->S", "I": "S->I"}
_LPS = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def axes_direction(letters: str) -> np.ndarray:
    """The direction matrix (columns = unit LPS vectors) of arrays whose axes run towards ``letters``."""
    d = np.zeros((3, 3))
    for j, c in enumerate(letters.upper()):
        k, s = _LPS[c]
        d[k, j] = s
    return d


def _t3(v: Sequence[float]) -> tuple[float, float, float]:
    t = tuple(float(x) for x in v)
    if len(t) != 3:
        raise InputError(f"expected three values, got {list(v)}")
    return t  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelSpace:
    """Axis letters, spacing and field-of-view ranges (per model axis, mm) and mask presence of a
    model's training data (see the module docstring)."""

    axes: str = "PLI"
    spacing_min: tuple[float, float, float] = (2.734, 2.734, 1.5)
    spacing_max: tuple[float, float, float] = (5.078, 5.078, 3.3)
    fov_min: tuple[float, float, float] = (349.952, 349.952, 192.0)
    fov_max: tuple[float, float, float] = (649.984, 649.984, 422.4)
    masked: bool = True
    patients: int = 0
    source: str = "recorded"
    spacing_median: tuple[float, float, float] | None = (3.906, 3.906, 2.5)
    shape_median: tuple[float, float, float] | None = (128.0, 128.0, 128.0)
    absent_rois: tuple[str, ...] | None = None
    #: (name, training patients lacking it) per ROI of ``absent_rois``; a dict is accepted
    absent_counts: tuple[tuple[str, int], ...] | None = None
    #: the training patients ``absent_counts`` counts among (None: ``patients``)
    absent_patients: int | None = None
    #: which patients those are: sha256 of their sorted ids (a fine-tune on the same patients, as a
    #: continued training, does not count them twice); None: not recorded
    patients_sha: str | None = None

    def __post_init__(self) -> None:
        if self.absent_rois is not None:
            object.__setattr__(self, "absent_rois", tuple(str(n) for n in self.absent_rois))
        if self.absent_counts is not None:
            items = self.absent_counts.items() if isinstance(self.absent_counts, dict) else self.absent_counts
            counts = []
            for item in items:
                name, n = item
                if isinstance(n, bool) or not isinstance(n, (int, float)) or n != int(n) or n < 0:
                    raise InputError(f"absent_counts: {name!r} must be a count of patients, got {n!r}")
                counts.append((str(name), int(n)))
            object.__setattr__(self, "absent_counts", tuple(counts))
        if self.absent_patients is not None:
            object.__setattr__(self, "absent_patients", int(self.absent_patients))
        axes = str(self.axes).upper()
        axes_direction(axes)  # KeyError on a bad letter
        if sorted(_LPS[c][0] for c in axes) != [0, 1, 2]:
            raise InputError(f"model axes {axes!r} must name three distinct anatomical axes")
        object.__setattr__(self, "axes", axes)
        for k in ("spacing_min", "spacing_max", "fov_min", "fov_max"):
            object.__setattr__(self, k, _t3(getattr(self, k)))
        if self.spacing_median is not None:
            med = _t3(self.spacing_median)
            med = tuple(min(max(m, lo), hi) for m, lo, hi in zip(med, self.spacing_min, self.spacing_max,
                                                                   strict=True))
            object.__setattr__(self, "spacing_median", med)
        if self.shape_median is not None:
            object.__setattr__(self, "shape_median", _t3(self.shape_median))
        if any(not 0 < a <= b for a, b in zip(self.spacing_min, self.spacing_max, strict=True)):
            raise InputError(f"spacing range {self.spacing_min}-{self.spacing_max} is not 0 < min <= max")

    @classmethod
    def openkbp(cls) -> ModelSpace:
        """The OpenKBP train split (169 patients, 128^3 arrays "PLI"; voxel sizes from their
        voxel_dimensions.csv: 2.734-5.078 mm in-plane, 1.5-3.3 mm slices): the space of the released
        models and of any model saved before the record existed."""
        return cls(patients=169, source="OpenKBP train split (assumed for models without a record)",
                   absent_rois=OPENKBP_ABSENT_ROIS, absent_counts=tuple(OPENKBP_ABSENT_COUNTS.items()),
                   absent_patients=169)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpace:
        known = {"axes", "spacing_min", "spacing_max", "fov_min", "fov_max", "masked", "patients", "source",
                 "spacing_median", "shape_median", "absent_rois", "absent_counts", "absent_patients",
                 "patients_sha"}
        d = {k: v for k, v in d.items() if k in known}
        d.setdefault("spacing_median", None)
        d.setdefault("shape_median", None)
        if d.get("absent_rois") is not None and not isinstance(d["absent_rois"], (list, tuple)):
            raise InputError(f"absent_rois must be a list of ROI names, got {d['absent_rois']!r}")
        if d.get("absent_counts") is not None and not isinstance(d["absent_counts"], dict):
            raise InputError(f"absent_counts must map ROI names to counts of patients, got "
                             f"{d['absent_counts']!r}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return {"axes": self.axes, "spacing_min": list(self.spacing_min),
                "spacing_max": list(self.spacing_max),
                "fov_min": list(self.fov_min), "fov_max": list(self.fov_max), "masked": self.masked,
                "patients": self.patients, "source": self.source,
                "spacing_median": None if self.spacing_median is None else list(self.spacing_median),
                "shape_median": None if self.shape_median is None else list(self.shape_median),
                "absent_rois": None if self.absent_rois is None else list(self.absent_rois),
                "absent_counts": None if self.absent_counts is None else dict(self.absent_counts),
                "absent_patients": self.absent_patients, "patients_sha": self.patients_sha}

    @property
    def absent_of(self) -> int:
        """How many training patients ``absent_counts`` counts among."""
        return self.patients if self.absent_patients is None else self.absent_patients

    def rarely_absent(self) -> dict[str, int]:
        """The ROIs of ``absent_rois`` that fewer than :data:`RARELY_ABSENT` of the training patients
        lacked, each with how many did (``{name: count}``, of :attr:`absent_of`); empty without counts
        (a record with only the list) or without a patient count; an ROI of the list without a count is
        judged as with only the list (may be missing)."""
        if self.absent_rois is None or self.absent_counts is None or self.absent_of <= 0:
            return {}
        counts = dict(self.absent_counts)
        return {n: counts[n] for n in self.absent_rois
                if n in counts and counts[n] < RARELY_ABSENT * self.absent_of}

    @property
    def direction(self) -> np.ndarray:
        return axes_direction(self.axes)

    @property
    def lr_axis(self) -> int:
        """The model's left-right array axis (for flips and ``--tta``)."""
        return next(j for j, c in enumerate(self.axes) if c in "LR")

    def axis_name(self, j: int) -> str:
        return _AXIS_NAME[self.axes[j]]

    def summary(self) -> str:
        names = ", ".join(self.axis_name(j) for j in range(3))
        sp = ", ".join(f"{a:.3g}-{b:.3g}" for a, b in zip(self.spacing_min, self.spacing_max, strict=True))
        return f"axes {self.axes} ({names}), spacing {sp} mm, {'with' if self.masked else 'without'} " \
               f"possible-dose masks"

    def target_spacing(self, spacing: Sequence[float], fov: Sequence[float] | None = None,
                       policy: str = "fov", tol: float = SPACING_TOL) -> tuple[float, float, float]:
        """Per model axis: ``spacing`` itself when inside the range (with ``tol`` relative slack), else

        - ``policy="fov"`` (default): the field of view ``fov`` (mm) spread over the training data's
          median array size on that axis, clipped to the range: the patient is resampled the way the
          training arrays were made (OpenKBP: the CT's field of view on 128 voxels in-plane);
        - ``"median"``: the training data's median spacing on that axis;
        - ``"nearest"``: the nearest end of the range (also the fallback when nothing is recorded)."""
        if policy not in ("fov", "median", "nearest"):
            raise InputError(f"spacing policy must be 'fov', 'median' or 'nearest', got {policy!r}")
        out = []
        for j, (s, lo, hi) in enumerate(zip(spacing, self.spacing_min, self.spacing_max, strict=True)):
            s = float(s)
            if lo * (1 - tol) <= s <= hi * (1 + tol):
                out.append(s)
            elif policy == "fov" and fov is not None and self.shape_median is not None:
                out.append(min(max(float(fov[j]) / self.shape_median[j], lo), hi))
            elif policy in ("fov", "median") and self.spacing_median is not None:
                out.append(self.spacing_median[j])
            else:
                out.append(min(max(s, lo), hi))
        return tuple(out)  # type: ignore[return-value]

    def differences(self, patient: Patient, spacing: Sequence[float], fov: Sequence[float]) -> list[str]:
        """What makes ``patient`` (its ``spacing`` and field of view ``fov`` in mm, both in model axis
        order) far from the training data; empty when nothing does."""
        out = []
        for j, (s, hi) in enumerate(zip(spacing, self.spacing_max, strict=True)):
            if s > hi * COARSE_FACTOR:
                out.append(f"spacing {s:.3g} mm along {self.axis_name(j)} is far coarser than the training "
                           f"data's {self.spacing_min[j]:.3g}-{hi:.3g} mm (the CT holds less detail than "
                           "the model learnt from)")
        for j, (f, lo, hi) in enumerate(zip(fov, self.fov_min, self.fov_max, strict=True)):
            if f < lo * FOV_FACTOR:
                out.append(f"field of view {f:.0f} mm along {self.axis_name(j)} is much smaller than the "
                           f"training data's {lo:.0f}-{hi:.0f} mm")
            elif f > hi / FOV_FACTOR:
                out.append(f"field of view {f:.0f} mm along {self.axis_name(j)} is much larger than the "
                           f"training data's {lo:.0f}-{hi:.0f} mm")
        ct = ct_scale_problem(patient)
        if ct:
            out.append(ct)
        if self.masked and bool(np.all(patient.possible_dose_mask)):
            out.append("it has no possible-dose (body) mask, which every training patient had: dose is "
                       "predicted everywhere, also outside the body")
        return out


def ct_scale_problem(p: Patient) -> str | None:
    """What says that ``p``'s CT is not in HU, as every model reads it (air -1000, soft tissue near 0):
    the median inside its possible-dose (body) mask farther than :data:`CT_BODY_MEDIAN_HU` from 0 HU,
    or, without a mask, no air (the 1st percentile of the grid above ``BODY_HU``); None when neither
    (or without a CT). A CT stored with an offset is otherwise read as a patient of water in a room of
    water, and its dose predicted from that without a word. Every second voxel per axis is enough."""
    if p.ct is None or not p.ct.size:
        return None
    ct = p.ct[::2, ::2, ::2]
    mask = p.possible_dose_mask[::2, ::2, ::2] if p.possible_dose_mask is not None else None
    if mask is not None and mask.any() and not mask.all():
        med = float(np.median(ct[mask]))
        if abs(med) > CT_BODY_MEDIAN_HU:
            return (f"its CT's median inside the body (possible-dose mask) is {med:.0f} HU where soft tissue "
                    "is near 0 HU (OpenKBP's patients: -61 to 35 HU): the CT is not in HU (stored with an "
                    "offset, e.g. raw values without the rescale intercept?), and the model reads HU")
        return None
    low = float(np.percentile(ct, 1))
    if low > BODY_HU:
        return (f"its CT holds no air (99 % of its voxels above {low:.0f} HU, air is -1000 HU): the CT is "
                "not in HU (stored with an offset, e.g. raw values without the rescale intercept?), and the "
                "model reads HU")
    return None


class SpaceRecorder:
    """Brings training patients into one orientation and records the :class:`ModelSpace`.

    ``orientation``: axis letters (default ``"PLI"``, the OpenKBP arrays) or ``"first"`` (the first
    patient's). Patients are permuted/flipped into it (:meth:`Patient.reoriented`), never resampled:
    training arrays keep their voxels."""

    def __init__(self, orientation: str = "PLI") -> None:
        self.orientation = orientation
        self.axes: str | None = None if orientation.lower() == "first" else ModelSpace(axes=orientation).axes
        self.spacings: list[tuple[float, ...]] = []
        self.fovs: list[tuple[float, ...]] = []
        self.masked: list[bool] = []
        self.oblique: list[str] = []
        self.not_hu: list[str] = []  # patients whose CT is not in HU (ct_scale_problem)
        self.rois: tuple[str, ...] = ()
        self.absent: dict[str, int] = {}  # ROI -> training patients lacking it
        self.ids: list[str] = []

    def add(self, p: Patient) -> Patient:
        assert p.geometry is not None
        if self.axes is None:
            self.axes = p.geometry.axis_letters()
        if not p.geometry.is_axis_aligned(1e-4):
            self.oblique.append(p.id)
        if ct_scale_problem(p):
            self.not_hu.append(p.id)
        q = p.reoriented(self.axes)
        self.spacings.append(tuple(q.spacing))
        self.fovs.append(tuple(n * s for n, s in zip(q.shape, q.spacing, strict=True)))
        self.masked.append(not bool(np.all(q.possible_dose_mask)))
        if not self.rois:
            self.rois = tuple(p.roi_set.names)
        self.ids.append(p.id)
        for n in set(p.missing_rois):
            self.absent[n] = self.absent.get(n, 0) + 1
        return q

    def space(self) -> ModelSpace:
        if not self.spacings:
            raise InputError("no training patients to record the model space from")
        if self.oblique:
            warnings.warn(f"training patients {', '.join(self.oblique[:5])} have oblique grids: their arrays "
                          f"were permuted to the nearest axes {self.axes}, not resampled", stacklevel=2)
        if self.not_hu:
            some = ", ".join(self.not_hu[:5]) + (", ..." if len(self.not_hu) > 5 else "")
            warnings.warn(f"{len(self.not_hu)} of the {len(self.ids)} training patients have a CT that is "
                          f"not in HU ({some}: soft tissue far from 0 HU or no air; stored with an offset, "
                          "e.g. raw values without the rescale intercept?): the model reads HU (air -1000, "
                          "clipped to -1000..2000), so it learns from another CT than every patient given "
                          "in HU; import the CTs in HU",
                          stacklevel=2)
        sp, fov = np.array(self.spacings), np.array(self.fovs)
        return ModelSpace(axes=self.axes or "PLI", spacing_min=tuple(sp.min(0)), spacing_max=tuple(sp.max(0)),
                          fov_min=tuple(fov.min(0)), fov_max=tuple(fov.max(0)), masked=all(self.masked),
                          patients=len(self.spacings), source="recorded",
                          spacing_median=tuple(float(v) for v in np.median(sp, axis=0)),
                          shape_median=tuple(float(v) for v in np.median(fov / sp, axis=0)),
                          absent_rois=tuple(n for n in self.rois if n in self.absent),
                          absent_counts=tuple((n, self.absent[n]) for n in self.rois if n in self.absent),
                          absent_patients=len(self.spacings), patients_sha=ids_sha(self.ids))


def ids_sha(ids: Sequence[str]) -> str:
    """A short fingerprint of a set of patient ids (sha256 of the sorted ids, 16 hex digits)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------- placement

@dataclass
class Placement:
    """A patient in a model's space (``patient``) and the way back to its own grid (:meth:`back`)."""

    source: Patient
    patient: Patient
    kind: str  # "reoriented" (permutation/flip only; identity included) or "resampled"
    perm: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    warnings: list[str] = field(default_factory=list)
    # aligned grids are resampled in the source's own axes (a diagonal, separable map), then permuted:
    # the grid of that intermediate (None for oblique grids, resampled straight into the model axes)
    resampled_in_source_axes: Geometry | None = None

    def back(self, dose: np.ndarray) -> np.ndarray:
        """A dose on ``patient``'s grid -> float32 on the source patient's grid, in its possible-dose
        mask (zero elsewhere), to the mask's outermost voxels: the zeros just outside the model-space
        mask take their neighbours' dose before resampling (:func:`dosepred.resample.extend_dose`)."""
        src = self.source
        if self.kind == "reoriented":
            out = np.array(unreorient(dose, self.perm, self.flips), dtype=np.float32)
            out *= src.possible_dose_mask
            return out

        assert src.geometry is not None and self.patient.geometry is not None
        dgeo = self.patient.geometry
        dose = np.asarray(dose, np.float32)
        inside = np.asarray(self.patient.possible_dose_mask, dtype=bool)
        if self.resampled_in_source_axes is not None:  # permute the (small) model-grid dose back first
            dose = np.ascontiguousarray(unreorient(dose, self.perm, self.flips))
            inside = np.ascontiguousarray(unreorient(inside, self.perm, self.flips))
            dgeo = self.resampled_in_source_axes
        if inside.any() and not inside.all():
            # the network's dose is 0 Gy outside the model-space mask: the patient's outermost mask
            # voxels, between model voxels inside and outside it, would read back a fraction of their
            # dose (0 Gy on an oblique CT's last slice). The zeros within two model voxels of that
            # mask take the mean of their neighbours first
            dose = extend_dose(dose, inside, 2)
        mask = src.possible_dose_mask
        out = np.zeros(mask.shape, dtype=np.float32)
        box = mask_box(mask, empty="none")
        if box is not None:  # outside the mask the dose is zero: resample only its box
            sub = resample(dose, dgeo, sub_grid(src.geometry, box), box_shape(box), 1, mode="nearest")
            np.maximum(sub, 0, out=sub)
            sub *= mask[box]
            out[box] = sub
        return out


def _grid_covering(g: Geometry, shape: Sequence[int], direction: np.ndarray, spacing: Sequence[float]
                   ) -> tuple[Geometry, tuple[int, int, int]]:
    """A grid along ``direction`` with ``spacing`` covering the voxel extent of ``(g, shape)`` (its
    corners), centred on its centre."""
    corners = np.array([[a, b, c] for a in (-0.5, shape[0] - 0.5) for b in (-0.5, shape[1] - 0.5)
                        for c in (-0.5, shape[2] - 0.5)])
    pts = g.to_patient(corners) @ direction  # coordinates along the new axes
    extent = pts.max(0) - pts.min(0)
    sp = np.asarray(spacing, dtype=np.float64)
    n = np.maximum(1, np.ceil(extent / sp - 1e-6)).astype(int)
    centred = Geometry.centred(n, sp, direction)
    dst = Geometry(centred.origin + g.centre(shape), direction, tuple(float(s) for s in sp))  # type: ignore[arg-type]
    return dst, tuple(int(v) for v in n)  # type: ignore[return-value]


def _bit_boxes(codes: np.ndarray, n_bits: int) -> list[tuple[slice, ...] | None]:
    """The bounding box of every ROI bit, from three OR-reductions of the codes (one pass each)."""
    t = codes.dtype.type
    per_axis = [np.bitwise_or.reduce(codes, axis=tuple(a for a in range(3) if a != ax)) for ax in range(3)]
    boxes: list[tuple[slice, ...] | None] = []
    for k in range(n_bits):
        sl = []
        for ax in range(3):
            nz = np.flatnonzero((per_axis[ax] >> t(k)) & t(1))
            if not nz.size:
                break
            sl.append(slice(int(nz[0]), int(nz[-1]) + 1))
        boxes.append(tuple(sl) if len(sl) == 3 else None)
    return boxes


def resample_into(p: Patient, dst: Geometry, shape: Sequence[int], ct_fill: int = CT_FILL_HU) -> Patient:
    """``p`` on grid ``dst`` (the fast path of :func:`dosepred.resample.resample_patient`, same values):
    CT and dose linear; possible-dose mask and each ROI by ``resample_mask`` on its bounding box only."""
    assert p.geometry is not None
    src = p.geometry
    shape = tuple(int(s) for s in shape)
    ct = None if p.ct is None else resample(p.ct, src, dst, shape, 1, cval=ct_fill, dtype=np.int16)
    dose = None if p.dose is None else np.maximum(resample(p.dose, src, dst, shape, 1), 0).astype(np.float32)
    pdm = p.possible_dose_mask
    pdm = np.ones(shape, bool) if bool(np.all(pdm)) else resample_mask(pdm, src, dst, shape)
    a, _ = index_map(src, dst)
    pad = int(math.ceil(float(np.abs(a).sum(axis=1).max()))) + 2
    codes = np.zeros(shape, dtype=p.roi_set.dtype)
    t = codes.dtype.type
    missing = set(p.missing_rois)
    for k, box in enumerate(_bit_boxes(p.roi_codes, len(p.roi_set))):
        name = p.roi_set.names[k]
        if box is None or name in missing:
            missing.add(name)
            continue
        box = grow(box, pad, p.shape)
        sub = ((p.roi_codes[box] >> t(k)) & t(1)).astype(bool)
        m = resample_mask(sub, sub_grid(src, box), dst, shape)
        if m.any():
            codes |= m.astype(codes.dtype) << t(k)
        else:
            missing.add(name)
    return Patient(p.id, ct, codes, p.roi_set, dst.spacing, pdm, dose,
                   tuple(n for n in p.roi_set.names if n in missing), dict(p.meta), dst)


def into_space(p: Patient, space: ModelSpace, tol: float = SPACING_TOL, warn: bool = True,
               spacing_policy: str = "fov") -> Placement:
    """``p`` brought into ``space`` (see the module docstring); warns (``warn``) when it is far from
    the training data. ``spacing_policy``: see :meth:`ModelSpace.target_spacing`."""
    g = p.geometry
    assert g is not None
    perm, flips = g.permutation_to(space.axes)
    spacing = tuple(g.spacing[j] for j in perm)
    fov = tuple(p.shape[j] * g.spacing[j] for j in perm)
    found = space.differences(p, spacing, fov)
    if warn and found:
        warnings.warn(f"patient {p.id} is far from the model's training data: " + "; ".join(found),
                      stacklevel=2)
    target = space.target_spacing(spacing, fov, spacing_policy, tol)
    aligned = g.is_axis_aligned(1e-4)
    if aligned and target == spacing:
        return Placement(p, p.reoriented(space.axes), "reoriented", perm, flips, found)  # type: ignore[arg-type]
    if aligned:  # resample in the source's own axes (diagonal map), then permute the small result
        target_src = [0.0, 0.0, 0.0]
        for i, j in enumerate(perm):
            target_src[j] = target[i]
        dst, shape = _grid_covering(g, p.shape, g.direction, target_src)
        q = resample_into(p, dst, shape).reoriented(space.axes)
        return Placement(p, q, "resampled", perm, flips, found,  # type: ignore[arg-type]
                         resampled_in_source_axes=dst)
    dst, shape = _grid_covering(g, p.shape, space.direction, target)
    return Placement(p, resample_into(p, dst, shape), "resampled", perm, flips, found)  # type: ignore[arg-type]
