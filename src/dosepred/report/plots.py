"""Figures of a report: cumulative DVHs and axial dose slices (matplotlib, Agg, PNG files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..dvh import DVH, roi_voxel_indices
from ..patient import Patient

LINESTYLES = ("--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)))


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def roi_colours(names: list[str]) -> dict[str, tuple]:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def plot_dvh(path: Path, ref: Patient, preds: dict[str, np.ndarray], bin_width: float = 0.25) -> None:
    """Cumulative DVHs of every present ROI: reference solid, each prediction in its own dash style."""
    plt = _plt()
    idx = roi_voxel_indices(ref)
    names = list(idx)
    col = roi_colours(list(ref.roi_set.names))
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    vox = ref.voxel_volume_mm3
    assert ref.dose is not None
    rd = ref.dose.ravel()
    for n in names:
        d = DVH(rd[idx[n]], vox, bin_width)
        ax.plot(d.edges, d.cumulative("%"), color=col[n], lw=1.6, label=n)
        for k, pd in enumerate(preds.values()):
            dp = DVH(pd.ravel()[idx[n]], vox, bin_width)
            ax.plot(dp.edges, dp.cumulative("%"), color=col[n], lw=1.3, ls=LINESTYLES[k % len(LINESTYLES)])
    # style legend: reference vs each prediction
    handles = [plt.Line2D([], [], color="k", lw=1.6, label="reference")]
    handles += [plt.Line2D([], [], color="k", lw=1.3, ls=LINESTYLES[k % len(LINESTYLES)], label=label)
                for k, label in enumerate(preds)]
    leg1 = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="ROI", title_fontsize=8,
                     frameon=False)
    ax.add_artist(leg1)
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=8, frameon=False)
    ax.set_xlabel("dose (Gy)")
    ax.set_ylabel("volume (%)")
    ax.set_ylim(0, 102)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.set_title(f"{ref.id}: cumulative DVH", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _slice_index(ref: Patient) -> int:
    """Axial slice (index on axis 2) through the centre of the highest-prescription target, else
    through the dose maximum."""
    rs = ref.roi_set
    targets = [r for r in rs if r.kind == "target" and r.name not in ref.missing_rois]
    targets.sort(key=lambda r: -(r.prescription or 0))
    for r in targets:
        m = ref.mask(r.name)
        if m.any():
            return int(round(np.nonzero(m)[2].mean()))
    assert ref.dose is not None
    return int(np.unravel_index(int(np.argmax(ref.dose)), ref.shape)[2])


def plot_slice(path: Path, ref: Patient, preds: dict[str, np.ndarray]) -> int:
    """Axial slice: CT with dose colour wash and ROI contours for the reference and each prediction,
    then the difference prediction - reference. Returns the slice index."""
    plt = _plt()
    z = _slice_index(ref)
    assert ref.dose is not None
    vmax = float(max([ref.dose.max()] + [float(p.max()) for p in preds.values()])) or 1.0
    # crop to the body (CT above -500 HU, or any dose) on this slice, with a margin
    body = (ref.ct[:, :, z] > -500) | (ref.dose[:, :, z] > 0)
    if body.any():
        rows, cols = np.nonzero(body)
        r0, r1 = max(rows.min() - 6, 0), min(rows.max() + 7, body.shape[0])
        c0, c1 = max(cols.min() - 6, 0), min(cols.max() + 7, body.shape[1])
    else:
        r0, r1, c0, c1 = 0, body.shape[0], 0, body.shape[1]
    crop = (slice(r0, r1), slice(c0, c1), z)
    panels = [("reference", ref.dose[crop])] + [(k, v[crop]) for k, v in preds.items()]
    diffs = [(f"{k} - reference", v[crop] - ref.dose[crop]) for k, v in preds.items()]
    n = len(panels) + len(diffs)
    fig, axes = plt.subplots(1, n, figsize=(3.0 * n + 1.0, 3.6), dpi=100, squeeze=False,
                             layout="constrained")
    ct = ref.ct[crop].astype(np.float32)
    col = roi_colours(list(ref.roi_set.names))
    masks = {r: ref.mask(r)[crop] for r in ref.present_rois}
    aspect = ref.spacing[0] / ref.spacing[1]
    im = None
    for ax, (label, d) in zip(axes[0], panels, strict=False):
        ax.imshow(ct, cmap="gray", vmin=-200, vmax=300, aspect=aspect)
        im = ax.imshow(np.ma.masked_less(d, 0.05 * vmax), cmap="jet", vmin=0, vmax=vmax, alpha=0.45,
                       aspect=aspect)
        for r, m in masks.items():
            if m.any():
                ax.contour(m.astype(np.float32), levels=[0.5], colors=[col[r]], linewidths=0.9)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=list(axes[0][:len(panels)]), shrink=0.8, label="dose (Gy)")
    lim = max([float(np.abs(d).max()) for _, d in diffs] + [1.0])
    dim = None
    for ax, (label, d) in zip(axes[0][len(panels):], diffs, strict=False):
        ax.imshow(ct, cmap="gray", vmin=-200, vmax=300, aspect=aspect)
        dim = ax.imshow(np.ma.masked_inside(d, -0.01 * lim, 0.01 * lim), cmap="RdBu_r", vmin=-lim, vmax=lim,
                        alpha=0.8, aspect=aspect)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    if dim is not None:
        fig.colorbar(dim, ax=list(axes[0][len(panels):]), shrink=0.8, label="difference (Gy)")
    fig.suptitle(f"{ref.id}: axial slice {z} (axis 2)", fontsize=10)
    fig.savefig(path)
    plt.close(fig)
    return z
