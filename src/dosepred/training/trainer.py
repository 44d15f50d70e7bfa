"""The training loop: crops -> U-Net -> loss, with AMP, checkpoints, exact resume, fine-tuning and DDP.

Run folder (written by rank 0 only)::

    RUN/config.json          resolved TrainConfig
    RUN/dataset.json         copy of the training cache's dataset.json (val_dataset.json: the --val one's)
    RUN/protocol.json        the protocol used by the loss and validation scores
    RUN/version.json         dosepred version, git commit, torch/monai versions
    RUN/metrics.csv          one row per epoch (train loss parts, lr, validation scores, timing)
    RUN/tb/                  TensorBoard events (when tensorboard is importable)
    RUN/checkpoints/last.pt  after every epoch (written atomically)
    RUN/checkpoints/prev.pt  the last.pt before it: ``--resume`` falls back to it, with a warning,
                             when last.pt is unreadable (truncated, empty, damaged)
    RUN/checkpoints/best.pt  the epoch with the lowest validation score (``select``)

The records (metrics.csv, tb/, progress and epoch lines) are written by :mod:`.logging`, the
checkpoint files by :mod:`dosepred.models.checkpoint`; :class:`Trainer` only decides what goes in
them, in small steps a subclass may override (see its docstring).

EMA (``ema_decay > 0``): an exponential moving average of the weights is kept beside them; a
checkpoint's ``model`` is then the average (so validation, ``predict``, ``export`` and ``--init`` use
it, unchanged) and ``train_model`` the raw weights the optimiser continues from on ``--resume``.

Fine-tuning (``init``; :mod:`.init`): the model starts from another run's or a released model's
weights. When the training cache's ROIs differ from that model's (a clinic's names, organs and dose
levels), :mod:`dosepred.models.transfer` maps its input channels (OARs by name, new ones at zero
weight, missing ones dropped, targets through the prescription channel); the run's log says what was
mapped and its checkpoints hold the record as ``roi_transfer``.

Exact resume: crops are a pure function of (seed, epoch, index) (see :mod:`.dataset`), the learning
rate a pure function of the step, and a checkpoint holds model, optimiser, AMP scaler and torch RNG
states; ``resume=True`` therefore continues bit-for-bit on the same device and thread count.

DDP: launch with ``torchrun --nproc_per_node N -m dosepred.cli train ...``; each rank takes disjoint
crops of the same global sequence (:class:`.dataset.RankSampler`); rank 0 validates and writes.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import dosepred

from ..errors import InputError, leave_stops, name_some, starting_workers
from ..evaluation import evaluate_cohort  # at start: a long run never imports code edited since
from ..fsutil import check_output, write_json
from ..inference import InferenceOptions
from ..io.cache import Cache
from ..losses import build_loss
from ..models import ModelConfig, ModelError, build_model, checkpoint
from ..models.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, ResumeFallbackWarning, load_checkpoint
from ..models.space import ModelSpace, SpaceRecorder
from ..models.transfer import RoiTransfer
from ..predict import NonFiniteDoseError, OffRxWarning, OverdoseError, RoiNote, predict_dose, resolve_device
from ..progress import mode
from ..protocol import lint, load_protocol
from ..split import load_split, natural_key, parse_split_arg
from . import checks as run_checks
from .checks import check_protocol_prescriptions, check_resumed_data, check_resumed_protocol
from .config import TrainConfig
from .dataset import SCALED_EXTRA, CropDataset, RankSampler, load_arrays
from .init import from_init, inherit_absent, load_init_weights, resolve_architecture
from .logging import VAL_KEYS, Log, RunLogger, mean_parts

__all__ = ["ProtocolLintWarning", "ResumeFallbackWarning", "Trainer", "ValidatesOnTrainingWarning",
           "ema_decay_at", "ema_update", "lr_at", "make_loss", "train", "validate", "version_info"]

# ------------------------------------------------------------------------------------------ helpers

def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[3]
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                           timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def version_info() -> dict[str, Any]:
    import monai

    return {"dosepred": dosepred.__version__, "git_commit": git_commit(), "torch": str(torch.__version__),
            "monai": str(monai.__version__)}


class ProtocolLintWarning(UserWarning):
    """The protocol of the CDM loss is valid but probably not what was meant."""


class ValidatesOnTrainingWarning(UserWarning):
    """The validation patients are training patients (``--val`` is the training cache): validation
    scores, and the epoch they pick for best.pt, are then training scores."""


def _same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` are the same file or folder (links and relative paths resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one is missing: its own error comes when it is opened
        return Path(a).resolve() == Path(b).resolve()


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based): a pure function, so resume is exact."""
    total = cfg.epochs * steps_per_epoch
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.step_gamma ** (step // (cfg.step_every_epochs * steps_per_epoch))
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    floor = cfg.min_lr_fraction
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def make_loss(cfg: TrainConfig, roi_set, protocol):
    """The loss ``cfg.loss`` (with ``cfg.loss_options``) for ``roi_set`` and ``protocol``."""
    return build_loss(cfg.loss, roi_set=roi_set, protocol=protocol, **cfg.loss_options)


def ema_decay_at(decay: float, step: int) -> float:
    """Decay of the EMA update after optimiser step ``step`` (0-based): ``min(decay, (1+n)/(10+n))``.

    The warm-up keeps the average from being dominated by the starting weights in a short run
    (with a constant 0.999, 400 steps leave 67 % of the weight on the ``--init`` model)."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for floating parameters and buffers (others copied, and
    so are frozen parameters, which must stay bit for bit what they are)."""
    frozen = {n for n, q in model.named_parameters() if not q.requires_grad}
    still = {name for name, mod in model.named_modules()  # modules whose weights are all frozen
             if (qs := list(mod.parameters(recurse=False))) and not any(q.requires_grad for q in qs)}
    frozen |= {n for n, _ in model.named_buffers() if n.rpartition(".")[0] in still}  # e.g. BN statistics
    for (name, e), m in zip(ema.state_dict().items(), model.state_dict().values(), strict=True):
        if e.is_floating_point() and name not in frozen:
            e.mul_(decay).add_(m.detach(), alpha=1.0 - decay)
        else:
            e.copy_(m)


def cpu_has_bf16(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU computes bfloat16 natively (the ``avx512_bf16`` or ``amx_bf16`` flag of
    ``cpuinfo``); None where that cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    if not flags:
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def validate(model: torch.nn.Module, patients: list, protocol: Any, cfg: TrainConfig, device,
             progress: bool = False, epoch: int | None = None) -> dict[str, float]:
    """Whole-grid sliding-window prediction of the validation patients, scored by dosepred.evaluation;
    a dose no plan gives is a TrainingDivergedError (:func:`.checks.validation_overdose`)."""
    options = InferenceOptions(device=str(device), overlap=cfg.sw_overlap, mode=cfg.sw_mode,
                               amp=cfg.amp and device.type == "cuda", allow_missing_rois=True, tta=False)

    def pairs():
        for p in patients:
            with warnings.catch_warnings():  # validation patients share the cache's ROI set: predicted
                warnings.simplefilter("ignore", RoiNote)  # whatever they lack, without a note each time
                warnings.simplefilter("ignore", OffRxWarning)  # nor of the doses of a model still learning
                try:
                    d = predict_dose(model, p, options)
                except NonFiniteDoseError:  # the weights last.pt holds: --resume would meet them again
                    raise run_checks.diverged_weights(p.id, epoch) from None
                except OverdoseError as e:  # finite, over any dose: the weights, not the data
                    raise run_checks.validation_overdose(e.peak, p.id, epoch) from None
            yield p, d

    res = evaluate_cohort(pairs(), protocol if protocol is not None else "openkbp", progress=progress)
    s = {"dose_score": res.dose_score, "dvh_score": res.dvh_score, "ptv_score": res.ptv_score,
         "oar_score": res.oar_score}
    try:
        s["criteria_pass_rate"] = res.criteria_pass_rate
    except (ZeroDivisionError, ValueError):
        pass
    return {k: float(v) for k, v in s.items()}


# ------------------------------------------------------------------------------------------ trainer

class Trainer:
    """Build everything from a :class:`TrainConfig`; :meth:`fit` trains.

    :meth:`fit` is a fixed sequence of small steps (after nnU-Net's ``nnUNetTrainer``); a subclass
    overrides one of them without copying the loop::

        fit()
          on_train_start()                 -> initialize() (setup_device, setup_data, setup_model,
          |                                   setup_loss, load_train, load_val, build_dataset),
          |                                   restore_checkpoint() on resume, write_run_info(),
          |                                   the logger opened
          for each epoch:
            on_epoch_start(epoch)          net.train(), the epoch's sums reset
            for each batch of loader(epoch):
              train_step(batch, learning_rate(step))   one optimiser step -> loss parts
              on_train_step_end(parts)     step count, sums, progress
            on_train_epoch_end(epoch)      -> the epoch's row (mean train loss parts, lr, timing)
            on_validation_epoch(epoch, row) -> is_best: when due, validation_step() (the scores)
            |                                 and select_best(epoch, scores)
            on_epoch_end(epoch, row, is_best)  the row to the logger, then save_checkpoint() (last.pt last)
            should_stop(epoch)             --stop-after: leave the loop
            barrier()                      DDP: the ranks wait for each other
          on_train_end()                   progress and TensorBoard closed (also after an error)

    Records (metrics.csv, TensorBoard, progress and epoch lines) are :attr:`logger`'s
    (:class:`~dosepred.training.logging.RunLogger`); checkpoint files are written and read by
    :mod:`dosepred.models.checkpoint`. Steps run in the order above on every DDP rank; those that
    write or validate do so on rank 0 only.
    """

    #: validation columns of metrics.csv (``val_`` + key), present in every row once a run validates
    val_keys: tuple[str, ...] = VAL_KEYS

    def __init__(self, cfg: TrainConfig, resume: bool = False, log: Log | None = None,
                 progress: bool | None = None) -> None:
        cfg.check()
        self.cfg = cfg
        self.resume = resume
        self.rank, self.world, self.local_rank = _dist_info()
        self.is_main = self.rank == 0
        # bars on a terminal, plain lines in a log (see dosepred.progress), nothing when False
        self.progress_mode = mode(progress) if self.is_main else "off"
        self.progress = self.progress_mode != "off"
        self.run = Path(cfg.out)
        self.ckpt_dir = self.run / "checkpoints"
        self.logger = RunLogger(self.run, log, enabled=self.is_main)
        self.last_damaged = False  # resumed from prev.pt: the next save keeps prev.pt (no rotation)

    def log(self, msg: str) -> None:
        self.logger.message(msg)

    # ---- setup ------------------------------------------------------------------------------
    def setup_device(self) -> None:
        cfg = self.cfg
        if self.world > 1:
            import torch.distributed as dist

            if cfg.device in ("auto", "cuda") and torch.cuda.is_available():
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
                backend = "nccl"
            else:
                self.device = torch.device("cpu")
                backend = "gloo"
            if not dist.is_initialized():
                dist.init_process_group(backend)
        else:
            self.device = resolve_device(cfg.device)
        if self.device.type == "cpu":
            n = cfg.threads or max(1, (os.cpu_count() or 1) // self.world)
            torch.set_num_threads(n)
        else:
            # fixed-size crops: let cuDNN pick the fastest 3D convolution algorithms once
            torch.backends.cudnn.benchmark = True
        self.amp = cfg.amp and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported() else torch.float16
        if cfg.cpu_bf16 and self.device.type == "cpu":
            # bfloat16 needs no loss scaling (float32's exponent range): the scaler stays disabled
            self.amp, self.amp_dtype = True, torch.bfloat16

    def setup_data(self) -> None:
        cfg = self.cfg
        # the run folder must not be, hold or lie inside a cache it reads (checked before any write)
        check_output(self.run, True, [cfg.data, cfg.val], "the run folder (--out)")
        self.cache = Cache.open(cfg.data)
        self.roi_set = self.cache.roi_set
        ids = self.cache.ids
        if cfg.train_split:
            f, name = parse_split_arg(cfg.train_split)
            ids = load_split(f, name, cache_ids=self.cache.ids)
        if not ids:
            raise InputError(f"training cache {cfg.data} holds no patients")
        want = set(ids)
        no_dose = [e["id"] for e in self.cache.info["patients"]
                   if e["id"] in want and not e.get("has_dose", True)]
        if no_dose:
            raise InputError(f"training cache {cfg.data}: patients without dose cannot train: "
                             f"{name_some(no_dose)}")
        run_checks.check_targets(self.cache, ids, "training", cfg.data, cfg.init)
        self.train_ids = ids
        self.val_cache = None
        self.val_ids: list[str] = []
        if cfg.val:
            vc = Cache.open(cfg.val)
            if vc.roi_set != self.roi_set:
                raise InputError(f"validation cache {cfg.val} has ROIs {list(vc.roi_set.names)} but the "
                                 f"training cache has {list(self.roi_set.names)}")
            vids = vc.ids
            if cfg.val_split:
                f, name = parse_split_arg(cfg.val_split)
                vids = load_split(f, name, cache_ids=vc.ids)
            if cfg.val_patients:
                vids = sorted(vids, key=lambda i: (natural_key(i), i))[: cfg.val_patients]  # not the cache's
            run_checks.check_targets(vc, vids, "validation", cfg.val)
            self.val_cache, self.val_ids = vc, vids
            both = set(vids) & want if _same_path(cfg.data, cfg.val) else set()
            if both and self.is_main:
                warnings.warn(f"validation cache {cfg.val} is the training cache and {len(both)} of the "
                              f"{len(vids)} validation patients are trained on: validation scores (and "
                              "best.pt's epoch) are training scores", ValidatesOnTrainingWarning,
                              stacklevel=2)

    def setup_model(self) -> None:
        cfg = self.cfg
        self.init_ckpt = load_checkpoint(cfg.init) if cfg.init else None
        resolve_architecture(cfg, self.init_ckpt)  # the --init model's, the requested, the defaults
        self.model_config = ModelConfig(rois=self.roi_set.to_dicts(), base=cfg.base, levels=cfg.levels,
                                        res_units=cfg.res_units, norm=cfg.norm, patch=cfg.patch,
                                        flip_axis=1 if cfg.flip_axis is None else cfg.flip_axis,
                                        stages=cfg.stages, channels=cfg.channels, coarse=cfg.coarse,
                                        head=cfg.head, target_distance=bool(cfg.target_distance),
                                        laterality=bool(cfg.laterality), dropout=float(cfg.dropout or 0.0))
        torch.manual_seed(cfg.seed)
        self.model = build_model(self.model_config)
        self.roi_transfer: dict[str, Any] | None = None
        self.init_transfer: RoiTransfer | None = None  # this run's mapping (None: the same ROIs)
        if self.init_ckpt is not None:
            self.roi_transfer, self.init_transfer = load_init_weights(self.model, self.init_ckpt, cfg,
                                                                      self.roi_set, self.log)
        if cfg.freeze_stage1:
            self.model.freeze_first_stage()
        self.model.to(self.device)
        self.ema = None
        if cfg.ema_decay > 0:
            self.ema = copy.deepcopy(self.model).eval()
            for q in self.ema.parameters():
                q.requires_grad_(False)
        self.net = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        trainable = [q for q in self.model.parameters() if q.requires_grad]  # not a frozen first stage
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.held = self.held_weights()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)

    def held_weights(self) -> list[torch.nn.Parameter]:
        """``freeze_steps``: the contracting path's weights that came from ``--init`` (not a coarse
        branch or second stage this run adds, which start from scratch; not a frozen first stage). They
        get no gradient while ``global_step < freeze_steps`` (so AdamW neither moves nor decays them):
        a function of the step alone, so ``--resume`` needs no state."""
        cfg = self.cfg
        if not cfg.freeze_steps:
            return []
        was = ModelConfig.from_dict(dict(self.init_ckpt["model_config"]))
        held = [q for n, q in self.model.contracting_parameters().items()
                if q.requires_grad and from_init(n, was)]
        if not held:
            raise InputError(f"freeze_steps: no weight of the contracting path to keep comes from --init "
                             f"{cfg.init} (its second stage or coarse branch is new in this run, or frozen "
                             "by freeze_stage1); leave freeze_steps out")
        self.log(f"fine-tuning: the contracting path ({sum(q.numel() for q in held):,} weights from --init) "
                 f"keeps its --init weights for the first {cfg.freeze_steps} steps")
        return held

    def setup_loss(self) -> None:
        cfg = self.cfg
        self.protocol = None
        proto_name = cfg.protocol or ("openkbp" if "cdm" in cfg.loss.lower() or cfg.val else None)
        if proto_name is not None:
            self.protocol = load_protocol(proto_name, self.roi_set)
            check_protocol_prescriptions(self.protocol, self.roi_set, self.cfg)
            if self.val_ids:  # a score of nothing (NaN) would choose best.pt: refused before any work
                run_checks.check_selectable(self.protocol, self.roi_set, self.val_cache, self.val_ids, cfg)
            if self.is_main:
                want = set(self.train_ids)
                present = {n for e in self.cache.info["patients"] if e["id"] in want
                           for n in self.roi_set.names if n not in e.get("missing_rois", ())}
                for msg in lint(self.protocol, present, f"training cache {cfg.data}"):
                    warnings.warn(msg, ProtocolLintWarning, stacklevel=2)
        self.loss_fn = make_loss(cfg, self.roi_set, self.protocol)
        if isinstance(self.loss_fn, torch.nn.Module):
            self.loss_fn.to(self.device)

    def load_train(self) -> list:
        """The training patients in memory, each permuted into the model's axes; records the space."""
        if self.cfg.scale_p > 0 and self.model_config.n_extra:
            raise InputError(SCALED_EXTRA)  # before minutes of loading, as the dataset would after them
        axes = self.orientation()
        recorder = SpaceRecorder(axes)
        oriented = (recorder.add(p) for p in self.cache.patients(self.train_ids))
        arrays = load_arrays(oriented, self.cfg.patch, progress=self.progress,
                             rotate_axis=self.head_feet_axis(axes) if self.cfg.rotate_p > 0 else None,
                             extra=self.model if self.model_config.n_extra else None,
                             reach=1 / (1 - self.cfg.scale_max))
        self.set_space(self.inherit_absent(recorder.space()))
        return arrays

    def inherit_absent(self, space: ModelSpace) -> ModelSpace:
        """A fine-tune's space also lets patients lack what the ``--init`` model's training patients
        lacked (:func:`.init.inherit_absent`); a warning when its voxels are far from --init's."""
        if self.init_ckpt is None:
            return space
        return inherit_absent(space, self.init_ckpt, self.init_transfer, self.roi_set, self.cfg.init)

    def load_val(self) -> list:
        """The validation patients (read by rank 0 only, which validates)."""
        return list(self.val_cache.patients(self.val_ids)) if self.val_cache and self.is_main else []

    def build_dataset(self, train_patients: list) -> CropDataset:
        """The crop dataset over the training patients (one epoch's crops; see :mod:`.dataset`)."""
        cfg = self.cfg
        return CropDataset(train_patients, self.roi_set, cfg.patch,
                           self.steps_per_epoch * cfg.batch * self.world, seed=cfg.seed,
                           target_fraction=cfg.target_fraction, flip_axis=self.space.lr_axis,
                           flip=cfg.flip, rotate_p=cfg.rotate_p,
                           rotate_axis=(self.head_feet_axis(self.space.axes)
                                        if cfg.rotate_p > 0 else None),
                           rotate_step=cfg.rotate_step, shift=cfg.shift, rotate_max=cfg.rotate_max,
                           scale_p=cfg.scale_p, scale_max=cfg.scale_max)

    def initialize(self) -> None:
        """Everything the first epoch needs: device, data, model and optimiser, loss, the patients
        in memory and the crop dataset."""
        cfg = self.cfg
        self.setup_device()
        self.setup_data()
        self.setup_model()
        self.setup_loss()
        self.version = version_info()
        self.t0 = time.time()
        train_patients = self.load_train()
        self.val_patients = self.load_val()
        self.log(f"loaded {len(train_patients)} training / {len(self.val_ids)} validation patients in "
                 f"{time.time() - self.t0:.1f} s ({sum(p.nbytes for p in train_patients) / 1e9:.2f} GB in "
                 "memory)")
        self.steps_per_epoch = cfg.steps_per_epoch or max(
            1, math.ceil(len(train_patients) / (cfg.batch * self.world)))
        cfg.check_freeze_steps(self.steps_per_epoch)
        self.dataset = self.build_dataset(train_patients)

    def write_run_info(self) -> None:
        """RUN/config.json, dataset.json, protocol.json and version.json (rank 0)."""
        if not self.is_main:
            return
        self.run.mkdir(parents=True, exist_ok=True)
        write_json(self.run / "config.json", self.cfg.to_dict())
        run_checks.record_data(self.run, self.cfg)  # dataset.json, val_dataset.json: --resume's record
        if self.protocol is not None:
            write_json(self.run / "protocol.json", self.protocol.model_dump(mode="json"))
        write_json(self.run / "version.json", version_info())

    # ---- model space ------------------------------------------------------------------------
    def orientation(self) -> str:
        """Axis letters training patients are brought into: ``cfg.orientation`` ("PLI" by default,
        "first": the first training patient's); a fine-tuned model keeps its ``--init`` model's."""
        want = self.cfg.orientation
        init = self.init_ckpt
        if init is not None:
            axes = ModelSpace.from_dict(init["space"]).axes
            if want not in (axes, "PLI"):
                raise ModelError(f"--init {self.cfg.init} was trained in axes {axes}; orientation {want!r} "
                                 "would train it on mirrored or transposed arrays")
            return axes
        return want

    def head_feet_axis(self, axes: str) -> int:
        """The axis crops rotate about: ``cfg.head_feet_axis``, else the S-I axis of ``axes`` (the
        letters training patients are permuted into)."""
        if self.cfg.head_feet_axis is not None:
            return self.cfg.head_feet_axis
        if axes.lower() == "first":
            raise ModelError("rotations with orientation 'first' need head_feet_axis "
                             "(--set head_feet_axis=N)")
        return next(j for j, c in enumerate(axes) if c in "SI")

    def set_space(self, space: ModelSpace) -> None:
        """Record the training data's space on the model (and so in every checkpoint); flips run along
        its left-right axis (``cfg.flip_axis`` is deprecated and only checked)."""
        self.space = space
        self.model.space = space
        if self.ema is not None:  # validation predicts with the EMA: it must know the space too
            self.ema.space = space
        self.model_config.flip_axis = space.lr_axis
        if self.cfg.flip_axis is not None and self.cfg.flip_axis != space.lr_axis:
            warnings.warn(f"flip_axis={self.cfg.flip_axis} is deprecated and ignored: the left-right axis "
                          f"of the training data (axes {space.axes}) is axis {space.lr_axis}", stacklevel=2)
        self.log(f"model space: {space.summary()} ({space.patients} patients)")

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights validation and checkpoints' ``model`` use: the EMA when enabled."""
        return self.model if self.ema is None else self.ema

    # ---- checkpoints ------------------------------------------------------------------------
    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        """What a training checkpoint holds after ``epoch`` (see :mod:`dosepred.models.checkpoint`)."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        extra = {} if self.ema is None else {"train_model": self.model.state_dict()}
        if self.roi_transfer is not None:
            extra["roi_transfer"] = self.roi_transfer
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "model_config": self.model_config.to_dict(), "model": self.eval_model.state_dict(), **extra,
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": epoch, "global_step": self.global_step, "steps_per_epoch": self.steps_per_epoch,
                "train_config": self.cfg.to_dict(), "rng": rng, "best": self.best,
                "world_size": self.world, "version_info": self.version, "space": self.space.to_dict()}

    def save_checkpoint(self, epoch: int, is_best: bool) -> None:
        """best.pt when ``is_best``, epoch_K.pt every ``save_every`` epochs, then last.pt (the old one
        rotated to prev.pt), each atomically, rank 0 only. last.pt last: an epoch is done only once all its
        files are, so after a failure between them (full disk, kill -9) ``--resume`` redoes the epoch."""
        if not self.is_main:
            return
        st = self.checkpoint_state(epoch)
        if is_best:
            checkpoint.save_checkpoint(st, self.ckpt_dir / "best.pt")
        if self.cfg.save_every and epoch % self.cfg.save_every == 0:
            checkpoint.save_checkpoint(st, self.ckpt_dir / f"epoch_{epoch}.pt")
        checkpoint.save_rotating(st, self.ckpt_dir / "last.pt", self.ckpt_dir / "prev.pt",
                                 rotate=not self.last_damaged)
        self.last_damaged = False

    def restore_checkpoint(self) -> int:
        """``--resume``: load last.pt (or prev.pt when last.pt is unreadable), check that it belongs
        to this run, restore weights, optimiser, scaler, RNG, step and best; return its epoch."""
        ck, path, self.last_damaged = checkpoint.load_resumable(
            self.ckpt_dir / "last.pt", self.ckpt_dir / "prev.pt", map_location=self.device)
        # the axes first: the model's flip axis follows them, so another orientation is named as such
        axes = ModelSpace.from_dict(ck["space"]).axes
        if axes != self.space.axes:
            raise ModelError(f"--resume: {path} was trained on data in axis order {''.join(axes)}, the data "
                             f"now gives {''.join(self.space.axes)}; resume with the same cache (or one "
                             "reoriented to it)")
        mc = ModelConfig.from_dict(dict(ck["model_config"])).to_dict()  # fields added since: defaults
        if mc != self.model_config.to_dict():
            diff = {k: (mc.get(k), v) for k, v in self.model_config.to_dict().items() if mc.get(k) != v}
            raise ModelError(f"--resume: {path} was trained with a different model ({diff})")
        old = ck.get("train_config", {})
        # a resumed run continues the same computation: runs from before freeze_steps / cpu_bf16 had 0 / False
        for k in ("seed", "batch", "loss", "loss_options", "data", "freeze_steps", "cpu_bf16"):
            was = old.get(k, {"freeze_steps": 0, "cpu_bf16": False, "loss_options": {}}.get(k))
            same_data = k == "data" and run_checks.same_data(was, self.cfg.data, self.run)
            if was != getattr(self.cfg, k) and not same_data:
                raise InputError(f"--resume: {k} was {was!r} in {path}, now {getattr(self.cfg, k)!r}")
        check_resumed_data(ck, path, self.space, self.cfg)
        run_checks.check_resumed_validation(ck, path, self.cfg)
        run_checks.check_resumed_init(ck, path, self.cfg)
        check_resumed_protocol(old, path, self.run, self.protocol, self.roi_set, self.cfg)
        if self.ema is not None:
            if "train_model" not in ck:
                raise InputError(f"--resume: {path} holds no EMA (trained without ema_decay); "
                                 "resume without it or start a new run")
            self.model.load_state_dict(ck["train_model"])
            self.ema.load_state_dict(ck["model"])
        else:
            self.model.load_state_dict(ck.get("train_model", ck["model"]))
        self.optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["rng"]["torch"].cpu())
        if "cuda" in ck["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(ck["rng"]["cuda"].cpu(), self.device)
        self.global_step = int(ck["global_step"])
        self.best = ck.get("best")
        return int(ck["epoch"])

    # ---- training steps ---------------------------------------------------------------------
    def learning_rate(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (a pure function of it: see :func:`lr_at`)."""
        return lr_at(self.cfg, step, self.steps_per_epoch)

    def train_step(self, batch: dict[str, torch.Tensor], lr: float) -> dict[str, float]:
        """One optimiser step on ``batch`` at learning rate ``lr`` (forward, loss, backward, clip,
        step, EMA update); returns the loss parts as floats, ``total`` among them."""
        dev = self.device
        nb = dev.type == "cuda"
        ct = batch["ct"].to(dev, non_blocking=nb)
        dose = batch["dose"].to(dev, non_blocking=nb)
        mask = batch["mask"].to(dev, non_blocking=nb)
        codes = batch["codes"].to(dev, non_blocking=nb)
        spacing = batch["spacing"].to(dev)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        with torch.autocast(dev.type, dtype=self.amp_dtype, enabled=self.amp):
            pred = self.net(ct, codes, mask, spacing, batch.get("extra"))
        total, parts = self.loss_fn(pred.float(), dose, codes, mask, spacing)
        if not torch.isfinite(total):
            raise run_checks.diverged(total.item(), self.global_step, self.epoch - 1 if self.global_step
                                      and not self.epoch_steps else None)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.global_step < self.cfg.freeze_steps:
            for q in self.held:
                q.grad = None
        self.scaler.unscale_(self.optimizer)  # (nothing without float16 loss scaling)
        run_checks.check_gradient(self.model, self.cfg.grad_clip, self.scaler, total, self.global_step)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            ema_update(self.ema, self.model, ema_decay_at(self.cfg.ema_decay, self.global_step))
        out = {k: float(v) for k, v in parts.items()}
        out["total"] = float(total.detach())
        return out

    def loader(self, epoch: int, start_step: int = 0):
        """The batches of ``epoch`` for this rank (crops are a pure function of seed, epoch, index)."""
        self.dataset.set_epoch(epoch)
        sampler = RankSampler(self.steps_per_epoch, self.cfg.batch, self.rank, self.world, start_step)
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.cfg.batch, sampler=sampler,
                                             num_workers=self.cfg.workers, worker_init_fn=leave_stops,
                                             pin_memory=self.device.type == "cuda", drop_last=False)
        with starting_workers():  # a stop reaching the workers is the trainer's (errors.leave_stops)
            return iter(loader)

    def reduce_means(self, sums: dict[str, float], n: int | dict[str, int]) -> dict[str, float]:
        """Per-key means of ``sums`` over ``n`` steps (``n[key]``: a part only some steps give, such as
        a CDM loss's ``cdm_target_gy``), over all DDP ranks (:func:`.logging.mean_parts`)."""
        return mean_parts(sums, n, self.world)

    # ---- the loop and its hooks -------------------------------------------------------------
    def on_train_start(self) -> int:
        """:meth:`initialize`, restore the checkpoint on resume (a new run may not overwrite one),
        write the run info, open the logger; returns the epoch training continues after (0: new)."""
        cfg = self.cfg
        self.initialize()
        self.global_step = 0
        self.best: dict[str, Any] | None = None
        self.last_row: dict[str, Any] = {}
        start_epoch = 0
        if self.resume:
            start_epoch = self.restore_checkpoint()
            self.log(f"resumed {self.run} at epoch {start_epoch} (step {self.global_step})")
        elif self.is_main and (self.ckpt_dir / "last.pt").exists():
            raise InputError(f"{self.run} already holds a training run; use --resume to continue it or "
                             "choose another --out")
        self.write_run_info()
        self.logger.open(start_epoch if self.resume else None, self.global_step if self.resume else None)
        if cfg.cpu_bf16 and self.device.type != "cpu":
            self.log(f"--cpu-bf16 does not apply on {self.device} (--amp sets its mixed precision)")
        if self.amp and self.device.type == "cpu" and cpu_has_bf16() is False:
            self.log("warning: --cpu-bf16 on a CPU without AVX512-BF16 or AMX: bfloat16 is emulated "
                     "there and steps may be many times slower than float32 (`python -m "
                     "dosepred.bench.train_step --variants fp32,bf16` measures it)")
        amp_word = "" if not self.amp else " (bfloat16 autocast)" if self.device.type == "cpu" else " (AMP)"
        self.log(f"training {cfg.loss} on {self.device}{amp_word}: "
                 f"epochs {start_epoch + 1}"
                 f"..{cfg.epochs}, {self.steps_per_epoch} steps x batch {cfg.batch}"
                 f"{f' x {self.world} processes' if self.world > 1 else ''}, patch {list(cfg.patch)}")
        self.logger.start_progress(cfg.epochs * self.steps_per_epoch, start_epoch * self.steps_per_epoch,
                                   self.progress)
        return start_epoch

    def on_epoch_start(self, epoch: int) -> None:
        """Training mode and empty sums for ``epoch``."""
        self.net.train()
        self.epoch = epoch
        self.epoch_sums: dict[str, float] = {}
        self.epoch_counts: dict[str, int] = {}  # steps that gave each part
        self.epoch_steps = 0
        self.epoch_t0 = time.time()

    def on_train_step_end(self, parts: dict[str, float]) -> None:
        """After :meth:`train_step`: count the step, add its loss parts to the epoch's sums, progress."""
        self.global_step += 1
        self.epoch_steps += 1
        for k, v in parts.items():
            self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
            self.epoch_counts[k] = self.epoch_counts.get(k, 0) + 1
        self.logger.step(f"epoch {self.epoch} loss {self.epoch_sums['total'] / self.epoch_steps:.4f}")

    def on_train_epoch_end(self, epoch: int) -> dict[str, Any]:
        """The epoch's row: step, lr, mean loss parts (over all ranks), seconds per step."""
        train_time = time.time() - self.epoch_t0
        n = self.epoch_steps
        means = self.reduce_means(self.epoch_sums, self.epoch_counts)
        row: dict[str, Any] = {"epoch": epoch, "step": self.global_step, "lr": self.lr,
                               "train_loss": means.get("total", float("nan"))}
        row.update({f"train_{k}": v for k, v in means.items() if k != "total"})
        row["sec_per_step"] = train_time / max(1, n)
        return row

    def validation_due(self, epoch: int) -> bool:
        """Whether ``epoch`` validates: every ``val_every`` epochs and after the last."""
        return bool(self.val_ids) and (epoch % self.cfg.val_every == 0 or epoch == self.cfg.epochs)

    def validation_step(self) -> dict[str, float]:
        """Scores of the validation patients (rank 0): whole-grid prediction with the weights
        checkpoints hold (:attr:`eval_model`), scored by :func:`validate`. Lower is better for the
        score :meth:`selection_value` picks."""
        return validate(self.eval_model, self.val_patients, self.protocol, self.cfg, self.device,
                        epoch=self.epoch)

    def selection_value(self, scores: dict[str, float]) -> float:
        """The number best.pt minimises (``cfg.select``)."""
        return run_checks.select_value(scores, self.cfg.select)

    def select_best(self, epoch: int, scores: dict[str, float]) -> bool:
        """Whether ``epoch`` (validated with ``scores``) is the best so far; records it as :attr:`best`."""
        value = self.selection_value(scores)
        if value != value:  # NaN: check_selectable refuses what would give it; never a best.pt
            raise InputError(f"validation after epoch {epoch}: the {self.cfg.select} score is NaN ({scores})")
        if self.best is None or value < self.best["value"]:
            self.best = {"epoch": epoch, "select": self.cfg.select, "value": value, **scores}
            return True
        return False

    def on_validation_epoch(self, epoch: int, row: dict[str, Any]) -> bool:
        """Validate when due (rank 0), adding ``val_*`` columns to ``row``; returns whether the epoch
        is the best so far (without validation every epoch is: best.pt = last.pt)."""
        if not self.val_ids:
            return True
        row.update({f"val_{k}": "" for k in self.val_keys})  # fixed CSV columns in every row
        if not (self.validation_due(epoch) and self.is_main):
            return False
        tv = time.time()
        scores = self.validation_step()
        row.update({f"val_{k}": v for k, v in scores.items()})
        row["val_sec"] = time.time() - tv
        return self.select_best(epoch, scores)

    def on_epoch_end(self, epoch: int, row: dict[str, Any], is_best: bool) -> None:
        """Record the row (metrics.csv, TensorBoard, the epoch line), then save the checkpoints (last.pt
        last: a failure before it has ``--resume`` redo the epoch, whose row it drops and writes anew)."""
        row["time_s"] = time.time() - self.t0
        self.logger.epoch(row, is_best, self.global_step)
        self.save_checkpoint(epoch, is_best)
        self.last_row = row

    def should_stop(self, epoch: int) -> bool:
        """Whether this process ends after ``epoch`` (``stop_after``: a job slice; --resume continues)."""
        cfg = self.cfg
        if cfg.stop_after is not None and epoch >= cfg.stop_after and epoch < cfg.epochs:
            self.log(f"stopping after epoch {epoch} (--stop-after); continue with --resume")
            return True
        return False

    def barrier(self) -> None:
        """Wait for every DDP rank (nothing with one process)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def on_train_end(self) -> None:
        """Close the progress and TensorBoard (runs also when training failed)."""
        self.logger.close(self.last_row)

    def summary(self) -> dict[str, Any]:
        """What :meth:`fit` returns: run folder, epochs, steps, best validation, the last row."""
        return {"run": str(self.run), "epochs": self.cfg.epochs, "global_step": self.global_step,
                "best": self.best, "last": self.last_row}

    def fit(self) -> dict[str, Any]:
        """Train (see the class docstring for the steps); returns :meth:`summary`."""
        start_epoch = self.on_train_start()
        try:
            for epoch in range(start_epoch + 1, self.cfg.epochs + 1):
                self.on_epoch_start(epoch)
                for batch in self.loader(epoch):
                    self.lr = self.learning_rate(self.global_step)
                    parts = self.train_step(batch, self.lr)
                    self.on_train_step_end(parts)
                row = self.on_train_epoch_end(epoch)
                is_best = self.on_validation_epoch(epoch, row)
                self.on_epoch_end(epoch, row, is_best)
                if self.should_stop(epoch):
                    break
                self.barrier()
        finally:
            self.on_train_end()
        return self.summary()


def train(cfg: TrainConfig, resume: bool = False, log: Log | None = None, progress: bool | None = None
          ) -> dict[str, Any]:
    """Train per ``cfg``; returns a summary (run folder, steps, best validation)."""
    return Trainer(cfg, resume=resume, log=log, progress=progress).fit()
