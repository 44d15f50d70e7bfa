"""``dosepred bench losses``: forward + backward time of each training loss, relative to MAE and to
one training step of the default U-Net.

Each loss is timed on a prediction leaf tensor (``pred.requires_grad_()``): forward, ``backward()``,
and a device sync; the U-Net step is forward + MAE + backward + Adam step of
``dosepred.models.build_model`` (its defaults).
Data: an OpenKBP patient (10 ROIs, real masks and dose): the full 128^3 grid, and for smaller sizes
a crop centred on the targets (the training patch). Without a patient, synthetic spheres. The
prediction is the reference dose times seeded noise (x 0.9 .. 1.1). Times are medians of
``repeats`` runs after one warm-up. Nothing here is used by training.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io.openkbp import read_patient
from ..patient import RoiSet
from ..roi import encode, to_torch
from . import check_at_least, example_patients
from . import sync as _sync

#: name -> (spec, options) of the timed losses; "dvh-0.2gy" is the public implementations' binning.
LOSS_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "mae": ("mae", {}),
    "mse": ("mse", {}),
    "dvh": ("dvh", {}),
    "dvh-0.2gy": ("dvh", {"dvh_bin_width": 0.2}),
    "moment": ("moment", {}),
    "cdm": ("cdm", {}),
    "cdm-clinical+constraint": ("cdm", {"protocol": "openkbp-clinical", "cdm_constraint": True}),
}
DEFAULT_PATIENT = example_patients()


def _median_time(fn: Callable[[], Any], repeats: int, device: str) -> float:
    fn()  # warm-up
    _sync(device)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return float(statistics.median(ts))


def load_case(size: int, patient_dir: Path | None, seed: int = 0) -> dict[str, Any]:
    """Numpy arrays of one benchmark case of ``size``^3 voxels: ct, dose, codes, mask, spacing."""
    rs = RoiSet.openkbp()
    if patient_dir is not None and Path(patient_dir).is_dir():
        d = Path(patient_dir)
        folder = d if (d / "dose.csv").is_file() else sorted(d.glob("pt_*"))[0]
        p = read_patient(folder)
        ct, dose, codes, mask = p.ct, p.dose, p.roi_codes, p.possible_dose_mask
        source = f"OpenKBP {p.id}"
        spacing = p.spacing
        if size != ct.shape[0]:
            if size > min(ct.shape):
                raise InputError(f"--sizes {size} exceeds the grid {ct.shape} of patient {p.id}")
            tgt = np.argwhere(p.prescription_map() > 0)
            centre = tgt.mean(axis=0).round().astype(int) if len(tgt) else np.array(ct.shape) // 2
            lo = [int(np.clip(c - size // 2, 0, s - size)) for c, s in zip(centre, ct.shape, strict=True)]
            sl = tuple(slice(a, a + size) for a in lo)
            ct, dose, codes, mask = ct[sl], dose[sl], codes[sl], mask[sl]
            source += f", {size}^3 crop centred on the targets"
    else:
        rng = np.random.default_rng(seed)
        g = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij")).astype(np.float32)
        masks, dose = [], np.zeros((size,) * 3, np.float32)
        for r in rs.rois:
            c = rng.uniform(0.3, 0.7, 3) * size
            rad = size * (0.12 if r.kind == "target" else 0.06)
            m = ((g - c[:, None, None, None]) ** 2).sum(0) < rad ** 2
            masks.append(m)
            if r.prescription:
                dose = np.maximum(dose, np.where(m, r.prescription, 0))
        codes = encode(masks)
        dose = dose + 5.0
        ct = np.zeros_like(codes, dtype=np.int16)
        mask = np.ones(codes.shape, bool)
        spacing = (3.9, 3.9, 2.5)
        source = f"synthetic spheres {size}^3"
    return {"ct": ct, "dose": dose.astype(np.float32), "codes": codes, "mask": mask, "spacing": spacing,
            "roi_set": rs, "source": source,
            "roi_voxels": int(sum(int(((codes >> k) & 1).sum()) for k in range(len(rs))))}


def _unet(roi_set: Any, device: str):
    from ..models import build_model

    model = build_model({"rois": roi_set.to_dicts()})
    desc = ("dosepred.models.build_model defaults (MONAI UNet, 16 base channels, 4 levels, "
            "2 residual units, instance norm)")

    def fwd(ct, codes, mask):
        return model(ct, codes, mask)
    return model.to(device), fwd, desc


#: aten ops that wait for the device (a GPU-to-host copy): nonzero (boolean indexing) and item()/bool()
_SYNC_OPS = ("aten::nonzero", "aten::_local_scalar_dense")


def op_counts(fn: Callable[[], Any]) -> tuple[int, int]:
    """(aten op calls, nested ones included; of them, host synchronisations) of one ``fn()`` call.

    On a GPU every aten call is at least one kernel launch (a few microseconds each) and every sync
    stalls the host until the device is done, so these counts bound a loss's latency there; they
    are measured on any device, the CPU included.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ev = prof.key_averages()
    return (sum(e.count for e in ev if e.key.startswith("aten::")),
            sum(e.count for e in ev if e.key in _SYNC_OPS))


def _time_case(case: dict[str, Any], dev: str, names: Sequence[str], repeats: int, unet: bool,
               log: Callable[[str], None] | None) -> tuple[list[dict[str, Any]], float | None, str | None]:
    """Rows of one (size, device): each loss's median seconds, and the U-Net step's."""
    import torch

    from ..losses import build_loss

    rs, size = case["roi_set"], case["dose"].shape[0]
    rng = np.random.default_rng(0)
    ref = torch.as_tensor(case["dose"])[None, None].to(dev)
    noise = torch.as_tensor(rng.uniform(0.9, 1.1, case["dose"].shape).astype(np.float32), device=dev)
    pred0 = ref * noise[None, None]
    codes = to_torch(case["codes"], dev)[None]
    mask = torch.as_tensor(case["mask"], device=dev)[None, None]
    sp = torch.tensor([case["spacing"]], dtype=torch.float64)
    step_s = model_desc = None
    if unet:
        model, fwd, model_desc = _unet(rs, dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        mae = build_loss("mae", roi_set=rs)
        ct = torch.as_tensor(case["ct"])[None, None].to(dev)

        def step():
            loss, _ = mae(fwd(ct, codes, mask), ref, codes, mask, sp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        if log:
            log(f"{size}^3 {dev}: U-Net step")
        step_s = _median_time(step, repeats, dev)
        del model, opt
    rows = []
    for name in names:
        spec, opts = LOSS_CASES[name]
        opts = dict(opts)
        proto = opts.pop("protocol", None)
        fn = build_loss(spec, roi_set=rs, protocol=proto, **opts).to(dev)

        def once(fn=fn):
            total, _ = fn(pred0.clone().requires_grad_(), ref, codes, mask, sp)
            total.backward()

        if log:
            log(f"{size}^3 {dev}: {name}")
        seconds = _median_time(once, repeats, dev)
        ops, syncs = op_counts(once)
        rows.append({"size": size, "device": dev, "loss": name, "spec": spec, "options": opts,
                     "protocol": proto or ("openkbp" if spec == "cdm" else None),
                     "seconds": seconds, "aten_ops": ops, "host_syncs": syncs, "source": case["source"],
                     "roi_voxels": case["roi_voxels"]})
    mae_s = next((r["seconds"] for r in rows if r["loss"] == "mae"), None)
    for r in rows:
        r["vs_mae"] = r["seconds"] / mae_s if mae_s else None
        r["vs_unet_step"] = r["seconds"] / step_s if step_s else None
    return rows, step_s, model_desc


#: The smallest volume (voxels per axis): the default U-Net down-samples 3 times and its bottom needs
#: more than one voxel (instance norm)
MIN_SIZE = 16


def check_sizes(sizes: Sequence[int], unet: bool) -> None:
    """``--sizes``: at least one, each at least :data:`MIN_SIZE`, and divisible by 8 when the U-Net
    step is timed (its 3 down-samplings); an :class:`InputError` naming ``--sizes`` otherwise."""
    if not sizes:
        raise InputError("--sizes: give at least one volume size, such as 64,128")
    for s in sizes:
        if s < MIN_SIZE:
            raise InputError(f"--sizes {s}: a volume size must be at least {MIN_SIZE} voxels")
        if unet and s % 8:
            raise InputError(f"--sizes {s}: the U-Net step needs a size divisible by 8 (it down-samples "
                             "3 times); give another size or --no-unet")


def run(sizes: Sequence[int] = (64, 128), repeats: int = 3, devices: Sequence[str] | None = None,
        patient_dir: Path | None = DEFAULT_PATIENT, losses: Sequence[str] | None = None,
        unet: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time every loss at every size on every device; returns a JSON-ready dict."""
    import torch

    if devices is None or list(devices) == ["all"]:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        if dev not in ("cpu", "cuda"):
            raise InputError(f"--device must be cpu, cuda or all, got {dev!r}")
        if dev == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available")
    names = list(losses) if losses else list(LOSS_CASES)
    bad = [n for n in names if n not in LOSS_CASES]
    if bad:
        raise InputError(f"unknown loss case(s) {bad}; choose from {', '.join(LOSS_CASES)}")
    check_at_least(repeats=(repeats, 1))
    check_sizes(sizes, unet)
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    model_desc = None
    for size in sizes:
        case = load_case(size, patient_dir)
        for dev in devices:
            r, step_s, desc = _time_case(case, dev, names, repeats, unet, log)
            rows += r
            model_desc = desc or model_desc
            if step_s is not None:
                steps.append({"size": size, "device": dev, "seconds": step_s})
    cdm = [r for r in rows if r["loss"] == "cdm" and r.get("vs_unet_step") is not None]
    return {"rows": rows, "unet_steps": steps, "model": model_desc, "repeats": repeats,
            "machine": _machine(), "seconds": time.perf_counter() - t_start,
            "target": {"what": "CDM forward+backward / U-Net training step <= 0.10",
                       "values": {f"{r['size']}^3 {r['device']}": r["vs_unet_step"] for r in cdm},
                       "met": bool(cdm) and all(r["vs_unet_step"] <= 0.10 for r in cdm)}}


def _machine() -> dict[str, Any]:
    import torch

    m: dict[str, Any] = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                         "torch": torch.__version__, "python": platform.python_version(),
                         "processor": platform.processor() or platform.machine(),
                         "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        m["cuda_device"] = torch.cuda.get_device_name(0)
    try:
        m["load_average"] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    return m


def table(res: dict[str, Any]):
    """A rich Table of :func:`run`'s result."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title="loss forward+backward time (median)")
    for col in ("size", "device", "loss", "ms", "vs MAE", "vs U-Net step", "aten ops", "syncs"):
        t.add_column(col, justify="left" if col in ("device", "loss") else "right")
    steps = {(s["size"], s["device"]): s["seconds"] for s in res["unet_steps"]}
    for (size, dev), s in steps.items():
        t.add_row(f"{size}^3", dev, Text("U-Net step (MAE)", style="bold"), f"{s * 1e3:.0f}", "", "1.00",
                  "", "")
    for r in res["rows"]:
        vs = f"{r['vs_unet_step']:.3f}" if r.get("vs_unet_step") is not None else "-"
        t.add_row(f"{r['size']}^3", r["device"], r["loss"], f"{r['seconds'] * 1e3:.1f}",
                  f"{r['vs_mae']:.1f}x" if r.get("vs_mae") else "-", vs, str(r.get("aten_ops", "-")),
                  str(r.get("host_syncs", "-")))
    return t


def markdown(res: dict[str, Any]) -> str:
    """The result as a Markdown table (for docs/results.md)."""
    steps = {(s["size"], s["device"]): s["seconds"] for s in res["unet_steps"]}
    lines = ["| size | device | loss | ms | vs MAE | vs U-Net step | aten ops | syncs |",
             "|---|---|---|---|---|---|---|---|"]
    for (size, dev), s in steps.items():
        lines.append(f"| {size}^3 | {dev} | U-Net training step (MAE) | {s * 1e3:.0f} | | 1 | | |")
    for r in res["rows"]:
        vs = f"{r['vs_unet_step']:.3f}" if r.get("vs_unet_step") is not None else "-"
        vs_mae = f"{r['vs_mae']:.1f}x" if r.get("vs_mae") else "-"
        lines.append(f"| {r['size']}^3 | {r['device']} | {r['loss']} | {r['seconds'] * 1e3:.1f} | "
                     f"{vs_mae} | {vs} | {r.get('aten_ops', '-')} | {r.get('host_syncs', '-')} |")
    return "\n".join(lines)
