"""Benchmark: bit-mask ROI pipeline vs the one-hot float32 pipeline, trained side by side.

The same model, loss, optimiser and samples are trained for a fixed number of steps through

- ``bitmask``: per patient one compressed npz (``np.savez_compressed``: ct int16, dose float32,
  possible-dose mask bool, ROI codes uint8/16/32/64 from :func:`dosepred.roi.encode`; the dense
  layout of the dosepred cache's format version 1 -- the sparse version 2 is smaller still and
  is not what is measured here, so that only the ROI representation differs). The Dataset
  returns the cropped codes (:func:`dosepred.roi.to_torch`); the ROI channels are decoded on the
  training device (:func:`dosepred.roi.decode_torch`) just before the model.
- ``onehot-npz``: per patient one compressed npz with ct, dose, mask and every ROI as its own float32
  channel, a (K, *S) array. The Dataset returns the cropped float channels; they are moved as they are.
- ``onehot-npy``: ct, dose and mask as in ``onehot-npz`` (compressed npz) but the (K, *S) float32 ROI
  array in an uncompressed ``.npy`` that the Dataset memory-maps and crops (no decompression, big files).

CT, dose and mask are stored, loaded and transferred identically in every pipeline, so only the ROI
representation differs. The model input is the same in every pipeline: CT (HU clipped to
[-1000, 2000] / 1000), the K ROI channels (float32 0/1) and the possible-dose mask, K + 2 channels
(:func:`model_input`); the fairness check in the tests compares it tensor for tensor.

Each (K, pipeline, repeat) runs in a fresh subprocess (clean peak RSS), in rotating order per repeat
so that the pipelines alternate on a shared CPU; ratios are one-hot / bit-mask per repeat, then the
median over repeats. Every sample is a full-resolution ``patch``^3 crop at a seeded position that
is the same in every pipeline; the Dataset reads its patient file for every sample (no in-memory
cache: a dataset larger than RAM), so the OS page cache serves the bytes and decompression is CPU.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import roi as _roi
from .. import synth
from ..errors import InputError
from ..fsutil import write_bytes
from . import check_at_least

PIPELINES = ("bitmask", "onehot-npz", "onehot-npy")
DEFAULT_PIPELINES = ("bitmask", "onehot-npz")
MODELS = ("unet", "basicunet")
_PHASES = ("load_s", "transfer_s", "decode_s", "compute_s", "step_s")


@dataclass
class BenchConfig:
    rois: tuple[int, ...] = (10, 40)
    size: int = 64
    patch: int = 48
    steps: int = 4  # timed steps per run
    warmup: int = 1  # untimed steps first (allocator, worker start-up)
    repeats: int = 3
    patients: int = 8
    batch: int = 2
    device: str = "cpu"
    workers: int = 0
    model: str = "unet"
    pipelines: tuple[str, ...] = DEFAULT_PIPELINES
    isolate: bool = True  # each run in a fresh subprocess (clean peak RSS)
    seed: int = 0
    threads: int = 1  # torch intra-op threads (0: torch's default); 1 keeps timings stable on a shared CPU
    workdir: str | None = None  # data folder (default: a temporary folder, removed afterwards)
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if not self.rois:
            raise InputError("--rois needs at least one ROI count")
        for k in self.rois:
            if not 1 <= k <= _roi.MAX_ROIS:
                raise InputError(f"--rois {k}: ROI counts must be 1..{_roi.MAX_ROIS}")
        if self.patch > self.size:
            raise InputError(f"--patch {self.patch} is larger than the volume --size {self.size}")
        if self.patch % 8 or self.patch < 16:
            raise InputError(f"--patch {self.patch} must be divisible by 8 and at least 16 (the U-Nets "
                             "down-sample 3 times; their bottom needs more than one voxel)")
        check_at_least(steps=(self.steps, 1), repeats=(self.repeats, 1), patients=(self.patients, 1),
                       batch=(self.batch, 1), warmup=(self.warmup, 0), workers=(self.workers, 0),
                       threads=(self.threads, 0))
        bad = [p for p in self.pipelines if p not in PIPELINES]
        if bad or not self.pipelines:
            raise InputError(f"unknown pipeline(s) {bad}: choose from {', '.join(PIPELINES)}")
        if "bitmask" not in self.pipelines:
            raise InputError("the pipelines must include 'bitmask' (the ratios are one-hot / bit-mask)")
        if self.model not in MODELS:
            raise InputError(f"--model {self.model!r}: choose from {', '.join(MODELS)}")
        if self.model == "basicunet" and (self.patch % 16 or self.patch < 32):
            raise InputError(f"--model basicunet needs --patch divisible by 16 and >= 32, got {self.patch}")
        if self.device not in ("cpu", "cuda"):
            raise InputError(f"--device {self.device!r}: choose cpu or cuda")
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise InputError("--device cuda: no CUDA device is available to this torch "
                                 f"({torch.__version__}); use --device cpu")


# ============================================================================================ data

def _synth_cohort(n: int, size: int, n_rois: int, seed: int) -> list[tuple[Any, ...]]:
    """(id, ct, dose, mask, codes (n_rois bits), roi names) per patient from :mod:`dosepred.synth`.

    The first 10 ROIs are OpenKBP's; more are the synthetic rings and PRVs (``extra_rois``). Fewer
    than 10 keep the first ``n_rois`` OpenKBP bits.
    """
    extra = max(0, n_rois - 10)
    out = []
    for i in range(n):
        p = synth.make_patient(synth.patient_seed(seed, i), size=size, pid=f"synth_{i:03d}", extra_rois=extra)
        codes = p.roi_codes
        if n_rois < len(p.roi_set):
            codes = codes & codes.dtype.type((1 << n_rois) - 1)
        codes = codes.astype(_roi.code_dtype(n_rois))
        out.append((p.id, p.ct, p.dose, np.asarray(p.possible_dose_mask), codes,
                    list(p.roi_set.names[:n_rois])))
    return out


def _savez(path: Path, compressed: bool = True, **arrays: np.ndarray) -> None:
    write_bytes(path, lambda fh: (np.savez_compressed if compressed else np.savez)(fh, **arrays))


def write_data(root: str | os.PathLike, rois: Sequence[int], patients: int, size: int, seed: int = 0,
               pipelines: Sequence[str] = PIPELINES,
               log: Callable[[str], None] | None = None) -> dict[int, Any]:
    """Write one synthetic cohort in every pipeline's format: ``root/k<K>/<pipeline>/``.

    The cohort is generated once with the largest K; smaller K keep its first bits, so every K and
    every pipeline hold the same anatomy. Returns {K: {pipeline: {"dir", "bytes_per_patient"}}}.
    """
    root = Path(root)
    kmax = max(rois)
    if log:
        log(f"generating {patients} synthetic patients at {size}^3 with {kmax} ROIs")
    cohort = _synth_cohort(patients, size, kmax, seed)
    info: dict[str, Any] = {}
    for k in rois:
        info[k] = {}
        for pipe in pipelines:
            d = root / f"k{k}" / pipe
            d.mkdir(parents=True, exist_ok=True)
            nbytes = 0
            for pid, ct, dose, mask, codes, _ in cohort:
                arrays = {"ct": ct, "dose": dose, "possible_dose_mask": mask}
                if pipe == "bitmask":
                    c = codes & codes.dtype.type((1 << k) - 1) if k < 64 else codes
                    _savez(d / f"{pid}.npz", **arrays, roi_codes=c.astype(_roi.code_dtype(k)))
                elif pipe == "onehot-npz":
                    _savez(d / f"{pid}.npz", **arrays, rois=_roi.decode_all(codes, k).astype(np.float32))
                else:
                    _savez(d / f"{pid}.npz", **arrays)
                    np.save(d / f"{pid}_rois.npy", _roi.decode_all(codes, k).astype(np.float32))
                    nbytes += (d / f"{pid}_rois.npy").stat().st_size
                nbytes += (d / f"{pid}.npz").stat().st_size
            (d / "ids.json").write_text(json.dumps([c[0] for c in cohort]))
            info[k][pipe] = {"dir": str(d), "bytes_per_patient": nbytes / len(cohort)}
            if log:
                log(f"  K={k} {pipe}: {nbytes / len(cohort) / 1e6:.2f} MB per patient")
    return info


# ========================================================================================= dataset

class CropDataset:
    """Map-style dataset of seeded ``patch``^3 crops; sample ``i`` reads patient ``i % P`` from disk.

    ``pipeline`` picks what it returns besides ``ct`` (int16, (1, p, p, p)), ``dose`` (float32) and
    ``mask`` (bool): ``codes`` ((p, p, p) integer tensor, bit-mask) or ``rois`` ((K, p, p, p) float32).
    Crop positions depend only on (seed, i), so every pipeline yields the same samples.
    """

    def __init__(self, data_dir: str | os.PathLike, pipeline: str, n_rois: int, patch: int, length: int,
                 seed: int = 0) -> None:
        if pipeline not in PIPELINES:
            raise ValueError(f"unknown pipeline {pipeline!r}")
        self.dir = Path(data_dir)
        self.pipeline, self.n_rois, self.patch, self.length, self.seed = pipeline, n_rois, patch, length, seed
        self.ids = json.loads((self.dir / "ids.json").read_text())

    def __len__(self) -> int:
        return self.length

    def origin(self, i: int, shape: Sequence[int]) -> tuple[int, int, int]:
        rng = np.random.default_rng([self.seed, i])
        return tuple(int(rng.integers(0, s - self.patch + 1)) for s in shape)  # type: ignore[return-value]

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        pid = self.ids[i % len(self.ids)]
        p = self.patch
        out: dict[str, Any] = {}
        with np.load(self.dir / f"{pid}.npz", allow_pickle=False) as z:
            ct = z["ct"]
            o = self.origin(i, ct.shape)
            sl = tuple(slice(a, a + p) for a in o)
            out["ct"] = torch.from_numpy(np.ascontiguousarray(ct[sl])[None])
            out["dose"] = torch.from_numpy(np.ascontiguousarray(z["dose"][sl], dtype=np.float32)[None])
            out["mask"] = torch.from_numpy(np.ascontiguousarray(z["possible_dose_mask"][sl])[None])
            if self.pipeline == "bitmask":
                out["codes"] = _roi.to_torch(np.ascontiguousarray(z["roi_codes"][sl]))
            elif self.pipeline == "onehot-npz":
                out["rois"] = torch.from_numpy(np.ascontiguousarray(z["rois"][(slice(None),) + sl]))
        if self.pipeline == "onehot-npy":
            mm = np.load(self.dir / f"{pid}_rois.npy", mmap_mode="r")
            out["rois"] = torch.from_numpy(np.array(mm[(slice(None),) + sl], dtype=np.float32))
            del mm
        return out


def model_input(batch: dict[str, Any], n_rois: int) -> Any:
    """(B, K + 2, p, p, p) float32 on the batch's device: CT, the K ROI channels, possible-dose mask.

    Bit-mask batches carry ``codes``: each ROI is decoded with :func:`dosepred.roi.decode_torch`
    (bit by bit, on the device) straight into its channel of the input buffer. One-hot batches carry
    ``rois`` already as float channels, copied into the same buffer. Decoding all bits at once
    (``decode_torch(codes, range(K))``) gives the same tensor but builds (B, K, *S) int64
    intermediates: about 3x slower on a CPU at K = 40. The CT channel is the model's own
    (:func:`dosepred.models.unet.ct_channel`).
    """
    import torch

    from ..models.unet import ct_channel

    ct = batch["ct"]
    b, spatial = ct.shape[0], tuple(ct.shape[2:])
    x = torch.empty((b, n_rois + 2, *spatial), dtype=torch.float32, device=ct.device)
    x[:, 0] = ct_channel(ct[:, 0])
    if "codes" in batch:
        codes = batch["codes"]
        for k in range(n_rois):
            x[:, 1 + k] = _roi.decode_torch(codes, k, dtype=torch.float32)
    else:
        x[:, 1:1 + n_rois] = batch["rois"]
    x[:, -1] = batch["mask"][:, 0]
    return x


# =========================================================================================== model

def make_model(name: str, in_channels: int) -> tuple[Any, str]:
    """The network and a one-line description.

    ``unet``: the architecture of :mod:`dosepred.models` (MONAI ``UNet``, base 16 channels doubled
    per level, 4 levels, 2 residual units, instance norm; its defaults are read from
    ``dosepred.models.ModelConfig`` when that module is importable) with ``in_channels`` inputs.
    ``basicunet``: MONAI ``BasicUNet`` features (16, 32, 64, 128, 256, 16), about 5x the compute
    (full-resolution first level), a compute-bound regime.
    """
    if name == "basicunet":
        from monai.networks.nets import BasicUNet

        feats = (16, 32, 64, 128, 256, 16)
        return (BasicUNet(spatial_dims=3, in_channels=in_channels, out_channels=1, features=feats),
                f"MONAI BasicUNet features {feats}")
    from monai.networks.nets import UNet

    base, levels, res_units, norm = 16, 4, 2, "instance"
    src = "defaults of dosepred.models.ModelConfig"
    try:
        from ..models import ModelConfig

        cfg = ModelConfig()
        base, levels, res_units, norm = cfg.base, cfg.levels, cfg.res_units, cfg.norm
    except Exception:  # noqa: BLE001 - the models package may be absent or changing
        src = "dosepred.models not importable; same hyper-parameters hard-coded"
    net = UNet(spatial_dims=3, in_channels=in_channels, out_channels=1,
               channels=[base * 2 ** i for i in range(levels)], strides=[2] * (levels - 1),
               num_res_units=res_units, norm=norm)
    return net, f"MONAI UNet base {base}, {levels} levels, {res_units} res units, {norm} norm ({src})"


def _loss_fn() -> tuple[Callable[..., Any], str]:
    """Masked MAE: dosepred.losses' MAE when importable, else the same formula written out."""
    try:
        from ..losses import mae

        return (lambda pred, ref, mask: mae(pred, ref, mask)), "dosepred.losses.mae (masked MAE)"
    except Exception:  # noqa: BLE001
        def _mae(pred, ref, mask):
            m = mask.float()
            return ((pred - ref).abs() * m).sum() / m.sum().clamp_min(1.0)

        return _mae, "masked MAE (local)"


# ============================================================================================ runs

def _rss_now_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _maxrss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def _hwm_mb() -> float | None:
    """The process's peak resident set size since the last :func:`_reset_peak` (Linux ``VmHWM``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux: ``5`` to ``/proc/self/clear_refs``), so
    that a run's peak is its own also when an earlier run or the data writing peaked higher in the same
    process (``--no-isolate``; ``ru_maxrss`` never goes down). False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _hwm_mb() is not None


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one pipeline for ``warmup + steps`` steps; timings, memory and sample sizes.

    ``spec`` keys: pipeline, rois, data_dir, patch, steps, warmup, batch, device, workers, model,
    seed, threads.
    """
    import torch

    pipe, k, dev = spec["pipeline"], int(spec["rois"]), torch.device(spec["device"])
    cuda = dev.type == "cuda"
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(int(spec["seed"]))
    batch_size, steps, warmup = int(spec["batch"]), int(spec["steps"]), int(spec["warmup"])
    ds = CropDataset(spec["data_dir"], pipe, k, int(spec["patch"]), (warmup + steps) * batch_size,
                     int(spec["seed"]))
    model, model_desc = make_model(spec["model"], k + 2)
    model = model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn, loss_desc = _loss_fn()
    workers = int(spec["workers"])
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         pin_memory=cuda, drop_last=True)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    own_peak = _reset_peak()  # else ru_maxrss: the process's lifetime peak (clean only in a fresh process)
    rss_before = _rss_now_mb()
    times: dict[str, list[float]] = {p: [] for p in _PHASES}
    sample_bytes = roi_bytes = 0.0
    it = iter(loader)
    for step in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        if step == 0:
            sample_bytes = sum(v.nbytes for v in batch.values()) / batch_size
            roi_bytes = batch["codes" if pipe == "bitmask" else "rois"].nbytes / batch_size
        batch = {n: v.to(dev, non_blocking=True) for n, v in batch.items()}
        sync()
        t2 = time.perf_counter()
        x = model_input(batch, k)
        sync()
        t3 = time.perf_counter()
        pred = model(x)
        loss = loss_fn(pred, batch["dose"], batch["mask"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        t4 = time.perf_counter()
        if step >= warmup:
            for name, dt in zip(_PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
                times[name].append(dt)
    del it, batch, x, pred
    peak = (_hwm_mb() if own_peak else None) or _maxrss_mb()
    res: dict[str, Any] = {"pipeline": pipe, "rois": k, "model": model_desc, "loss": loss_desc,
                           "loss_last": float(loss.detach()), "device": str(dev),
                           "torch_threads": torch.get_num_threads(), "workers": workers,
                           "sample_bytes": sample_bytes, "sample_roi_bytes": roi_bytes,
                           "peak_rss_mb": peak, "rss_before_mb": rss_before,
                           "peak_rss_delta_mb": max(0.0, peak - rss_before), "peak_rss_own": own_peak}
    res.update({name: statistics.median(v) for name, v in times.items()})
    res["steps_s"] = times["step_s"]
    if workers:
        res["worker_peak_rss_mb"] = _maxrss_mb(resource.RUSAGE_CHILDREN)
    if cuda:
        res["cuda_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        res["cuda_device"] = torch.cuda.get_device_name(dev)
    # host memory that loading one sample allocates (numpy reports its buffers to tracemalloc);
    # measured after the timed loop so tracing does not slow the timings
    peaks = []
    for i in range(min(3, len(ds))):
        tracemalloc.start()
        _ = ds[i]
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        del _
    res["load_peak_mb"] = max(peaks) / 2**20
    return res


def _run_isolated(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, DOSEPRED_NO_PROGRESS="1")
    proc = subprocess.run([sys.executable, "-m", "dosepred.bench.bitmask", json.dumps(spec)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"bench run {spec['pipeline']} K={spec['rois']} failed "
                           f"(exit {proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine(device: str) -> dict[str, Any]:
    import platform

    import torch

    m = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
         "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
         "processor": platform.processor() or platform.machine(),
         "cuda_available": torch.cuda.is_available()}
    if device == "cuda" and torch.cuda.is_available():
        m["cuda_device"] = torch.cuda.get_device_name(0)
    return m


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def run(cfg: BenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the data, run every (K, pipeline) ``repeats`` times in rotating order, aggregate."""
    cfg.check()
    own = cfg.workdir is None
    root = Path(tempfile.mkdtemp(prefix="dosepred-bench-bitmask-")) if own else Path(cfg.workdir)
    t_start = time.perf_counter()
    try:
        data = write_data(root, cfg.rois, cfg.patients, cfg.size, cfg.seed, cfg.pipelines, log)
        pipes = list(cfg.pipelines)
        runs: dict[int, dict[str, list[dict[str, Any]]]] = {k: {p: [] for p in pipes} for k in cfg.rois}
        for r in range(cfg.repeats):
            for k in cfg.rois:
                order = pipes[r % len(pipes):] + pipes[:r % len(pipes)]  # a b c / b c a / c a b
                for pipe in order:
                    spec = {"pipeline": pipe, "rois": k, "data_dir": data[k][pipe]["dir"], "patch": cfg.patch,
                            "steps": cfg.steps, "warmup": cfg.warmup, "batch": cfg.batch,
                            "device": cfg.device, "workers": cfg.workers, "model": cfg.model,
                            "seed": cfg.seed, "threads": cfg.threads}
                    res = _run_isolated(spec) if cfg.isolate else run_one(spec)
                    if not cfg.isolate and not res.get("peak_rss_own"):  # the process's peak, not the run's
                        for m in ("peak_rss_mb", "peak_rss_delta_mb"):
                            res.pop(m, None)
                    res["repeat"] = r
                    runs[k][pipe].append(res)
                    if log:
                        log(f"repeat {r + 1}/{cfg.repeats} K={k} {pipe}: step {res['step_s'] * 1e3:.0f} ms "
                            f"(load {res['load_s'] * 1e3:.0f} ms)")
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)
    return aggregate(cfg, data, runs, time.perf_counter() - t_start)


_METRICS = _PHASES + ("peak_rss_delta_mb", "peak_rss_mb", "load_peak_mb", "cuda_peak_mb")


def aggregate(cfg: BenchConfig, data: dict[int, Any], runs: dict[int, dict[str, list[dict[str, Any]]]],
              seconds: float) -> dict[str, Any]:
    rows, ratios = [], []
    for k, per in runs.items():
        base = per["bitmask"]
        for pipe, rs in per.items():
            row: dict[str, Any] = {"rois": k, "pipeline": pipe,
                                   "disk_bytes_per_patient": data[k][pipe]["bytes_per_patient"],
                                   "sample_bytes": rs[0]["sample_bytes"],
                                   "sample_roi_bytes": rs[0]["sample_roi_bytes"], "repeats": len(rs)}
            for m in _METRICS:
                if m in rs[0]:
                    row[m] = _median([x[m] for x in rs])
            row["step_s_per_repeat"] = [x["step_s"] for x in rs]
            rows.append(row)
            if pipe == "bitmask":
                continue
            ratio: dict[str, Any] = {"rois": k, "pipeline": f"{pipe} / bitmask"}
            for m in _METRICS:
                if m in rs[0]:  # paired by repeat (adjacent runs), then the median
                    ratio[m] = _median([a[m] / b[m] for a, b in zip(rs, base, strict=True) if b[m] > 0])
            for m in ("sample_bytes", "sample_roi_bytes"):
                ratio[m] = rs[0][m] / base[0][m]
            ratio["disk_bytes_per_patient"] = (data[k][pipe]["bytes_per_patient"]
                                               / data[k]["bitmask"]["bytes_per_patient"])
            ratios.append(ratio)
    first = next(iter(next(iter(runs.values())).values()))[0]
    return {"benchmark": "bitmask", "config": {**asdict(cfg), "rois": list(cfg.rois),
                                               "pipelines": list(cfg.pipelines)},
            "machine": _machine(cfg.device), "model": first["model"], "loss": first["loss"],
            "torch_threads": first["torch_threads"],
            "isolated": cfg.isolate, "seconds": seconds, "rows": rows, "ratios": ratios,
            "targets": targets(ratios)}


def targets(ratios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The efficiency claims, checked against ``onehot-npz / bitmask`` (and ``onehot-npy``)."""
    out = []
    for r in ratios:
        k = r["rois"]
        if k >= 40:
            out.append({"rois": k, "pipeline": r["pipeline"], "what": "whole step >= 3x faster",
                        "value": r["step_s"], "goal": 3.0, "met": r["step_s"] >= 3.0})
            out.append({"rois": k, "pipeline": r["pipeline"], "what": "ROI tensors per sample >= 20x smaller",
                        "value": r["sample_roi_bytes"], "goal": 20.0, "met": r["sample_roi_bytes"] >= 20.0})
            out.append({"rois": k, "pipeline": r["pipeline"],
                        "what": "whole sample (with CT, dose, mask) >= 20x smaller",
                        "value": r["sample_bytes"], "goal": 20.0, "met": r["sample_bytes"] >= 20.0})
        else:
            out.append({"rois": k, "pipeline": r["pipeline"], "what": "whole step not slower (ratio >= 0.95)",
                        "value": r["step_s"], "goal": 0.95, "met": r["step_s"] >= 0.95})
    return out


def table(res: dict[str, Any]) -> Any:
    """A rich Table of the rows and ratios."""
    from rich.table import Table

    c = res["config"]
    cuda = any("cuda_peak_mb" in r for r in res["rows"])
    t = Table(title=f"bit-mask vs one-hot: {c['patients']} patients {c['size']}^3, patch {c['patch']}^3, "
                    f"batch {c['batch']}, {c['steps']} steps x {c['repeats']} repeats, {c['device']}, "
                    f"workers {c['workers']} (medians; ratios one-hot / bit-mask)")
    cols = ["K", "pipeline", "disk MB/pt", "sample MB", "ROI MB", "load ms", "decode ms", "compute ms",
            "step ms", "peak RSS +MB", "load peak MB"] + (["transfer ms", "GPU peak MB"] if cuda else [])
    for i, col in enumerate(cols):
        t.add_column(col, justify="left" if i < 2 else "right")

    def cells(r: dict[str, Any], ratio: bool) -> list[str]:
        def f(key: str, scale: float, fmt: str) -> str:
            if key not in r:
                return "-"
            return f"{r[key]:.1f}x" if ratio else format(r[key] * scale, fmt)

        out = [str(r["rois"]), r["pipeline"], f("disk_bytes_per_patient", 1e-6, ".2f"),
               f("sample_bytes", 1e-6, ".2f"), f("sample_roi_bytes", 1e-6, ".2f"), f("load_s", 1e3, ".0f"),
               f("decode_s", 1e3, ".0f"), f("compute_s", 1e3, ".0f"), f("step_s", 1e3, ".0f"),
               f("peak_rss_delta_mb", 1, ".0f"), f("load_peak_mb", 1, ".1f")]
        if cuda:
            out += [f("transfer_s", 1e3, ".1f"), f("cuda_peak_mb", 1, ".0f")]
        return out

    for k in c["rois"]:
        for r in res["rows"]:
            if r["rois"] == k:
                t.add_row(*cells(r, False))
        for r in res["ratios"]:
            if r["rois"] == k:
                t.add_row(*cells(r, True), style="bold")
        t.add_section()
    return t


def main(argv: Sequence[str] | None = None) -> None:
    """Subprocess entry: ``python -m dosepred.bench.bitmask '<spec json>'`` prints one JSON line."""
    argv = sys.argv[1:] if argv is None else argv
    res = run_one(json.loads(argv[0]))
    sys.stdout.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
