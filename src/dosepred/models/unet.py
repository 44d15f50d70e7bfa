"""3D U-Net dose model with input assembly from bit-mask ROI codes.

The network is MONAI's :class:`monai.networks.nets.UNet`: it is the standard encoder-decoder with
skip connections, its width (``base`` channels, doubled per level) and depth (``levels``) are plain
arguments, and its residual units and normalisation are well tested. ``BasicUNet`` was not used
because its depth is fixed at five levels.

Input channels, assembled on the model's device from what a batch carries (see :meth:`assemble`):

- CT: HU clipped to [-1000, 2000], divided by 1000 (:func:`ct_channel`);
- prescription map / 70 Gy: each voxel the highest prescription of the targets containing it;
- one channel per OAR of the RoiSet, decoded from the codes with :func:`dosepred.roi.decode_torch`
  (no one-hot volume ever leaves the device);
- with ``target_distance`` (issue 24): two signed distances in mm to the targets' surfaces, to the
  highest-prescription targets and to all prescribed targets (negative inside), clipped to
  [-20, 100] mm and divided by 50 mm (:func:`target_distance_volume`; a patient without such a
  target reads 100 mm everywhere), computed on the patient's whole grid: the training dataset cuts
  them like the CT, prediction like its windows, so a window knows the targets outside it. Where
  an OAR lies against the targets (its overlap-volume histogram) is what decides its dose in a
  plan; the U-Net could infer distances from the target channel, but only as far as its receptive
  field and its few channels let it;
- with ``laterality`` (issue 24): the patient-left coordinate of each voxel (LPS x, mm) relative to
  the possible-dose mask's centroid, / 100 mm, clipped to +-3 (:func:`lateral_coordinate`). Training
  mirrors crops left-right (and swaps Left/Right ROIs) and prediction averages a mirrored pass, so
  without it a model cannot tell a patient's right from a mirrored left: it predicts the two sides
  of the OpenKBP plans alike, which they are not (the right parotid's mean dose exceeds what the
  released model predicts by about 2 Gy relative to the left's, on validation and on its own
  training patients, docs/results.md round 21). The channel is mirrored with the rest, so a mirrored
  view says it is one;
- the possible-dose mask.

Output: dose in Gy, ``dose_scale * softplus(raw)`` (non-negative, smooth at zero), multiplied by the
possible-dose mask (the mask is the last input channel, so windows of the assembled input carry it).

Two stages (``stages=2``, the cascade of the OpenKBP winner C3D): a second U-Net of the same shape
reads the input channels plus the first stage's dose / ``dose_scale`` and adds a correction to the
first stage's raw output, ``raw = raw1 + refine([x, dose1])``. Its last convolution starts at zero, so
a two-stage model made from a one-stage model (``--init``) predicts exactly what that model does
until training moves it; :meth:`DoseUNet.freeze_first_stage` (the trainer's ``freeze_stage1``) runs the first
stage without gradients, so only the refinement learns and a step costs one extra forward pass.

Coarse branch (``coarse``, issue 24): a small U-Net of coarser levels on the output of the U-Net's
bottom, added to it, ``bottom(x) + branch(bottom(x))``. On the CPU almost all of a step's cost is at
full and half resolution, so depth and width below the bottom are nearly free, and they widen the
receptive field (dose spreads along beams across the whole head). The branch's last convolution
starts at zero, so a model made from one without the branch (``--init``) predicts exactly what that
model does until training moves it (:meth:`DoseUNet.complete_state` maps its weights).

Full-resolution head (``head``, issue 24): MONAI's UNet down-samples in each level's own convolution, so
its first level already works at half resolution and the output is one transposed convolution from
it: nothing nonlinear happens on the full grid, where the targets' edges are. With ``head = H`` that
convolution gives ``1 + H`` channels, the first the dose as before, and a pointwise head reads the
other ``H`` with the input channels and adds a correction, ``raw = y0 + out(relu(mix([x, y])))``.
Its last convolution starts at zero, so a model made from one without the head (``--init``) predicts
exactly what that model does until training moves it (:meth:`DoseUNet.complete_state`). Pointwise
because every operation on the full grid is expensive on the CPU (scripts/bench_full_res_head.py).

Normalisation: instance norm (MONAI's default) computes statistics over the field of view, so a
network trained on crops must be run on windows of the crop size (``sliding_window_inference``);
:func:`dosepred.predict.predict_dose` does so. ``norm="batch"`` is available for large batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from numbers import Integral
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..constants import HU_MAX, HU_MIN, HU_SCALE
from ..errors import DosepredError
from ..patient import RoiSet
from ..roi import decode_torch

ARCH = "dosepred-unet3d"
RX_SCALE = 70.0
#: target distance channels: signed mm clipped to [-DIST_IN, DIST_OUT], divided by DIST_SCALE
DIST_IN, DIST_OUT, DIST_SCALE = 20.0, 100.0, 50.0
N_DIST = 2  # to the highest-prescription targets, to all prescribed targets
#: laterality channel: patient-left mm from the mask's centroid / LAT_SCALE, clipped to +-LAT_CLIP
LAT_SCALE, LAT_CLIP = 100.0, 3.0
#: the ModelConfig flags of the input channels computed from the whole patient grid, in their order
EXTRA_FLAGS = ("target_distance", "laterality")
INIT_BIAS = -1.05  # softplus(-1.05) ~= 0.3


class ModelError(DosepredError, ValueError):
    """A checkpoint or model configuration that cannot be used."""


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in every checkpoint (plain JSON types)."""

    rois: list[dict[str, Any]] = field(default_factory=lambda: RoiSet.openkbp().to_dicts())
    base: int = 16  # channels of the first level, doubled per level
    levels: int = 4  # resolution levels (levels - 1 down-samplings)
    res_units: int = 2  # residual units per level (0: plain convolutions)
    norm: str = "instance"  # instance | batch
    dropout: float = 0.0
    patch: tuple[int, int, int] = (64, 64, 64)  # training crop = inference window
    dose_scale: float = 70.0  # Gy, output = dose_scale * softplus(raw)
    # left-right array axis of the training data; informational (kept for old checkpoints): flips and
    # --tta take it from the geometry in the model's space (dosepred.models.space)
    flip_axis: int = 1
    arch: str = ARCH
    stages: int = 1  # 2: a refining second U-Net (see the module's docstring)
    # channels per level, finest first (none: base doubled per level); when given, base and levels
    # follow from it (base = channels[0], levels = len(channels))
    channels: list[int] | None = None
    # channels of the coarse branch's levels (strides 2 between them; its first level is already half
    # the bottom's resolution); none: no branch (see the module's docstring)
    coarse: list[int] | None = None
    # channels of a pointwise full-resolution head (see the module's docstring); none: no head
    head: int | None = None
    # two input channels of signed distances to the targets (see the module's docstring)
    target_distance: bool = False
    # an input channel of each voxel's patient-left coordinate (see the module's docstring)
    laterality: bool = False

    def __post_init__(self) -> None:
        self.patch = tuple(int(p) for p in self.patch)  # type: ignore[assignment]
        if self.channels is not None:
            ch = [int(c) for c in self.channels]
            if len(ch) < 2 or min(ch) < 1:
                raise ModelError(f"channels must list at least two positive widths, got {self.channels}")
            if ch == [ch[0] * 2 ** i for i in range(len(ch))]:
                ch_none: list[int] | None = None  # the doubling rule: stored as base and levels alone
            else:
                ch_none = ch
            self.base, self.levels, self.channels = ch[0], len(ch), ch_none
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ModelError(f"patch must be three positive sizes, got {self.patch}")
        for k in ("base", "levels", "res_units"):  # a checkpoint's config may hold anything
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, Integral):
                raise ModelError(f"{k} must be a whole number, got {v!r}")
        if self.levels < 2:
            raise ModelError(f"levels must be >= 2, got {self.levels}")
        if self.base < 1:
            raise ModelError(f"base channels must be >= 1, got {self.base}")
        if self.res_units < 0:  # MONAI would silently build plain convolutions
            raise ModelError(f"res_units must be >= 0, got {self.res_units}")
        if self.coarse is not None:
            co = [int(c) for c in self.coarse]
            if len(co) < 2 or min(co) < 1:
                raise ModelError(f"coarse must list at least two positive widths, got {self.coarse}")
            self.coarse = co
        if self.head is not None:
            if isinstance(self.head, bool) or int(self.head) != self.head or int(self.head) < 1:
                raise ModelError(f"head must be a positive number of channels, got {self.head!r}")
            self.head = int(self.head)
        div = 2 ** (self.depth - 1)
        bad = [p for p in self.patch if p % div]
        if bad:
            raise ModelError(f"patch {self.patch} must be divisible by 2^{self.depth - 1} = {div} "
                             f"for a U-Net of {self.depth} resolution levels")
        if self.norm == "instance" and int(np.prod([p // div for p in self.patch])) < 2:
            below = (f" ({self.levels} and a coarse branch's {self.depth - self.levels})"
                     if self.coarse else "")
            raise ModelError(f"patch {self.patch} is too small for a U-Net of {self.depth} resolution "
                             f"levels{below}: its deepest level would hold one voxel, which instance "
                             "normalisation cannot normalise; give a patch of at least "
                             f"{2 * div} along one axis")
        if self.stages not in (1, 2):
            raise ModelError(f"stages must be 1 or 2, got {self.stages}")
        if self.head is not None and self.stages != 1:
            raise ModelError("a full-resolution head (head) is for one-stage models; a second stage "
                             "already refines the dose on the full grid")
        for k in EXTRA_FLAGS:
            if not isinstance(getattr(self, k), bool):
                raise ModelError(f"{k} must be true or false, got {getattr(self, k)!r}")
        if self.norm not in ("instance", "batch"):
            raise ModelError(f"norm must be 'instance' or 'batch', got {self.norm!r}")
        self.rois = [dict(r) for r in self.rois]

    @property
    def widths(self) -> list[int]:
        """Channels per level, finest first."""
        if self.channels is not None:
            return list(self.channels)
        return [self.base * 2 ** i for i in range(self.levels)]

    @property
    def depth(self) -> int:
        """Resolution levels, the coarse branch's included."""
        return self.levels + (len(self.coarse) - 1 if self.coarse else 0)

    @property
    def roi_set(self) -> RoiSet:
        return RoiSet.from_dicts(self.rois)

    @property
    def n_distance(self) -> int:
        """Target distance input channels (0 or :data:`N_DIST`)."""
        return N_DIST if self.target_distance else 0

    @property
    def n_extra(self) -> int:
        """Input channels computed from the whole patient grid (target distances, laterality), which
        sit between the OARs and the mask."""
        return self.n_distance + int(self.laterality)

    @property
    def in_channels(self) -> int:
        return 3 + len(self.roi_set.oars) + self.n_extra

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch"] = list(self.patch)
        if self.channels is None:
            del d["channels"]  # the doubling rule: checkpoints read by older dosepreds stay readable
        if self.coarse is None:
            del d["coarse"]
        if self.head is None:
            del d["head"]
        for k in EXTRA_FLAGS:  # older dosepreds read models without them
            if not d[k]:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if d.get("arch", ARCH) != ARCH:
            raise ModelError(f"model architecture {d.get('arch')!r} is not {ARCH!r}; "
                             "this dosepred cannot load it")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelError(f"model config has unknown keys {unknown} (made by a newer dosepred?)")
        return cls(**d)


class DoseUNet(nn.Module):
    """(ct, codes, mask) -> dose (Gy). Shapes: ct (B, 1, *S) HU, codes (B, *S) int, mask (B, 1, *S)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        self.config = config
        rs = config.roi_set
        self.oar_bits = [rs.index(n) for n in rs.oars]
        self.targets = [(rs.index(r.name), float(r.prescription)) for r in rs
                        if r.kind == "target" and r.prescription is not None]
        channels = config.widths

        def unet(in_channels: int, out_channels: int = 1) -> nn.Module:
            net = UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                       channels=channels, strides=[2] * (config.levels - 1),
                       num_res_units=config.res_units, norm=config.norm, dropout=config.dropout)
            if config.coarse:
                skip = _bottom_skip(net)
                skip.submodule = CoarseBranch(skip.submodule, channels[-1], config)
            return net

        self.net = unet(config.in_channels, 1 + (config.head or 0))
        self.head = FullResHead(config.in_channels, config.head) if config.head else None
        # start near a typical mean dose inside the mask (~30 % of dose_scale), not softplus(0) = 69 %
        last = _last_conv(self.net)
        if last.bias is not None:
            nn.init.constant_(last.bias, INIT_BIAS)
        self.freeze_first = False
        self.refine: nn.Module | None = None
        if config.stages == 2:
            self.refine = unet(config.in_channels + 1)
            last = _last_conv(self.refine)
            nn.init.zeros_(last.weight)
            if last.bias is not None:
                nn.init.zeros_(last.bias)

    def complete_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict of a model without the coarse branch or the head made to fit this one (the
        prediction stays the state's, since both start at zero). The branch: the bottom's weights
        moved under it, its own weights this model's. The head: the last convolution's output
        channels after the first and the head's weights this model's; needs ``res_units=0`` (with
        residual units the widened output would feed back into the first channel). Other states
        are returned as they are."""
        return self._complete_head(self._complete_branch(state))

    def _complete_head(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.head is None or any(k.startswith("head.") for k in state):
            return state
        if self.config.res_units:
            raise ModelError("a full-resolution head can be added to a trained model only with "
                             f"res_units=0 (this one has {self.config.res_units})")
        mine = self.state_dict()
        names = {id(m): n for n, m in self.named_modules()}
        last = _last_conv(self.net)
        prefix = names[id(last)] + "."
        out = dict(state)
        for k, v in state.items():
            if k.startswith(prefix) and mine[k].shape != v.shape:
                w = mine[k].clone()
                # with res_units=0 the last layer is MONAI's bare transposed convolution
                if v.dim() == 1 and v.shape[0] == 1:  # bias
                    w[:1] = v
                elif v.dim() == 5 and isinstance(last, nn.ConvTranspose3d) and v.shape[1] == 1:
                    w[:, :1] = v  # (in, out, ...): the old output is the first
                else:
                    raise ModelError(f"cannot add a head: {k} has shape {tuple(v.shape)}, expected "
                                     f"one output channel of {tuple(w.shape)}")
                out[k] = w
        for k, v in mine.items():
            if k.startswith("head."):
                out[k] = v.clone()
        return out

    def _complete_branch(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.config.coarse or any(".extra." in k for k in state):
            return state
        mine = self.state_dict()
        prefixes = self._bottom_prefixes()
        out: dict[str, torch.Tensor] = {}
        for k, v in state.items():
            for prefix in prefixes:
                if k.startswith(prefix):
                    k = prefix + "bottom." + k[len(prefix):]
                    break
            out[k] = v
        for k, v in mine.items():
            if ".extra." in k:
                out[k] = v.clone()
        return out

    def _bottom_prefixes(self) -> list[str]:
        names = {id(m): n for n, m in self.named_modules()}
        return [names[id(m)] + "." for m in self.modules() if isinstance(m, CoarseBranch)]

    def extra_channels(self, codes: np.ndarray, mask: np.ndarray, geometry: Any,
                       spacing: Sequence[float]) -> np.ndarray | None:
        """The channels this model computes from a patient's whole grid (``n_extra``, float32, then
        cut like the other inputs; None when it has none): the target distances
        (:func:`target_distance_volume`) and the laterality (:func:`lateral_coordinate`, which needs
        the grid's ``geometry``)."""
        if not self.config.n_extra:
            return None
        parts = []
        if self.config.target_distance:
            parts.append(target_distance_volume(codes, self.targets, spacing))
        if self.config.laterality:
            if geometry is None:
                raise ModelError("this model reads each voxel's left-right position (laterality) and "
                                 "needs the patient's geometry")
            parts.append(lateral_coordinate(geometry, np.shape(codes), mask)[None])
        return np.concatenate(parts)

    @property
    def extra_fill(self) -> tuple[float, ...]:
        """The value of each of :meth:`extra_channels` where a crop leaves the patient's grid: far
        from the targets, the grid's centre left-right."""
        return (DIST_OUT / DIST_SCALE,) * self.config.n_distance + (0.0,) * int(self.config.laterality)

    def assemble(self, ct: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor,
                 spacing: Any = None, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Input channels (B, C, *S) float32 on the tensors' device. A model with channels of the
        whole grid (``n_extra``) takes them from ``extra`` ((B, n_extra, *S), :meth:`extra_channels`
        of the whole patient cut like the other inputs: what training and prediction pass); a model
        with target distances alone may instead compute them from ``codes`` as a whole grid of
        ``spacing`` mm per array axis ((3,) or (B, 3))."""
        if ct.dim() != 5 or ct.shape[1] != 1:
            raise ValueError(f"ct must be (B, 1, D, H, W), got {tuple(ct.shape)}")
        if codes.shape != ct.shape[:1] + ct.shape[2:]:
            raise ValueError(f"codes must be (B, D, H, W) = {tuple(ct.shape[:1] + ct.shape[2:])}, "
                             f"got {tuple(codes.shape)}")
        x_ct = ct_channel(ct)
        rx = torch.zeros_like(x_ct)
        for bit, pres in self.targets:
            rx = torch.maximum(rx, decode_torch(codes, bit, torch.float32).unsqueeze(1) * (pres / RX_SCALE))
        oars = decode_torch(codes, self.oar_bits, torch.float32)
        parts = [x_ct, rx, oars]
        if self.config.n_extra:
            if extra is not None:
                want = (codes.shape[0], self.config.n_extra, *codes.shape[1:])
                if tuple(extra.shape) != want:
                    raise ValueError(f"extra channels must be {want}, got {tuple(extra.shape)}")
                parts.append(extra.to(x_ct.device, torch.float32))
            elif self.config.laterality:
                raise ModelError("this model reads each voxel's left-right position (laterality): pass "
                                 "DoseUNet.extra_channels of the whole patient as extra")
            elif spacing is None:
                raise ModelError("this model reads distances to the targets (target_distance) and needs "
                                 "the voxel spacing")
            else:
                parts.append(target_distance_channels(codes, self.targets, spacing))
        return torch.cat([*parts, mask.float()], dim=1)

    def from_input(self, x: torch.Tensor) -> torch.Tensor:
        """Dose (B, 1, *S) from assembled input channels (the mask is the last channel)."""
        mask = x[:, -1:].float()
        if self.head is not None:
            y = self.net(x)
            raw = y[:, :1] + self.head(torch.cat([x, y.to(x.dtype)], dim=1))
        elif self.refine is None:
            raw = self.net(x)
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_first):
                raw1 = self.net(x)
            first = F.softplus(raw1.float()) * mask  # the first stage's dose / dose_scale
            raw = raw1.float() + self.refine(torch.cat([x, first.to(x.dtype)], dim=1)).float()
        return self.config.dose_scale * F.softplus(raw.float()) * mask

    def freeze_first_stage(self) -> None:
        """Train only the second stage: the first runs without gradients, in eval mode."""
        if self.refine is None:
            raise ModelError("only a two-stage model (stages=2) has a first stage to freeze")
        self.freeze_first = True
        for q in self.net.parameters():
            q.requires_grad_(False)
        self.train(self.training)

    def contracting_parameters(self) -> dict[str, nn.Parameter]:
        """The weights of each U-Net's contracting path below its first level, by name: the down
        layers of the deeper levels, the bottom and a coarse branch (the trainer's ``freeze_steps``
        keeps those that came from ``--init`` for a while). Not among them: the first level's down
        layer, which reads the input channels, and the expanding path."""
        names = {id(q): n for n, q in self.named_parameters()}
        out: dict[str, nn.Parameter] = {}
        for net in (self.net, self.refine):
            if net is not None:
                for m in _contracting(net):
                    out.update((names[id(q)], q) for q in m.parameters())
        return out

    def train(self, mode: bool = True) -> DoseUNet:
        """A frozen first stage stays in eval mode (batch-norm statistics and dropout fixed)."""
        super().train(mode)
        if self.freeze_first:
            self.net.eval()
        return self

    def forward(self, ct: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor,
                spacing: Any = None, extra: torch.Tensor | None = None) -> torch.Tensor:
        return self.from_input(self.assemble(ct, codes, mask, spacing, extra))


def signed_distance(inside: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Signed distance (mm, float32) of each voxel centre of a grid of ``spacing`` mm per axis to the
    region ``inside`` (bool array): outside, to the nearest region voxel's centre; inside, minus the
    distance to the nearest voxel outside it (voxels beyond the array count as outside). So the
    voxels on either side of the surface read about +-one voxel, the zero crossing between them.
    scipy's exact Euclidean distance transform; the inside part only on the region's bounding box
    (plus one voxel), where every inside voxel finds its nearest outside voxel. An empty region reads
    ``+DIST_OUT`` everywhere."""
    from scipy import ndimage

    inside = np.asarray(inside, bool)
    sp = [float(v) for v in spacing]
    if not inside.any():
        return np.full(inside.shape, DIST_OUT, np.float32)
    d = ndimage.distance_transform_edt(~inside, sampling=sp).astype(np.float32)
    nz = np.nonzero(inside)
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)
    sub = np.pad(inside[box], 1)  # a layer of outside voxels all round the region
    d_in = ndimage.distance_transform_edt(sub, sampling=sp)[1:-1, 1:-1, 1:-1]
    d[box] -= d_in.astype(np.float32)
    return d


def target_distance_volume(codes: np.ndarray, targets: Sequence[tuple[int, float]],
                           spacing: Sequence[float]) -> np.ndarray:
    """The :data:`N_DIST` target distance channels of one patient, (2, *S) float32, clipped to
    [-DIST_IN, DIST_OUT] mm and divided by DIST_SCALE: the signed distance (:func:`signed_distance`)
    to the targets of the highest prescription among ``targets`` (``(bit, prescription)`` pairs of
    the ROI codes ``codes``) and to all of them. Computed on the patient's whole grid, in training
    (:mod:`dosepred.training.dataset`, before the crops) as in prediction, so a window sees the
    distances to targets outside it too."""
    codes = np.asarray(codes)
    if len(spacing) != 3 or not all(float(v) > 0 for v in spacing):
        raise ModelError(f"spacing must be three positive mm values, got {tuple(spacing)}")
    top = max((p for _, p in targets), default=None)
    groups = [[b for b, p in targets if p == top], [b for b, _ in targets]]
    out = np.empty((N_DIST, *codes.shape), np.float32)
    for j, bits in enumerate(groups):
        if j and bits == groups[0]:  # one prescription level: the same region
            out[j] = out[0]
            continue
        inside = np.zeros(codes.shape, bool)
        for b in bits:
            inside |= ((codes >> codes.dtype.type(b)) & 1).astype(bool)
        out[j] = np.clip(signed_distance(inside, spacing), -DIST_IN, DIST_OUT) / DIST_SCALE
    return out


def lateral_coordinate(geometry: Any, shape: Sequence[int], mask: np.ndarray | None = None) -> np.ndarray:
    """Each voxel centre's patient-left coordinate (LPS x, mm) relative to that of the centroid of
    ``mask`` (the grid's centre when it is None or empty), / LAT_SCALE and clipped to +-LAT_CLIP,
    float32 of ``shape``: a grid of ``geometry`` (:class:`dosepred.geometry.Geometry`)."""
    shape = tuple(int(n) for n in shape)
    step = geometry.matrix[0]  # the LPS x step of each array axis (mm)
    if mask is not None and np.any(mask):
        centre = np.argwhere(mask).mean(axis=0)
    else:
        centre = (np.asarray(shape, float) - 1) / 2
    x = np.zeros(shape, np.float64)
    for ax in range(3):
        r = (np.arange(shape[ax]) - centre[ax]) * step[ax]
        x = x + r.reshape([-1 if a == ax else 1 for a in range(3)])
    return np.clip(x / LAT_SCALE, -LAT_CLIP, LAT_CLIP).astype(np.float32)


def target_distance_channels(codes: torch.Tensor, targets: Sequence[tuple[int, float]],
                             spacing: Any) -> torch.Tensor:
    """:func:`target_distance_volume` of each patient of a batch of codes (B, *S), as a (B, 2, *S)
    float32 tensor on the codes' device; ``spacing`` (3,) or (B, 3) mm."""
    sp = torch.as_tensor(spacing, dtype=torch.float64).reshape(-1, 3)
    if sp.shape[0] not in (1, codes.shape[0]):
        raise ModelError(f"spacing must be three positive mm values (per patient), got {spacing}")
    c = codes.cpu().numpy()
    out = [target_distance_volume(c[i], targets, sp[min(i, sp.shape[0] - 1)].tolist())
           for i in range(c.shape[0])]
    return torch.from_numpy(np.stack(out)).to(codes.device)


class FullResHead(nn.Module):
    """``out(relu(mix([x, y])))``: pointwise on the full grid, reading the input channels ``x`` and
    the U-Net's ``1 + width`` output channels ``y``; ``out`` starts at zero."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.mix = nn.Conv3d(in_channels + 1 + width, width, kernel_size=1)
        self.act = nn.ReLU()
        self.out = nn.Conv3d(width, 1, kernel_size=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.mix(xy)))


class CoarseBranch(nn.Module):
    """A U-Net's bottom layer plus a U-Net of coarser levels on its output: ``y + extra(y)`` with
    ``y = bottom(x)``; ``extra``'s last convolution starts at zero."""

    def __init__(self, bottom: nn.Module, width: int, config: ModelConfig) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        assert config.coarse is not None
        self.bottom = bottom
        self.extra = UNet(spatial_dims=3, in_channels=width, out_channels=width,
                          channels=config.coarse, strides=[2] * (len(config.coarse) - 1),
                          num_res_units=config.res_units, norm=config.norm, dropout=config.dropout)
        last = _last_conv(self.extra)
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bottom(x)
        return y + self.extra(y)


def _bottom_skip(net: nn.Module) -> nn.Module:
    """The skip connection around a MONAI UNet's bottom layer (the innermost one)."""
    from monai.networks.layers.simplelayers import SkipConnection

    skips = [m for m in net.modules() if isinstance(m, SkipConnection)]
    inner = [s for s in skips if not any(isinstance(m, SkipConnection) for m in s.submodule.modules())]
    if len(inner) != 1:
        raise ModelError("cannot find the U-Net's bottom layer (MONAI's UNet changed?)")
    return inner[0]


def unet_levels(net: nn.Module) -> tuple[list[tuple[nn.Module, nn.Module]], nn.Module]:
    """A MONAI UNet's (down, up) layers per level, finest first, and its bottom layer (with a coarse
    branch, if any). MONAI nests the levels as ``Sequential(down, SkipConnection(inner), up)``."""
    from monai.networks.layers.simplelayers import SkipConnection

    seq, levels = net.model, []
    while isinstance(seq, nn.Sequential) and len(seq) == 3 and isinstance(seq[1], SkipConnection):
        levels.append((seq[0], seq[2]))
        seq = seq[1].submodule
    if not levels:
        raise ModelError("cannot find the U-Net's levels (MONAI's UNet changed?)")
    return levels, seq


def _contracting(net: nn.Module) -> list[nn.Module]:
    """A MONAI UNet's contracting path below the first level: each deeper level's down layer, then
    the bottom (with a coarse branch, if any)."""
    levels, bottom = unet_levels(net)
    return [down for down, _ in levels[1:]] + [bottom]


def _last_conv(net: nn.Module) -> nn.Module:
    return [m for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))][-1]


def ct_channel(ct: torch.Tensor) -> torch.Tensor:
    """The network's CT input from HU (any shape, any dtype): float32, clipped to
    ``[HU_MIN, HU_MAX]``, divided by ``HU_SCALE`` (:mod:`dosepred.constants`)."""
    return ct.float().clamp(HU_MIN, HU_MAX) / HU_SCALE


def build_model(config: ModelConfig | dict[str, Any]) -> DoseUNet:
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return DoseUNet(config)


def check_roi_set(config: ModelConfig, roi_set: RoiSet, where: str) -> None:
    """Raise a clear error when data's RoiSet differs from the model's (bit order matters)."""
    mine = config.roi_set
    if mine.names != roi_set.names or [r.kind for r in mine] != [r.kind for r in roi_set]:
        raise ModelError(f"{where} has ROIs {list(roi_set.names)} but the model was trained on "
                         f"{list(mine.names)} (same names, kinds and bit order are required)")
    rx_m = [r.prescription for r in mine]
    rx_d = [r.prescription for r in roi_set]
    if rx_m != rx_d:
        raise ModelError(f"{where} prescriptions {rx_d} differ from the model's {rx_m}")
