"""``dosepred bench networks``: time and peak memory of one training step for candidate U-Nets,
measured side by side in one run, relative to the first network given.

A step is what the trainer does (assemble the input channels from the bit-mask codes, forward, MAE,
backward, gradient clip, AdamW), batch 1, on the seeded synthetic patient of
:mod:`dosepred.bench.train_step`. Each (network, repeat) runs in a fresh subprocess so that its peak
memory is its own: on the CPU the peak resident set size (``ru_maxrss``) minus the resident size
before the model was built; on a GPU ``torch.cuda.max_memory_allocated``. The networks take turns in
an order rotated per repeat, so a busy machine slows all of them alike; the table gives each one's
median seconds per step and peak memory, and their ratios to the first network.

A network is ``CHANNELS[+COARSE][:RES_UNITS][@HEAD]``: channels per level finest first,
comma-separated, the channels of a coarse branch under the bottom (``ModelConfig.coarse``), the
residual units per level (default 0) and the channels of a full-resolution head
(``ModelConfig.head``), e.g. ``16,32,64,128`` (the round-12 release), ``16,32,64,128+128,128,256``
(the release with the coarse branch of round 14), ``16,32,64,128,256,512:1`` or
``16,64,64,128+128,128,256@4`` (the round-17 release with a head).
With ``precisions`` (``fp32``, ``bf16``) every network is also measured under bfloat16 autocast of its
forward pass (as ``dosepred train --cpu-bf16`` trains on a CPU, or ``--amp`` on a GPU): native on CPUs
with AVX512-BF16 or AMX, emulated and many times slower elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InputError
from . import check_at_least, sync

PRECISIONS = ("fp32", "bf16")
#: The candidates of issue 24 (the release first).
DEFAULT_NETWORKS = ("16,32,64,128", "16,32,64,128+128,128,256", "16,32,64,128,256,512",
                    "16,32,64,128,256,256", "16,32,96,192,384,384", "16,32,64,128,256,512:1")


def parse_head(text: str) -> int | None:
    """The ``@HEAD`` of a network (None without one)."""
    _, at, head = text.strip().partition("@")
    if not at:
        return None
    try:
        h = int(head)
    except ValueError:
        h = 0
    if h < 1:
        raise InputError(f"network {text!r}: @HEAD must be a positive number of channels, such as @4")
    return h


def parse_network(text: str) -> tuple[list[int], int, list[int] | None]:
    """``"16,32,64+64,128:1"`` -> ([16, 32, 64], 1, [64, 128]); no ``+``: coarse None. An ``@HEAD``
    is read by :func:`parse_head`."""
    spec, _, res = text.strip().partition("@")[0].partition(":")
    chans, plus, coarse_text = spec.partition("+")
    try:
        widths = [int(c) for c in chans.split(",") if c.strip()]
        coarse = [int(c) for c in coarse_text.split(",") if c.strip()] if plus else None
        res_units = int(res) if res.strip() else 0
    except ValueError:
        raise InputError(f"network {text!r}: expected channels such as 16,32,64,128, an optional "
                         "+COARSE such as +128,128,256, an optional :RES_UNITS and an optional "
                         "@HEAD") from None
    if len(widths) < 2 or min(widths) < 1 or res_units < 0:
        raise InputError(f"network {text!r}: at least two positive channel counts and res units >= 0")
    if coarse is not None and (len(coarse) < 2 or min(coarse) < 1):
        raise InputError(f"network {text!r}: a coarse branch needs at least two positive channel counts")
    return widths, res_units, coarse


def depth(text: str) -> int:
    """Resolution levels of a network, its coarse branch's included."""
    widths, _, coarse = parse_network(text)
    return len(widths) + (len(coarse) - 1 if coarse else 0)


def check_device(device: str) -> None:
    """``cpu``, ``cuda`` or ``cuda:N`` with a CUDA device there: an :class:`InputError` naming
    ``--device`` otherwise (before any run starts, each in its own process)."""
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise InputError(f"--device {device!r}: choose cpu or cuda (cuda:N)")
    if device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: no CUDA device is available to this torch "
                             f"({torch.__version__}); use --device cpu")


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """One network in this process: ``warmup`` untimed steps, then ``steps`` timed ones."""
    import torch
    from monai.networks.nets import UNet  # noqa: F401 - imported before the baseline memory is read

    from ..models import ModelConfig, build_model
    from .synthetic import synthetic_batch

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    widths, res_units, coarse = parse_network(spec["network"])
    size = spec["size"]
    b = synthetic_batch(size, device, spec["seed"])
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_now_mb()
    torch.manual_seed(spec["seed"])
    head = parse_head(spec["network"])
    config = ModelConfig(channels=widths, res_units=res_units, patch=(size,) * 3, coarse=coarse, head=head)
    model = build_model(config).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    bf16 = spec.get("precision", "fp32") == "bf16"

    def step() -> None:
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            pred = model(b["ct"], b["codes"], b["mask"])
        loss = (pred.float() - b["dose"]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(spec["warmup"]):
        step()
    sync(device)
    times = []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    res = {"network": spec["network"], "precision": spec.get("precision", "fp32"), "channels": widths,
           "coarse": coarse, "res_units": res_units,
           "head": head,
           "parameters": sum(q.numel() for q in model.parameters()),
           "sec_per_step": float(statistics.median(times)),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "peak_rss_delta_mb": max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0)}
    if device.startswith("cuda"):
        res["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def _isolated(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "dosepred.bench.networks", json.dumps(spec)],
                          capture_output=True, text=True, check=False,
                          env=dict(os.environ, DOSEPRED_NO_PROGRESS="1"))
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
        raise RuntimeError(f"network {spec['network']} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(networks: Sequence[str] = DEFAULT_NETWORKS, size: int = 128, steps: int = 3, warmup: int = 1,
        repeats: int = 2, device: str = "cpu", threads: int = 1, seed: int = 0,
        log: Callable[[str], None] | None = None, precisions: Sequence[str] = ("fp32",)) -> dict[str, Any]:
    """Every network in every precision ``repeats`` times in rotated order; medians and ratios to the
    first network in the first precision."""
    import platform

    import torch

    check_at_least(steps=(steps, 1), warmup=(warmup, 0), repeats=(repeats, 1), threads=(threads, 1))
    check_device(device)
    for n in networks:
        parse_head(n)
        if size % 2 ** (depth(n) - 1):
            raise InputError(f"--size {size} must be divisible by 2^(levels-1) = {2 ** (depth(n) - 1)} "
                             f"for network {n}")
        if size < 2 ** depth(n):  # instance norm needs more than one voxel at the coarsest level
            raise InputError(f"--size {size} must be at least 2^levels = {2 ** depth(n)} for network {n} "
                             "(its coarsest level needs more than one voxel)")
    if not networks:
        raise InputError("no network to measure")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions or len(set(precisions)) < len(precisions):
        why = f"unknown {', '.join(bad)}" if bad else "none given" if not precisions else "one given twice"
        raise InputError(f"--precisions {','.join(precisions)}: {why} "
                         f"(choose from {', '.join(PRECISIONS)}, each at most once)")
    cands = [(n, p) for n in dict.fromkeys(networks) for p in precisions]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {c: [] for c in cands}
    for r in range(repeats):
        order = cands[r % len(cands):] + cands[: r % len(cands)]
        for n, prec in order:
            spec = {"network": n, "precision": prec, "size": size, "steps": steps, "warmup": warmup,
                    "device": device, "threads": threads, "seed": seed}
            runs[n, prec].append(_isolated(spec))
            if log:
                x = runs[n, prec][-1]
                log(f"repeat {r + 1}/{repeats} {n} {prec}: {x['sec_per_step']:.3f} s/step, peak +"
                    f"{x['peak_rss_delta_mb']:.0f} MB" + (f", CUDA {x['cuda_peak_mb']:.0f} MB"
                                                          if "cuda_peak_mb" in x else ""))
    rows = []
    for n, prec in cands:
        rs = runs[n, prec]
        row = {"network": n, "precision": rs[0]["precision"], "channels": rs[0]["channels"],
               "coarse": rs[0]["coarse"], "res_units": rs[0]["res_units"], "head": rs[0]["head"],
               "parameters": rs[0]["parameters"],
               "sec_per_step": statistics.median(x["sec_per_step"] for x in rs),
               "peak_rss_delta_mb": statistics.median(x["peak_rss_delta_mb"] for x in rs)}
        if "cuda_peak_mb" in rs[0]:
            row["cuda_peak_mb"] = statistics.median(x["cuda_peak_mb"] for x in rs)
        rows.append(row)
    ref = rows[0]
    for row in rows:
        row["time_vs_first"] = row["sec_per_step"] / ref["sec_per_step"]
        key = "cuda_peak_mb" if "cuda_peak_mb" in row else "peak_rss_delta_mb"
        row["memory_vs_first"] = row[key] / ref[key] if ref[key] > 0 else float("nan")
    m = {"cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
         "load_average": os.getloadavg()}
    if device.startswith("cuda") and torch.cuda.is_available():
        m["cuda_device"] = torch.cuda.get_device_name(0)
    return {"size": size, "steps": steps, "warmup": warmup, "repeats": repeats, "device": device,
            "threads": threads, "precisions": list(precisions), "torch": torch.__version__, "machine": m,
            "rows": rows}


def table(res: dict[str, Any]) -> Any:
    from rich.table import Table

    cuda = any("cuda_peak_mb" in r for r in res["rows"])
    t = Table(title=f"one training step per network, {res['size']}^3 voxels, batch 1, {res['device']}, "
                    f"{res['threads']} thread(s) (median of {res['repeats']} runs of {res['steps']} steps, "
                    "each in its own process, in turns)")
    for c in ("network (channels+coarse:res units@head)", "precision", "parameters", "s/step",
              "time vs first", "peak GPU MB" if cuda else "peak RSS +MB", "memory vs first"):
        t.add_column(c, justify="left" if c.startswith("network") else "right")
    for r in res["rows"]:
        t.add_row(r["network"], r.get("precision", "fp32"), f"{r['parameters'] / 1e6:.2f} M",
                  f"{r['sec_per_step']:.3f}",
                  f"{r['time_vs_first']:.2f}x",
                  f"{r['cuda_peak_mb' if cuda else 'peak_rss_delta_mb']:.0f}", f"{r['memory_vs_first']:.2f}x")
    return t


if __name__ == "__main__":  # one isolated run: the spec as JSON in argv[1], the result on stdout
    print(json.dumps(run_one(json.loads(sys.argv[1]))))
