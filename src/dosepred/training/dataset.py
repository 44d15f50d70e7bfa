"""Training data: patients held in memory, full-resolution crops sampled toward the targets.

What it is for: feeding :mod:`dosepred.training.trainer`. Patients are loaded once (CT int16, dose
float32, ROI codes as the cache stores them, mask bool), each cut to the bounding box of its
possible-dose mask plus half a patch of real context on every side, so a crop centred on a mask
voxel sees what a sliding window over the whole grid sees. The centre's jitter (up to a quarter
patch) and the translation (``shift``) can take a window past that cut, where it sees fill (air,
0 Gy, no ROI) as beyond the grid; on OpenKBP's 128^3 grids the cut is most of the grid. (Widening
the cut would change every seed's crops, and with them the controls of earlier rounds.)

Sampling is a pure function of ``(seed, epoch, index)``: the patient is ``perm(seed, epoch)[index %
n]`` of the patients in their ids' natural order (pt_2 before pt_10, however the cache or split
file lists them) and the crop centre, flip and padding are drawn from
``default_rng([seed, epoch, index])``. Resuming, changing the number of workers, splitting over DDP
ranks or listing the patients in another order therefore gives the same crops. ``target_fraction``
of the crops are centred on a random target voxel, the rest on a random voxel of the possible-dose
mask.

Augmentation valid for dose: a flip along the left-right axis with the Left/Right ROI bits swapped
(``LeftParotid`` <-> ``RightParotid``); optionally (``rotate_p``) a rotation about the head-feet
axis by a multiple of ``rotate_step`` degrees (40: the nine equally spaced beam angles of OpenKBP's
plans, so a rotated plan is still a plausible plan) or, with ``rotate_max``, by a uniform angle in
+-``rotate_max`` degrees (a patient set up slightly rolled); optionally (``scale_p``) an isotropic
scaling in millimetres by a uniform factor in 1 +- ``scale_max`` (a somewhat larger or smaller head,
its dose distribution scaled with it; the voxel spacing the loss sees stays the patient's); and
(``shift``) a random translation that keeps the possible-dose mask in the window wherever it fits.
No intensity change touches the dose. The axes
are parameters (``flip_axis``: left-right, ``rotate_axis``: head-feet), never assumed here; for
today's OpenKBP arrays (axis 0 anterior->posterior, 1 right->left, 2 superior->inferior) they are 1
and 2. The rotation and translation draws come from their own generator
(``default_rng([seed, epoch, index, 1])``), so enabling them leaves the crop centres and flips of
the same seed unchanged.

ROIs stay as codes until the device: a batch carries ``codes`` (B, *P) in the torch integer type of
the same width (:func:`dosepred.roi.to_torch`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage

from ..boxes import mask_box
from ..constants import AIR_HU
from ..errors import InputError
from ..patient import Patient, RoiSet
from ..progress import track
from ..roi import lr_pairs, swap_bits, to_torch
from ..split import natural_key

if TYPE_CHECKING:
    from ..models.unet import DoseUNet


@dataclass
class PatientArrays:
    """One patient's arrays cut to the region training can reach, plus sampling tables."""

    id: str
    ct: np.ndarray  # int16
    dose: np.ndarray  # float32
    codes: np.ndarray  # unsigned
    mask: np.ndarray  # bool
    spacing: tuple[float, float, float]
    target_idx: np.ndarray  # flat indices (int32) of target voxels inside the mask
    mask_count: int
    extremes: np.ndarray | None = None  # (n, 3) row ends of the mask (:func:`mask_extremes`)
    # (n, *S) float16 input channels the model computes from the whole patient grid, cut like the
    # rest (DoseUNet.extra_channels: target distances, laterality); None for models without them
    extra: np.ndarray | None = None
    extra_fill: tuple[float, ...] = ()  # each one's value beyond the grid

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.ct, self.dose, self.codes, self.mask, self.target_idx,
                                      *(() if self.extra is None else (self.extra,))))


def mask_extremes(mask: np.ndarray) -> np.ndarray:
    """(n, 3) int16 voxel coordinates of the first and last mask voxel of every row along the last axis.

    Every extreme point of the mask in any direction (a vertex of its convex hull) is such a row
    end (a voxel between two mask voxels of its row is not extreme), so the bounding box of the mask
    under any affine map is the bounding box of these few points.
    """
    any_ = mask.any(axis=-1)
    i, j = np.nonzero(any_)
    n = mask.shape[-1]
    first = np.argmax(mask[i, j], axis=-1)
    last = n - 1 - np.argmax(mask[i, j, ::-1], axis=-1)
    pts = np.concatenate([np.stack([i, j, first], 1), np.stack([i, j, last], 1)])
    return pts.astype(np.int16)


def prepare_patient(p: Patient, patch: Sequence[int], rotate_axis: int | None = None,
                    extra: DoseUNet | None = None, reach: float = 1.0) -> PatientArrays:
    """Arrays cut to the mask's bounding box plus half a patch of context (``rotate_axis`` given:
    half the patch's diagonal in the rotation plane, what a rotated window can reach), times
    ``reach`` (>= 1: a window shrunk by a scaling sees 1/zoom times as far).
    ``extra`` (a model with input channels of the whole grid): those channels too
    (:meth:`~dosepred.models.unet.DoseUNet.extra_channels`), computed before the cut, with their
    values beyond the grid (``extra_fill``)."""
    if p.dose is None:
        raise InputError(f"patient {p.id} has no dose: training needs reference doses")
    mask = np.asarray(p.possible_dose_mask, bool)
    if not mask.any():
        raise InputError(f"patient {p.id}: the possible-dose mask is empty")
    margin = [(s + 1) // 2 for s in patch]
    if rotate_axis is not None:
        plane = [a for a in range(3) if a != rotate_axis]
        half_diag = int(np.ceil(0.5 * np.hypot(*(patch[a] for a in plane)))) + 1
        margin = [half_diag if a in plane else m for a, m in enumerate(margin)]
    if reach < 1:
        raise InputError(f"reach must be >= 1, got {reach}")
    margin = [int(np.ceil(m * reach)) for m in margin]
    sl = mask_box(mask, margin, empty="full")
    mask_c = np.ascontiguousarray(mask[sl])
    codes_c = np.ascontiguousarray(p.roi_codes[sl])
    tbits = [p.roi_set.index(n) for n in p.roi_set.targets]
    tmask = np.zeros(mask_c.shape, bool)
    for b in tbits:
        tmask |= ((codes_c >> codes_c.dtype.type(b)) & 1).astype(bool)
    tmask &= mask_c
    ct = p.require_ct("training")
    channels, fill = None, ()
    if extra is not None:
        full = extra.extra_channels(p.roi_codes, mask, p.geometry, p.spacing)
        if full is not None:
            channels, fill = np.ascontiguousarray(full[(slice(None), *sl)], np.float16), extra.extra_fill
    return PatientArrays(p.id, np.ascontiguousarray(ct[sl]), np.ascontiguousarray(p.dose[sl], np.float32),
                         codes_c, mask_c, tuple(p.spacing), np.flatnonzero(tmask).astype(np.int32),
                         int(mask_c.sum()), mask_extremes(mask_c), channels, fill)


def _crop(arr: np.ndarray, start: Sequence[int], size: Sequence[int], fill) -> np.ndarray:
    """arr[start:start+size] with ``fill`` where the window leaves the array."""
    out = np.full(tuple(size), fill, dtype=arr.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, arr.shape, strict=True):
        lo, hi = max(s, 0), min(s + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def rotation_voxels(angle_deg: float, axis: int, spacing: Sequence[float]) -> np.ndarray:
    """3x3 map F of voxel offsets for a rotation by ``angle_deg`` about array axis ``axis``.

    In the plane of the two other axes ``(a, b)`` (increasing order), a point at physical offset
    ``(u_a, u_b)`` from the centre moves to ``(u_a cos - u_b sin, u_a sin + u_b cos)``; ``F = S^-1 R S``
    with ``S = diag(spacing)``, so the rotation is rigid in millimetres also for anisotropic voxels.
    """
    a, b = (k for k in range(3) if k != axis)
    t = np.deg2rad(angle_deg)
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    s = np.asarray(spacing, float)
    return r * s[None, :] / s[:, None]


def _warp(arr: np.ndarray, inv: np.ndarray, offset: np.ndarray, size: Sequence[int], order: int,
          fill) -> np.ndarray:
    """out[o] = arr[inv @ o + offset] (order 0: nearest, 1: linear), ``fill`` outside ``arr``."""
    if arr.dtype == bool:
        out = ndimage.affine_transform(arr.view(np.uint8), inv, offset, tuple(size), order=0,
                                       mode="grid-constant", cval=int(fill))
        return out.astype(bool)
    if order == 0:
        return ndimage.affine_transform(arr, inv, offset, tuple(size), order=0, mode="grid-constant",
                                        cval=fill)
    out = ndimage.affine_transform(arr, inv, offset, tuple(size), output=np.float32, order=order,
                                   mode="grid-constant", cval=float(fill))
    if np.issubdtype(arr.dtype, np.integer):
        out = np.rint(out).astype(arr.dtype)
    return out


def rotate_patient_arrays(arrays: dict[str, np.ndarray], angle_deg: float, axis: int,
                          spacing: Sequence[float]) -> dict[str, np.ndarray]:
    """Whole arrays rotated about their centre (same shape): ``ct``/``dose`` linear, others nearest.

    ``ct`` is filled with air and the rest with 0 where the rotated grid leaves the array. A helper
    for tests and inspection; the dataset warps only its window (:meth:`CropDataset.__getitem__`).
    """
    shape = next(iter(arrays.values())).shape
    f = rotation_voxels(angle_deg, axis, spacing)
    inv = np.linalg.inv(f)
    c = (np.asarray(shape, float) - 1) / 2
    offset = c - inv @ c
    out = {}
    for k, v in arrays.items():
        linear = k in ("ct", "dose")
        out[k] = _warp(v, inv, offset, shape, 1 if linear else 0, AIR_HU if k == "ct" else 0)
    return out


#: Why scaling and whole-grid input channels in millimetres do not go together.
SCALED_EXTRA = ("scale_p > 0 with a model reading target distances or laterality (mm, computed on the "
                "whole grid): a scaled window would carry them unscaled; train without scaling or without "
                "those channels")


class CropDataset(torch.utils.data.Dataset):
    """Crops for one epoch; ``set_epoch`` selects the epoch. Item ``i`` depends only on (seed, epoch, i)
    and the patients (not their order)."""

    def __init__(self, patients: Sequence[PatientArrays], roi_set: RoiSet, patch: Sequence[int],
                 length: int, seed: int = 0, target_fraction: float = 2 / 3, flip_axis: int | None = 1,
                 flip: bool = True, rotate_p: float = 0.0, rotate_axis: int | None = None,
                 rotate_step: float = 40.0, shift: bool = False, rotate_max: float = 0.0,
                 scale_p: float = 0.0, scale_max: float = 0.0) -> None:
        if not patients:
            raise InputError("no training patients")
        if rotate_p > 0 and rotate_axis is None:
            raise InputError("rotate_p > 0 needs rotate_axis (the head-feet axis of the arrays)")
        if rotate_p > 0 and not (0 < rotate_step < 360 and (360 / rotate_step).is_integer()):
            raise InputError(f"rotate_step must divide 360 degrees, got {rotate_step}")
        if not 0 <= rotate_max <= 180 or not 0 <= scale_max < 0.5 or not 0 <= scale_p <= 1:
            raise InputError(f"rotate_max must be in [0, 180], scale_max in [0, 0.5), scale_p in [0, 1]; "
                             f"got {rotate_max}, {scale_max}, {scale_p}")
        if scale_p > 0 and any(p.extra is not None for p in patients):
            raise InputError(SCALED_EXTRA)
        self.rotate_p = float(rotate_p)
        self.rotate_max = float(rotate_max)
        self.scale_p, self.scale_max = float(scale_p), float(scale_max)
        self.rotate_axis = rotate_axis
        self.rotate_step = float(rotate_step)
        self.shift = bool(shift)
        # in the ids' natural order: one seed draws the same crops of the same patients however the
        # cache or split file lists them (its order picked which patient each index drew)
        self.patients = sorted(patients, key=lambda p: (natural_key(p.id), p.id))
        self.patch = tuple(int(p) for p in patch)
        self.length = int(length)
        self.seed = int(seed)
        self.epoch = 0
        self.target_fraction = float(target_fraction)
        self.flip_axis = flip_axis if flip else None
        self.pairs = lr_pairs(roi_set)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def patient_index(self, index: int) -> int:
        n = len(self.patients)
        perm = np.random.default_rng([self.seed, self.epoch, 2**31 - 1]).permutation(n)
        return int(perm[index % n])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        p = self.patients[self.patient_index(index)]
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        shape = p.mask.shape
        if p.target_idx.size and rng.random() < self.target_fraction:
            centre = np.unravel_index(int(p.target_idx[rng.integers(p.target_idx.size)]), shape)
        else:
            centre = None
            for _ in range(64):  # rejection sampling: the mask fills most of its bounding box
                c = tuple(int(rng.integers(s)) for s in shape)
                if p.mask[c]:
                    centre = c
                    break
            if centre is None:
                flat = np.flatnonzero(p.mask)
                centre = np.unravel_index(int(flat[rng.integers(flat.size)]), shape)
        # jitter so the centre voxel is not always the window's exact middle
        start = [int(c) - s // 2 + int(rng.integers(-(s // 4), s // 4 + 1))
                 for c, s in zip(centre, self.patch, strict=True)]
        ct, dose, codes, mask, extra = self._window(p, start, index)
        if self.flip_axis is not None and rng.random() < 0.5:
            ax = self.flip_axis
            ct, dose, mask = (np.flip(a, ax) for a in (ct, dose, mask))
            codes = np.flip(codes, ax)
            if self.pairs:
                codes = swap_bits(codes, self.pairs)
            if extra is not None:  # mirrored with the rest: a mirrored view's laterality says so
                extra = np.flip(extra, ax + 1)
        item = {"ct": torch.from_numpy(np.ascontiguousarray(ct)).unsqueeze(0),
                "dose": torch.from_numpy(np.ascontiguousarray(dose)).unsqueeze(0),
                "mask": torch.from_numpy(np.ascontiguousarray(mask)).unsqueeze(0),
                "codes": to_torch(np.ascontiguousarray(codes)),
                "spacing": torch.tensor(p.spacing, dtype=torch.float32)}
        if extra is not None:
            item["extra"] = torch.from_numpy(np.ascontiguousarray(extra, np.float32))
        return item


    def draw_map(self, arng: np.random.Generator, spacing: Sequence[float]) -> np.ndarray | None:
        """The window's 3x3 map of voxel offsets (rotation, then scaling), or None to cut it
        unwarped. Draws from ``arng`` in a fixed order (rotation, then scaling, each only when
        enabled), so runs without scaling draw what they drew before it existed."""
        f = None
        if self.rotate_p > 0 and arng.random() < self.rotate_p:
            if self.rotate_max > 0:
                angle = float(arng.uniform(-self.rotate_max, self.rotate_max))
            else:
                angle = int(arng.integers(1, round(360 / self.rotate_step))) * self.rotate_step
            f = rotation_voxels(angle, self.rotate_axis, spacing)
        if self.scale_p > 0 and arng.random() < self.scale_p:
            zoom = float(arng.uniform(1 - self.scale_max, 1 + self.scale_max))
            f = zoom * (np.eye(3) if f is None else f)  # isotropic in mm: commutes with the spacing
        return f

    def _window(self, p: PatientArrays, start: list[int], index: int) -> tuple[np.ndarray | None, ...]:
        """CT, dose, codes, mask and the channels of the whole grid (None without them) of the window
        at ``start``, rotated and shifted when enabled (those channels: linear, ``extra_fill`` beyond
        the grid)."""
        if self.rotate_p > 0 or self.shift or self.scale_p > 0:
            arng = np.random.default_rng([self.seed, self.epoch, int(index), 1])
            f = self.draw_map(arng, p.spacing)
            # window frame: source point s of output voxel o is s = c_src + F^-1 (o - c_out); a mask
            # voxel m lands at o = F m - t with t = F c_src - c_out, so t in [max(Fm) - (P-1), min(Fm)]
            # keeps the whole mask in view
            size = np.asarray(self.patch, float)
            c_out = (size - 1) / 2
            fm = np.eye(3) if f is None else f
            t = fm @ (np.asarray(start, float) + c_out) - c_out
            if self.shift:
                q = p.extremes.astype(float) @ fm.T if p.extremes is not None else None
                for ax in range(3):
                    if q is None:
                        break
                    lo, hi = q[:, ax].max() - (size[ax] - 1), q[:, ax].min()
                    lo_i, hi_i = int(np.ceil(lo - 1e-6)), int(np.floor(hi + 1e-6))
                    if lo_i <= hi_i:  # the mask fits along this axis: any window holding all of it
                        t[ax] = arng.integers(lo_i, hi_i + 1)
            if f is not None:
                inv = np.linalg.inv(f)
                off = inv @ t
                # nearest for codes and mask: interpolating bit codes would invent ROI memberships
                # (a mix of two codes is a third code) and the mask must stay a mask. Nearest for the
                # dose too, from the same source voxel as its codes: every voxel of a warped target
                # then holds a dose the plan gave that target, so its D-metrics are the plan's (linear
                # dose blends the fall-off outside a target into its edge voxels: on OpenKBP training
                # patients it lowered the windows' target D99 by 2.0 Gy and D95 by 0.8-0.9 Gy, which
                # the CDM loss then learned, docs/results.md round 29). Linear for the CT (an input;
                # linear makes no new extremes, unlike cubic splines).
                mask = _warp(p.mask, inv, off, self.patch, 0, False)
                dose = _warp(p.dose, inv, off, self.patch, 0, 0.0) * mask  # none outside the mask, as stored
                extra = (None if p.extra is None else
                         np.stack([_warp(e.astype(np.float32), inv, off, self.patch, 1, fill)
                                   for e, fill in zip(p.extra, p.extra_fill, strict=True)]))
                return (_warp(p.ct, inv, off, self.patch, 1, AIR_HU), dose,
                        _warp(p.codes, inv, off, self.patch, 0, 0), mask, extra)
            start = [int(round(v)) for v in t]
        extra = (None if p.extra is None else
                 np.stack([_crop(e, start, self.patch, fill)
                           for e, fill in zip(p.extra, p.extra_fill, strict=True)]))
        return (_crop(p.ct, start, self.patch, AIR_HU), _crop(p.dose, start, self.patch, 0.0),
                _crop(p.codes, start, self.patch, 0), _crop(p.mask, start, self.patch, False), extra)


class RankSampler(torch.utils.data.Sampler[int]):
    """Indices of one DDP rank: step ``s`` of rank ``r`` takes items ``(s*world + r)*b ... + b-1``.

    With one process this is 0..length-1 in order; every rank sees disjoint crops and the union is
    independent of the number of ranks.
    """

    def __init__(self, steps: int, batch: int, rank: int = 0, world: int = 1, start_step: int = 0) -> None:
        self.steps, self.batch, self.rank, self.world, self.start_step = steps, batch, rank, world, start_step

    def __iter__(self):
        for s in range(self.start_step, self.steps):
            base = (s * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.batch


def load_arrays(patients: Iterable[Patient], patch: Sequence[int], progress: bool = True,
                rotate_axis: int | None = None, extra: DoseUNet | None = None,
                reach: float = 1.0) -> list[PatientArrays]:
    it = track(patients, description="loading patients") if progress else patients
    return [prepare_patient(p, patch, rotate_axis, extra, reach) for p in it]
