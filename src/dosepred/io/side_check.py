"""Whether each ROI named for a side (``LeftParotid``, ``RightCochlea``, ``Parotid_L``, ...) lies on that
side of the patient: a check made wherever a patient enters dosepred (:func:`dosepred.io.source.checked`:
every source's patients, and what ``data import-*`` reads), whatever the format, next to the
prescription check (:mod:`dosepred.io.rx_check`).

Nothing else looks at it: a structure set whose left and right labels are swapped (in the RTSTRUCT, a
NIfTI label file or an ROI map) reaches training, evaluation and plan QA without a word, and QA then
checks each parotid against the other's calibrated interval (docs/qa.md).

The rule (docs/formats.md, with the margins measured on OpenKBP), in patient coordinates (LPS: +x is the
patient's left), from each ROI's centroid (the mean of its voxel centres through the patient's
geometry, whatever the array's axis order or orientation):

- a left/right pair of the same organ (both contoured): the left one's x must exceed the right one's
  (OpenKBP's 195 parotid pairs: by 93 mm at the least);
- every sided ROI but a target (whose suffix may name a risk level, PTV_L, and which may cross the
  midline by design), paired or not: its centroid must not lie more than :data:`MIDLINE_MARGIN_MM` on the
  other side of the midline, the x of the centroid of the body on the ROI's own axial slices (the
  possible-dose mask; ``CT > BODY_HU`` where the mask covers the whole grid; no midline test without
  either) (OpenKBP: every parotid at least 42 mm on its own side). The whole body's centroid lies up to
  12 mm off the parotids' midpoint on OpenKBP (shoulders, a field of view cut on one side), the body's
  on the parotids' slices at most 5 mm.

A patient breaking it gets one :class:`LateralityWarning` naming the patient, the source, each such ROI,
its centroid x, the midline's and the other side's (mm), and the likely cause. It is a warning, not an
error: the contours and the dose are read as they are, and the remedy (renaming) is the user's.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np

from ..constants import BODY_HU
from ..patient import Patient
from ..roi import SIDE_WORDS

#: a sided ROI's centroid this far (mm) on the other side of the body's centroid is on the wrong side
#: (OpenKBP train + validation + sample: every parotid at least 42.3 mm on its own side; the margin
#: allows for a body centroid off the true midline and small sided organs near it, e.g. optic nerves)
MIDLINE_MARGIN_MM = 10.0

_CAMEL = re.compile(r"^(Left|Right)([A-Z0-9].*)$")
# the side words flips swap (dosepred.roi.SIDE_WORD_PAIRS: L, Lt, Left, Sin, izq, sx, ...), longest first
_WORDS = "|".join(sorted(SIDE_WORDS, key=len, reverse=True))
#: side words clinics write after an organ only (German li/re, French G/D: Parotis li, Parotide G); before a
#: name they are no side but the start of a word (Re-irradiation, G-tube: taken as sided, such a volume on
#: the patient's left was named as a right ROI on the wrong side)
_SUFFIX_ONLY = frozenset({"li", "re", "g", "d"})
_PREFIX_WORDS = "|".join(sorted(set(SIDE_WORDS) - _SUFFIX_ONLY, key=len, reverse=True))
_PREFIX = re.compile(rf"^({_PREFIX_WORDS})[\s_\-]+(.+)$", re.IGNORECASE)  # Lt Lacrimal, L_Parotid
# Parotid_L, and a planning risk volume of it: Parotid_L_PRV, Lens_R_PRV03 (the PRV keeps its side)
_SUFFIX = re.compile(rf"^(.+?)[\s_\-]+({_WORDS})((?:[\s_\-]+prv[\s_\-]?\d*(?:mm)?)?)$", re.IGNORECASE)
_SIDE = SIDE_WORDS


class LateralityWarning(UserWarning):
    """A patient's ROI named for one side lies on the other (the rule in the module docstring)."""


def side_of(name: str) -> tuple[str, str] | None:
    """``("Left" | "Right", organ)`` of an ROI named for a side: the canonical ``LeftParotid`` /
    ``RightParotid`` form (and ``Left_Parotid``, ``left parotid``, ``Lt Lacrimal``, ``L_Parotid``) or the
    TG-263 ``Parotid_L`` / ``Parotid_R`` form, also of a PRV (``Parotid_L_PRV05``), and with any side word
    flips swap (``Parotida izq``, ``Parotide_sx``: :data:`dosepred.roi.SIDE_WORD_PAIRS`); ``organ`` (lower
    case, without separators; a PRV's with its suffix) pairs the two sides. None for other names."""
    m = _CAMEL.match(name) or _PREFIX.match(name)
    if m:
        return _SIDE[m.group(1).lower()], _organ(m.group(2))
    m = _SUFFIX.match(name)
    if m:
        return _SIDE[m.group(2).lower()], _organ(m.group(1) + m.group(3))
    return None


def _organ(s: str) -> str:
    return re.sub(r"[\s_\-]+", "", s).lower()


@dataclass(frozen=True)
class SideFinding:
    """One sided ROI on the wrong side: its centroid x, the midline's and the other side's (mm)."""

    roi: str
    side: str
    x: float
    #: the x of the body's centroid on the ROI's slices (None: no body mask or CT to take it from)
    midline: float | None
    #: the other side's ROI of the same organ and its centroid x (None: not contoured)
    other: str | None = None
    other_x: float | None = None

    @property
    def across_midline(self) -> float:
        """How far (mm) the centroid lies on the other side of the midline (negative: on its own side)."""
        if self.midline is None:
            return float("-inf")
        return (self.midline - self.x) if self.side == "Left" else (self.x - self.midline)

    def described(self) -> str:
        where = []
        other_side = "right" if self.side == "Left" else "left"
        if self.midline is not None and self.across_midline > MIDLINE_MARGIN_MM:
            where.append(f"{self.across_midline:.0f} mm {other_side} of the midline "
                         f"(x = {self.midline:+.1f} mm)")
        if self.other is not None and self.other_x is not None:
            where.append(f"{other_side} of {self.other} (x = {self.other_x:+.1f} mm)")
        return f"{self.roi} at x = {self.x:+.1f} mm, " + " and ".join(where)


def centroid_x(p: Patient, mask: np.ndarray) -> float | None:
    """LPS x (mm) of the centroid of ``mask``'s voxel centres in ``p``'s patient coordinates (the
    geometry's transform is affine, so the centroid of the indices maps to the centroid of the points);
    None for an empty mask."""
    idx = np.nonzero(mask)
    if not idx[0].size:
        return None
    ijk = np.array([float(np.mean(a, dtype=np.float64)) for a in idx])
    assert p.geometry is not None
    return float(p.geometry.to_patient(ijk)[0])


def midline_x(p: Patient, near: np.ndarray | None = None) -> float | None:
    """The body centroid's LPS x (mm): of the possible-dose mask, of ``CT > BODY_HU`` where the mask
    covers the whole grid (not a body outline), None without either. ``near`` (an ROI's mask): of the
    body on the axial slices that ROI lies on (the whole body where it has none there)."""
    mask = p.possible_dose_mask
    if mask is None or mask.all():
        if p.ct is None:
            return None
        mask = np.asarray(p.ct) > BODY_HU
    mask = np.asarray(mask, bool)
    if near is not None and near.any():
        assert p.geometry is not None
        k = p.geometry.axis_along("SI")
        other = tuple(a for a in range(mask.ndim) if a != k)
        on = np.any(near, axis=other)
        shape = [1] * mask.ndim
        shape[k] = -1
        local = mask & on.reshape(shape)
        if local.any():
            mask = local
    return centroid_x(p, mask)


def sided_centroids(p: Patient) -> dict[str, tuple[str, str, float]]:
    """Each contoured ROI of ``p`` named for a side: ``name -> (side, organ, centroid x)``."""
    out = {}
    for name in p.present_rois:
        s = side_of(name)
        if s is None:
            continue
        x = centroid_x(p, p.mask(name))
        if x is not None:
            out[name] = (s[0], s[1], x)
    return out


def side_findings(p: Patient) -> list[SideFinding]:
    """The sided ROIs of ``p`` that break the rule of the module docstring (empty when none)."""
    rois = sided_centroids(p)
    if not rois:
        return []
    by_organ: dict[tuple[str, str], tuple[str, float]] = {(o, s): (n, x) for n, (s, o, x) in rois.items()}
    found = []
    for name, (side, organ, x) in rois.items():
        other = by_organ.get((organ, "Right" if side == "Left" else "Left"))
        swapped = other is not None and ((x <= other[1]) if side == "Left" else (x >= other[1]))
        f = SideFinding(name, side, x, midline_x(p, p.mask(name)), *(other if swapped else (None, None)))
        # a target's side suffix may name its risk level, not its side (PTV_L: low risk), and a target
        # may cross the midline by design: only the pair rule holds it (PTV_L left of PTV_R)
        target = name in p.roi_set and p.roi_set[name].kind == "target"
        if swapped or (not target and f.across_midline > MIDLINE_MARGIN_MM):
            found.append(f)
    return found


def check_sides(p: Patient, where: str | None = None) -> list[SideFinding]:
    """The check of the module docstring on ``p`` (``where``: the source it was read from; else
    ``meta["source"]``): nothing when each sided ROI lies on its side, else one
    :class:`LateralityWarning` naming the patient, the source and each such ROI. Returns the findings."""
    found = side_findings(p)
    if found:
        src = where or p.meta.get("source")
        warnings.warn(f"patient {p.id}{f' of {src}' if src else ''}: {described(found)}", LateralityWarning,
                      stacklevel=2)
    return found


def described(found: list[SideFinding]) -> str:
    """What :func:`check_sides` says of its findings (without the patient)."""
    return ("ROI named for a side lies on the other (LPS x, + is the patient's left; centroids): "
            + "; ".join(f.described() for f in found)
            + " (likely cause: left and right labels swapped in the structure set, label file or ROI "
            "map; correct the names at the source or with an ROI map, --roi-map)")


__all__ = ["LateralityWarning", "MIDLINE_MARGIN_MM", "SideFinding", "centroid_x", "check_sides",
           "described", "midline_x", "side_findings", "side_of", "sided_centroids"]
