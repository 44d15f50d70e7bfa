"""``python -m dosepred.bench.train_step``: the time of one training step of the dose U-Net in
several execution variants, measured side by side in one process, relative to the plain float32 step.

A step is what the trainer does: assemble the input channels, forward, the MAE loss, backward, a
gradient clip and an AdamW step, on one seeded synthetic patient of ``size``^3 voxels (batch 1).
Variants (each a fresh model from the same seed):

- ``fp32``: the trainer's CPU step today;
- ``channels-last``: model and input in ``torch.channels_last_3d`` memory format;
- ``bf16``: ``torch.autocast`` with bfloat16 around the forward pass (losses in float32, as the
  trainer does on a GPU);
- ``compile``: ``torch.compile`` of the model (inductor; its compile time is reported apart);
- ``two-stage-frozen``: the cascade (``stages=2``, first stage frozen): what a step of the second
  stage costs.

The variants take turns (round-robin, ``repeats`` rounds of ``steps`` steps each, after a warm-up
round), so a busy machine slows all of them alike; the table gives each one's median seconds per
step and its ratio to ``fp32``. Nothing here is used by training.

    python -m dosepred.bench.train_step [--size 128] [--steps 2] [--repeats 3] [--variants fp32,bf16]
                                        [--device cpu] [--threads N] [--json FILE]
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any

import torch

from ..console import bench
from ..errors import DosepredError, InputError
from ..fsutil import write_json
from . import sync as _sync
from .networks import check_device
from .synthetic import synthetic_batch

VARIANTS = ("fp32", "channels-last", "bf16", "compile", "two-stage-frozen")


def _stepper(variant: str, size: int, device: str, base: int, levels: int, seed: int) -> tuple[Any, float]:
    """(a function doing one training step, seconds spent compiling)."""
    from ..models import ModelConfig, build_model

    torch.manual_seed(seed)
    stages = 2 if variant == "two-stage-frozen" else 1
    model = build_model(ModelConfig(patch=(size,) * 3, base=base, levels=levels, res_units=0,
                                    stages=stages)).to(device).train()
    if stages == 2:
        model.freeze_first_stage()  # as the trainer's freeze_stage1
    b = synthetic_batch(size, device, seed)
    fmt = torch.channels_last_3d if variant == "channels-last" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    fwd = torch.compile(model.from_input) if variant == "compile" else model.from_input
    compile_s = 0.0
    dtype = torch.bfloat16 if variant == "bf16" else None

    def step() -> None:
        x = model.assemble(b["ct"], b["codes"], b["mask"]).to(memory_format=fmt)
        with torch.autocast(device.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None):
            pred = fwd(x)
        loss = (pred.float() - b["dose"]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    if variant == "compile":
        t0 = time.perf_counter()
        step()  # the first call compiles
        _sync(device)
        compile_s = time.perf_counter() - t0
    return step, compile_s


def run(size: int = 64, steps: int = 3, repeats: int = 3, variants: tuple[str, ...] = VARIANTS,
        device: str = "cpu", base: int = 16, levels: int = 4, seed: int = 0,
        log: Any = None) -> dict[str, Any]:
    check_device(device)  # else every variant fails alike, in torch's words
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise InputError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if "fp32" not in variants:
        variants = ("fp32", *variants)
    steppers: dict[str, Any] = {}
    compile_s: dict[str, float] = {}
    failed: dict[str, str] = {}
    for v in variants:
        try:
            steppers[v], compile_s[v] = _stepper(v, size, device, base, levels, seed)
            steppers[v]()  # warm-up
        except Exception as e:  # noqa: BLE001 - a variant this machine cannot run is reported, not fatal
            failed[v] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]
            steppers.pop(v, None)
        if log:
            log(f"{v}: ready" if v in steppers else f"{v}: failed ({failed[v]})")
    if "fp32" not in steppers:
        raise RuntimeError(f"the plain float32 step failed: {failed.get('fp32')}")
    times: dict[str, list[float]] = {v: [] for v in steppers}
    for r in range(repeats):
        for v, fn in steppers.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            _sync(device)
            times[v].append((time.perf_counter() - t0) / steps)
        if log:
            log(f"round {r + 1}/{repeats}: " + ", ".join(f"{v} {t[-1]:.3f} s" for v, t in times.items()))
    ref = statistics.median(times["fp32"])
    rows = [{"variant": v, "sec_per_step": statistics.median(t), "ratio_vs_fp32": statistics.median(t) / ref,
             "compile_s": compile_s.get(v, 0.0)} for v, t in times.items()]
    rows += [{"variant": v, "failed": why} for v, why in failed.items()]
    return {"size": size, "steps": steps, "repeats": repeats, "device": device, "base": base,
            "levels": levels, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "machine": {"cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                        "load_average": os.getloadavg()}, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m dosepred.bench.train_step",
                                 description=" ".join((__doc__ or "").split("\n\n")[0].split()))
    ap.add_argument("--size", type=int, default=64, help="voxels per axis [64]")
    ap.add_argument("--steps", type=int, default=3, help="steps per timed round [3]")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds, median [3]")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated [all]")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads [torch's default]")
    ap.add_argument("--json", help="write the numbers to this file")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        res = run(a.size, a.steps, a.repeats, tuple(v for v in a.variants.split(",") if v), a.device,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    except (DosepredError, RuntimeError) as e:  # a bad option; a variant no machine here can run
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)  # as the command line's user errors
    from rich.console import Console

    con = Console(highlight=False)
    for item in bench("train-step", res):
        con.print(item)
    if a.json:
        write_json(a.json, res)


if __name__ == "__main__":
    main()
