"""Loss specifications such as ``"mae+0.5*dvh"``: parsing and :func:`build_loss`.

Grammar: terms joined by ``+``, each ``[weight*]name`` (spaces ignored, weight a finite float >= 0;
no sign is read, so a negative weight is an error), names ``mae``, ``mse``, ``dvh``, ``moment``,
``cdm``; each name at most once, and at least one term with a weight > 0 (a loss that is always 0
trains nothing). A term of weight 0 is computed and logged but adds nothing.

Options are keyword arguments, either namespaced (``cdm_tau=0.5`` applies to the ``cdm`` term only)
or plain (``tau=0.5`` applies to every term of the spec that has that option; a namespaced option
wins). Options of terms that are not in the spec are ignored, so one config can serve several
specs; a name no term knows is an error. Options per term:

========  ====================================================================================
term      options (defaults)
========  ====================================================================================
mae       dose_scale (highest Rx, else 70 Gy): the MAE is divided by it; part ``mae_gy`` in Gy
mse       dose_scale: MSE divided by dose_scale**2; part ``mse_gy2``
dvh       bin_width (1.0 Gy), steepness (1.0 / bin_width), max_dose (batch max of ref), rois (all),
          max_elements (2**22)
moment    oar_powers ((1, 2, 10)), target_powers ((2, 4, 6)), dose_scale, eps (1e-12)
cdm       protocol (argument of build_loss; None = "openkbp"), tau (1.0 Gy), spread (0 %),
          dose_scale, target_weight (1.0), oar_weight (1.0), match (True), constraint (False),
          constraint_weight (1.0)
========  ====================================================================================

``dose_scale`` is shared by default so that all terms are dimensionless fractions of the same dose.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import DosepredError, InputError
from ..patient import RoiSet
from ..protocol import Protocol, load_protocol
from .cdm import CDMLoss, default_dose_scale
from .dvh_curve import DVHCurveLoss
from .moment import MomentLoss
from .voxel import MAELoss, MSELoss

LOSSES: dict[str, type[nn.Module]] = {"mae": MAELoss, "mse": MSELoss, "dvh": DVHCurveLoss,
                                      "moment": MomentLoss, "cdm": CDMLoss}
_CONTEXT = ("roi_set", "protocol")  # given by build_loss's own arguments, not options
_TERM_RE = re.compile(r"^(?:(?P<w>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\*)?(?P<name>[A-Za-z_]+)$")


def _options(cls: type[nn.Module]) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", *_CONTEXT)]


OPTIONS: dict[str, list[str]] = {n: _options(c) for n, c in LOSSES.items()}


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Term:
    name: str
    weight: float = 1.0


def parse_spec(spec: str) -> list[Term]:
    """Parse ``"mae+0.5*dvh"`` into terms; ValueError with the nearest valid name on a typo."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"loss spec must be a non-empty string such as 'mae+cdm', got {spec!r}")
    terms: list[Term] = []
    for raw in spec.replace(" ", "").split("+"):
        m = _TERM_RE.match(raw)
        if not m and _TERM_RE.match(raw.removeprefix("-")):
            raise InputError(f"loss spec {spec!r}: term {raw!r} has a negative weight; weights must be "
                             ">= 0 (a negative weight would reward the error it measures)")
        if not m:
            raise InputError(f"loss spec {spec!r}: cannot read term {raw!r}; expected [weight*]name, "
                             f"e.g. 'mae+0.5*dvh' (names: {', '.join(LOSSES)})")
        name = m.group("name").lower()
        if name not in LOSSES:
            raise InputError(f"loss spec {spec!r}: unknown loss {name!r}{_suggest(name, list(LOSSES))}; "
                             f"valid: {', '.join(LOSSES)}")
        if any(t.name == name for t in terms):
            raise InputError(f"loss spec {spec!r}: {name!r} appears twice")
        weight = float(m.group("w")) if m.group("w") else 1.0
        if not math.isfinite(weight):
            raise InputError(f"loss spec {spec!r}: the weight of {name!r} must be a finite number, got "
                             f"{m.group('w')}")
        terms.append(Term(name, weight))
    if all(t.weight == 0 for t in terms):
        raise InputError(f"loss spec {spec!r}: every term has weight 0, so the loss is always 0 and "
                         "nothing would be learnt; give at least one term a weight > 0, e.g. 'mae'")
    return terms


def split_options(terms: list[Term], options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Route build_loss keyword options to the terms (see the module docstring)."""
    in_spec = {t.name for t in terms}
    out: dict[str, dict[str, Any]] = {t.name: {} for t in terms}
    plain, spaced = {}, {}
    all_names = sorted({o for opts in OPTIONS.values() for o in opts}
                       | {f"{n}_{o}" for n, opts in OPTIONS.items() for o in opts})
    for key, v in options.items():
        prefix, _, rest = key.partition("_")
        if prefix in LOSSES and rest in OPTIONS[prefix]:
            spaced[(prefix, rest)] = v
        elif any(key in opts for opts in OPTIONS.values()):
            plain[key] = v
        else:
            raise InputError(f"unknown loss option {key!r}{_suggest(key, all_names)}; options per loss: "
                             + "; ".join(f"{n}: {', '.join(o)}" for n, o in OPTIONS.items()))
    for key, v in plain.items():
        for n in in_spec:
            if key in OPTIONS[n]:
                out[n][key] = v
    for (n, key), v in spaced.items():
        if n in in_spec:
            out[n][key] = v
    return out


class CombinedLoss(nn.Module):
    """Weighted sum of loss terms. ``forward(pred, ref, roi_codes, mask, spacing) -> (total, parts)``.

    ``parts`` (detached scalars, for logging): each term's unweighted value under its name, the
    terms' own extra parts (``mae_gy``, ``cdm_target_gy``, ...) and ``total``.
    """

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float], spec: str = "") -> None:
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)
        self.spec = spec

    def forward(self, pred: torch.Tensor, ref: torch.Tensor, roi_codes: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, spacing: Any = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = None
        parts: dict[str, torch.Tensor] = {}
        for name, mod in self.terms.items():
            v, extra = mod.forward_with_parts(pred, ref, roi_codes, mask, spacing)
            parts[name] = v.detach()
            parts.update(extra)
            wv = v * self.weights[name] if self.weights[name] != 1.0 else v
            total = wv if total is None else total + wv
        assert total is not None
        parts["total"] = total.detach()
        return total, parts

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}"


def check_option_type(loss: str, key: str, value: Any, default: Any) -> None:
    """A loss option given as the wrong kind of value for its default (a number, true/false) is an
    :class:`InputError` naming it: ``cdm_tau=nan`` reaches the loss as the text ``"nan"`` (JSON's is
    ``NaN``), ``cdm_match=no`` as a text that would count as true."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise InputError(f"loss {loss!r}: option {loss}_{key}={value!r}: expected true or false")
    elif isinstance(default, (int, float)) and (isinstance(value, bool)
                                                or not isinstance(value, (int, float))):
        raise InputError(f"loss {loss!r}: option {loss}_{key}={value!r}: expected a number")


def build_loss(spec: str, roi_set: RoiSet | None = None, protocol: Protocol | str | os.PathLike | None = None,
               **options: Any) -> CombinedLoss:
    """Build the loss of a spec such as ``"mae+cdm"`` or ``"mae+0.5*dvh"``.

    Args:
        spec: see :func:`parse_spec`.
        roi_set: the dataset's :class:`dosepred.patient.RoiSet` (needed by dvh, moment and cdm).
        protocol: for cdm: a Protocol, a built-in name / JSON path, or None for ``"openkbp"``.
        **options: per-term options, namespaced (``cdm_tau``) or plain (``tau``); see the module doc.

    Returns an ``nn.Module``; ``total, parts = loss(pred, ref, roi_codes, mask, spacing)``.
    """
    terms = parse_spec(spec)
    routed = split_options(terms, options)
    if any(t.name == "cdm" for t in terms) and not isinstance(protocol, Protocol):
        # resolved once here: the shared dose scale and the CDM term read the same protocol
        protocol = load_protocol("openkbp" if protocol is None else protocol)
    shared_scale = default_dose_scale(protocol if isinstance(protocol, Protocol) else None, roi_set) \
        if roi_set is not None else None
    mods: dict[str, nn.Module] = {}
    for t in terms:
        cls = LOSSES[t.name]
        kw = dict(routed[t.name])
        params = inspect.signature(cls.__init__).parameters
        if "dose_scale" in params and kw.get("dose_scale") is None and shared_scale is not None:
            kw["dose_scale"] = shared_scale
        if "roi_set" in params:
            kw["roi_set"] = roi_set
        if "protocol" in params:
            kw["protocol"] = protocol
        for key, v in routed[t.name].items():
            check_option_type(t.name, key, v, params[key].default if key in params else None)
        try:
            mods[t.name] = cls(**kw)
        except DosepredError:
            raise
        except (TypeError, ValueError) as e:  # an option of the wrong type: float("x"), a number for a list
            raise InputError(f"loss {t.name!r}: {e}") from None
    return CombinedLoss(mods, {t.name: t.weight for t in terms}, spec)
