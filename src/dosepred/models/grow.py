"""Growing a trained U-Net wider without changing what it predicts (``train --init`` with wider
``channels``, issue 24).

A fine-tune may ask for more channels at some levels of its ``--init`` model's U-Net (the same number
of levels, each at least as wide). :func:`grow_state` makes the ``--init`` weights fit the wider
network so that it computes exactly the same dose until training moves it:

- every old channel keeps its weights and its place among the inputs of the layers that read it;
- the new channels of a level are appended after the old ones; what they read from the old channels
  starts from the wider network's own random initialisation, so they differ from each other and
  compute something from the start;
- everything that reads a new channel starts at zero: the next level's down convolution, the up
  convolution that concatenates the level's skip and the deeper level's output, and the level above's
  up convolution. So the new channels do not reach the output until training moves those weights, and
  their gradients are not zero (the new channels' activations are not).

A MONAI ``UNet`` nests its levels as ``Sequential(down, SkipConnection(deeper), up)``; the up layer
reads ``cat([down(x), deeper(down(x))])``, whose two parts both widen with the level (the deepest
level's second part is the bottom's width), which is why the old input columns are not simply the
first ones. This is the Net2Net idea of function-preserving widening (Chen, Goodfellow and Shlens,
ICLR 2016) with zero outgoing weights instead of split copies, as the coarse branch and the second
stage of :mod:`dosepred.models.unet` start at zero. A full-resolution head (``head``) keeps its
weights: it reads the input channels and the U-Net's outputs, whose number does not change.
Normalisation per channel (instance norm, MONAI's default) keeps each old channel's statistics;
batch-norm statistics and affine parameters are mapped along with their channels. Residual units
(``res_units > 0``) and a wider bottom under a coarse branch are not supported: :func:`grow_problem`
says so before anything is built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .unet import CoarseBranch, DoseUNet, ModelConfig, ModelError, unet_levels

__all__ = ["grow_problem", "grow_state"]


def grow_problem(old: ModelConfig, widths: list[int], res_units: int, coarse: list[int] | None,
                 stages: int, head: int | None) -> str | None:
    """Why a model of configuration ``old`` cannot be grown to ``widths`` (None: it can). The
    other arguments are the asked-for network's (the fine-tune's settled architecture)."""
    was = old.widths
    if len(widths) != len(was):
        return f"has {len(was)} levels ({was}); a wider network needs the same number of levels"
    narrower = [i for i, (a, b) in enumerate(zip(was, widths, strict=True)) if b < a]
    if narrower:
        return (f"has channels {was}; level {narrower[0] + 1} of {widths} is narrower "
                f"({widths[narrower[0]]} < {was[narrower[0]]}), and a network can only grow")
    if res_units or old.res_units:
        return (f"has res_units={old.res_units}; growing channels needs plain convolutions "
                "(res_units=0) in both networks")
    if old.coarse and widths[-1] != was[-1]:
        return (f"has a coarse branch under its bottom of {was[-1]} channels; the bottom's width "
                f"cannot grow ({widths[-1]} asked), only the levels above it")
    if coarse and widths[-1] != was[-1]:
        return (f"has a bottom of {was[-1]} channels, which cannot grow ({widths[-1]} asked) while a "
                f"coarse branch (coarse={list(coarse)}) is added under it: grow first, or keep the "
                f"bottom at {was[-1]}")
    if stages != old.stages:
        return f"has stages={old.stages}; grow the channels and add a second stage in two fine-tunes"
    if head != old.head:
        return (f"has head={old.head}; grow the channels and add a full-resolution head (head={head}) "
                "in two fine-tunes")
    return None


def _conv(layer: nn.Module) -> nn.Module:
    convs = [m for m in layer.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    if len(convs) != 1:
        raise ModelError("a U-Net layer without exactly one convolution (MONAI's UNet changed?)")
    return convs[0]


def _roles(unet: nn.Module, was: list[int], now: list[int], in_channels: int, out_channels: int
           ) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """(layer, old input channels' new indices, old output channels' new indices) for each layer of
    a U-Net whose level widths grow from ``was`` to ``now``."""
    levels, bottom = unet_levels(unet)
    if isinstance(bottom, CoarseBranch):
        bottom = bottom.bottom  # the branch itself does not grow (grow_problem)
    n = len(levels)
    if n + 1 != len(was):
        raise ModelError(f"the U-Net has {n + 1} levels, its configuration {len(was)}")

    def ar(k: int, at: int = 0) -> torch.Tensor:
        return torch.arange(k) + at

    out = []
    for i, (down, up) in enumerate(levels):
        src = in_channels if i == 0 else was[i - 1]
        out.append((down, ar(src), ar(was[i])))
        deeper = was[i] if i < n - 1 else was[n]  # the deeper level's up layer, or the bottom
        cat_in = torch.cat([ar(was[i]), ar(deeper, now[i])])  # cat([skip, deeper]) in both
        out.append((up, cat_in, ar(out_channels if i == 0 else was[i - 1])))
    out.append((bottom, ar(was[n - 1]), ar(was[n])))
    return out


def grow_state(state: dict[str, torch.Tensor], old: ModelConfig, model: DoseUNet) -> dict[str, Any]:
    """``state`` (a model of configuration ``old``) made to fit ``model``, a wider network of the same
    levels (see the module's docstring): a full state dict for ``model.load_state_dict``."""
    new = model.config
    problem = grow_problem(old, new.widths, new.res_units, new.coarse, new.stages, new.head)
    if problem:
        raise ModelError(f"cannot grow the model: it {problem}")
    mine = model.state_dict()
    names = {id(m): n for n, m in model.named_modules()}
    out: dict[str, Any] = {}
    nets = [(model.net, new.in_channels)]
    if model.refine is not None:
        nets.append((model.refine, new.in_channels + 1))
    for unet, in_ch in nets:
        out_ch = 1 + (old.head or 0) if unet is model.net else 1  # a head reads the U-Net's outputs
        for layer, cols, rows in _roles(unet, old.widths, new.widths, in_ch, out_ch):
            prefix = names[id(layer)] + "."
            transposed = isinstance(_conv(layer), nn.ConvTranspose3d)
            for k, target in mine.items():
                if not k.startswith(prefix):
                    continue
                if k not in state:
                    raise ModelError(f"cannot grow the model: its weights lack {k}")
                v = state[k]
                w = target.clone()
                if v.shape == w.shape:
                    w = v.clone()
                elif v.dim() == 5:  # a convolution's weight: (out, in, ...) or transposed (in, out, ...)
                    c = 0 if transposed else 1  # the input-channel dimension
                    seen = torch.zeros(w.shape[c], dtype=torch.bool)
                    seen[cols] = True
                    w.index_fill_(c, torch.nonzero(~seen).flatten(), 0.0)  # reading a new channel: 0
                    first, second = (cols, rows) if transposed else (rows, cols)
                    w[first.view(-1, 1), second] = v
                elif v.dim() == 1 and v.shape[0] == len(rows):  # bias, per-channel norm parameters
                    w[rows] = v
                else:
                    raise ModelError(f"cannot grow the model: {k} has shape {tuple(v.shape)}, "
                                     f"expected {tuple(w.shape)} or a part of it")
                out[k] = w
    for k, target in mine.items():
        if k in out:
            continue
        if k not in state or state[k].shape != target.shape:
            got = "missing" if k not in state else f"shape {tuple(state[k].shape)}"
            raise ModelError(f"cannot grow the model: {k} ({got}) is not one of the layers that grow "
                             f"but differs from the wider network's {tuple(target.shape)}")
        out[k] = state[k].clone()
    extra = sorted(set(state) - set(mine))
    if extra:
        raise ModelError(f"cannot grow the model: weights the wider network does not have: {extra[:3]}")
    return out
