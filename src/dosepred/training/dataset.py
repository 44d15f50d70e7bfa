"""Training data: patients held in memory, full-resolution crops sampled toward the targets.

What it is for: feeding :mod:`dosepred.training.trainer`. Patients are loaded once (CT int16, dose
float32, ROI codes as the cache stores them, mask bool), each cut to the bounding box of its
possible-dose mask plus half a patch of real context on every side, so every crop centred in the
mask sees exactly what a sliding window over the whole grid sees.

Sampling is a pure function of ``(seed, epoch, index)``: the patient is ``perm(seed, epoch)[index %
n]`` and the crop centre, flip and padding are drawn from ``default_rng([seed, epoch, index])``.
Resuming, changing the number of workers or splitting over DDP ranks therefore gives the same
crops. ``target_fraction`` of the crops are centred on a random target voxel, the rest on a random
voxel of the possible-dose mask.

Augmentation valid for dose: a flip along the left-right axis with the Left/Right ROI bits swapped
(``LeftParotid`` <-> ``RightParotid``). No intensity change touches the dose.

ROIs stay as codes until the device: a batch carries ``codes`` (B, *P) in the torch integer type of
the same width (:func:`dosepred.roi.to_torch`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..patient import Patient, RoiSet
from ..roi import lr_pairs, swap_bits, to_torch

CT_PAD = -1000  # HU of air, used where a crop leaves the stored volume


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

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.ct, self.dose, self.codes, self.mask, self.target_idx))


def _bbox(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...]:
    sl = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        nz = np.flatnonzero(mask.any(axis=other))
        lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, mask.shape[ax])
        sl.append(slice(max(0, lo - margin[ax]), min(mask.shape[ax], hi + margin[ax])))
    return tuple(sl)


def prepare_patient(p: Patient, patch: Sequence[int]) -> PatientArrays:
    if p.dose is None:
        raise ValueError(f"patient {p.id} has no dose: training needs reference doses")
    mask = np.asarray(p.possible_dose_mask, bool)
    if not mask.any():
        raise ValueError(f"patient {p.id}: the possible-dose mask is empty")
    sl = _bbox(mask, [(s + 1) // 2 for s in patch])
    mask_c = np.ascontiguousarray(mask[sl])
    codes_c = np.ascontiguousarray(p.roi_codes[sl])
    tbits = [p.roi_set.index(n) for n in p.roi_set.targets]
    tmask = np.zeros(mask_c.shape, bool)
    for b in tbits:
        tmask |= ((codes_c >> codes_c.dtype.type(b)) & 1).astype(bool)
    tmask &= mask_c
    return PatientArrays(p.id, np.ascontiguousarray(p.ct[sl]), np.ascontiguousarray(p.dose[sl], np.float32),
                         codes_c, mask_c, tuple(p.spacing), np.flatnonzero(tmask).astype(np.int32),
                         int(mask_c.sum()))


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


class CropDataset(torch.utils.data.Dataset):
    """Crops for one epoch; ``set_epoch`` selects the epoch. Item ``i`` depends only on (seed, epoch, i)."""

    def __init__(self, patients: Sequence[PatientArrays], roi_set: RoiSet, patch: Sequence[int],
                 length: int, seed: int = 0, target_fraction: float = 2 / 3, flip_axis: int | None = 1,
                 flip: bool = True) -> None:
        if not patients:
            raise ValueError("no training patients")
        self.patients = list(patients)
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
        ct = _crop(p.ct, start, self.patch, CT_PAD)
        dose = _crop(p.dose, start, self.patch, 0.0)
        codes = _crop(p.codes, start, self.patch, 0)
        mask = _crop(p.mask, start, self.patch, False)
        if self.flip_axis is not None and rng.random() < 0.5:
            ax = self.flip_axis
            ct, dose, mask = (np.flip(a, ax) for a in (ct, dose, mask))
            codes = np.flip(codes, ax)
            if self.pairs:
                codes = swap_bits(codes, self.pairs)
        return {"ct": torch.from_numpy(np.ascontiguousarray(ct)).unsqueeze(0),
                "dose": torch.from_numpy(np.ascontiguousarray(dose)).unsqueeze(0),
                "mask": torch.from_numpy(np.ascontiguousarray(mask)).unsqueeze(0),
                "codes": to_torch(np.ascontiguousarray(codes)),
                "spacing": torch.tensor(p.spacing, dtype=torch.float32)}


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


def load_arrays(patients: Iterable[Patient], patch: Sequence[int],
                progress: bool = True) -> list[PatientArrays]:
    from ..progress import track

    it = track(patients, description="loading patients") if progress else patients
    return [prepare_patient(p, patch) for p in it]
