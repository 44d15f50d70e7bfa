"""Inference: load a trained model, predict whole-grid doses, write them as OpenKBP CSV, NIfTI or RTDOSE.

A model is given as

- a run folder (``RUN/checkpoints/best.pt``, else ``RUN/checkpoints/last.pt``),
- a checkpoint file (``*.pt`` written by the trainer or by :func:`export_model`),
- a released model folder (``models/NAME/`` holding ``model.pt``, ``config.json``, ``README.md``).

Whole-grid prediction uses MONAI's ``sliding_window_inference`` with windows of the training patch
size (overlap 0.5, gaussian blending): instance normalisation makes a crop-trained network depend on
its field of view, so it is always run on windows of the size it was trained on.

Checkpoints hold tensors and plain metadata only and are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .models import ModelConfig, ModelError, build_model, check_roi_set
from .patient import Patient
from .roi import to_torch

CHECKPOINT_FORMAT = "dosepred-checkpoint"
MODEL_FORMAT = "dosepred-model"
FORMATS = ("openkbp", "nifti", "dicom", "cache")


def resolve_model_path(path: str | os.PathLike) -> Path:
    """Run folder / model folder / checkpoint file -> the checkpoint file to load."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for cand in (p / "model.pt", p / "checkpoints" / "best.pt", p / "checkpoints" / "last.pt"):
            if cand.is_file():
                return cand
        raise FileNotFoundError(f"{p} holds no model: expected model.pt (a released model) or "
                                "checkpoints/best.pt / checkpoints/last.pt (a training run)")
    raise FileNotFoundError(f"model {p} does not exist (give a run folder, a model folder or a .pt file)")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a dosepred checkpoint or exported model (weights_only) and check what it is."""
    path = resolve_model_path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for foreign files
        raise ModelError(f"{path} is not a readable dosepred checkpoint: {str(e).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (CHECKPOINT_FORMAT, MODEL_FORMAT):
        raise ModelError(f"{path} is not a dosepred checkpoint (no format tag {CHECKPOINT_FORMAT!r})")
    if "model_config" not in ckpt or "model" not in ckpt:
        raise ModelError(f"{path}: checkpoint lacks model_config or model weights")
    ckpt["path"] = str(path)
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], device: Any = "cpu") -> torch.nn.Module:
    cfg = ModelConfig.from_dict(dict(ckpt["model_config"]))
    model = build_model(cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"{ckpt.get('path', 'checkpoint')}: weights do not fit the recorded architecture "
                         f"({str(e).splitlines()[0]})") from None
    return model.to(device).eval()


def load_model(path: str | os.PathLike, device: Any = "cpu") -> torch.nn.Module:
    """A ready-to-run model (eval mode) from a run folder, model folder or checkpoint."""
    return model_from_checkpoint(load_checkpoint(path), device)


def resolve_device(device: str | None = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


@torch.no_grad()
def predict_dose(model: torch.nn.Module, patient: Patient, device: Any = None, overlap: float = 0.5,
                 mode: str = "gaussian", sw_batch: int = 1, amp: bool = False,
                 tta: bool = False) -> np.ndarray:
    """Whole-grid dose (Gy, float32, the patient's shape) by sliding windows of the training patch.

    ``tta=True`` averages it with the prediction of the patient mirrored along the model's
    left-right axis (``config.flip_axis``, Left/Right ROI bits swapped, as in training), mirrored
    back: test-time augmentation, twice the time.
    """
    from monai.inferers import sliding_window_inference

    net = model.module if hasattr(model, "module") else model
    cfg: ModelConfig = net.config
    check_roi_set(cfg, patient.roi_set, f"patient {patient.id}")
    device = torch.device(device) if device is not None else next(net.parameters()).device
    was_training = net.training
    net.eval()
    ct = torch.from_numpy(patient.ct).to(device)[None, None]
    codes = to_torch(patient.roi_codes, device)[None]
    mask = torch.from_numpy(np.asarray(patient.possible_dose_mask)).to(device)[None, None]
    roi = tuple(cfg.patch)

    def windows(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            return sliding_window_inference(x, roi, sw_batch, net.from_input, overlap=overlap, mode=mode,
                                            padding_mode="replicate").float()

    dose = windows(net.assemble(ct, codes, mask))
    if tta:
        if cfg.flip_axis is None:
            raise ValueError("test-time flipping needs the model's flip_axis (its config has none)")
        from .training.dataset import lr_pairs, swap_bits

        ax = int(cfg.flip_axis)
        codes_f = swap_bits(np.ascontiguousarray(np.flip(patient.roi_codes, ax)), lr_pairs(patient.roi_set))
        xf = net.assemble(ct.flip(ax + 2), to_torch(codes_f, device)[None], mask.flip(ax + 2))
        dose = 0.5 * (dose + windows(xf).flip(ax + 2))
    dose = dose * mask.float()
    if was_training:
        net.train()
    return dose[0, 0].cpu().numpy().astype(np.float32)


def write_prediction(patient: Patient, dose: np.ndarray, out: str | os.PathLike,
                     fmt: str = "openkbp", *, dose_spacing: float | None = None,
                     model_name: str | None = None) -> Path:
    """Write one predicted dose; returns the path written. ``dose_spacing`` (mm) and ``model_name``
    apply to ``fmt="dicom"`` (RTDOSE grid, SeriesDescription; see :func:`dosepred.io.dicom.write_rtdose`)."""
    out = Path(out)
    if fmt == "openkbp":
        from .io.openkbp import write_dose_csv

        path = out / f"{patient.id}.csv"
        write_dose_csv(path, dose, patient.possible_dose_mask)
        return path
    if fmt == "nifti":
        try:
            from .io.nifti import write_dose
        except ImportError:
            raise ValueError("--format nifti needs dosepred.io.nifti.write_dose, which this version "
                             "lacks; use --format openkbp") from None
        path = out / f"{patient.id}.nii.gz"
        out.mkdir(parents=True, exist_ok=True)
        write_dose(patient, dose, path)
        return path
    if fmt == "dicom":
        try:
            from .io.dicom import write_rtdose
        except ImportError:
            raise ValueError("--format dicom needs dosepred.io.dicom.write_rtdose, which this version "
                             "lacks; use --format openkbp") from None
        d = out / patient.id
        d.mkdir(parents=True, exist_ok=True)
        res = write_rtdose(patient, dose, d, dose_spacing=dose_spacing, model_name=model_name)
        return Path(res) if res is not None else d
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")


def predict_patients(model: torch.nn.Module, patients: Iterable[Patient], device: Any = None,
                     overlap: float = 0.5, mode: str = "gaussian", amp: bool = False, tta: bool = False
                     ) -> Iterator[tuple[Patient, np.ndarray]]:
    for p in patients:
        yield p, predict_dose(model, p, device, overlap, mode, amp=amp, tta=tta)


def predict_to(model_path: str | os.PathLike, src: str | os.PathLike, out: str | os.PathLike,
               fmt: str = "openkbp", device: str | None = "auto", ids: list[str] | None = None,
               progress: bool = True, on_patient: Callable[[Patient, Path], None] | None = None,
               tta: bool = False, dose_spacing: float | None = None) -> int:
    """Predict every patient of ``src`` (a cache, OpenKBP, NIfTI or DICOM folder) and write them to ``out``.

    ``tta``: average with the left-right mirrored prediction (:func:`predict_dose`). ``dose_spacing``:
    RTDOSE grid spacing in mm for ``fmt="dicom"``.

    ``fmt="cache"`` writes ``out`` as a dosepred cache: each input patient with the predicted dose
    (all or nothing, like every cache write); ``dosepred evaluate`` reads such a prediction fastest.
    """
    from .io.cache import load_patients, write_cache
    from .progress import track

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    dev = resolve_device(device)
    model = load_model(model_path, dev)
    patients = load_patients(src, ids=ids, require_dose=False)
    it = track(patients, description="predicting") if progress else patients
    n = 0
    if fmt == "cache":
        done: list[Patient] = []

        def predicted() -> Iterator[Patient]:
            for p in it:
                yield p.with_dose(predict_dose(model, p, dev, amp=dev.type == "cuda", tta=tta))
                done.append(p)

        try:
            write_cache(predicted(), out, source=f"dosepred predict --model {model_path} --data {src}")
        except ValueError:
            if not done:
                raise ValueError(f"{src} holds no patients to predict") from None
            raise
        for p in done:
            if on_patient is not None:
                on_patient(p, Path(out) / f"{p.id}.npz")
        return len(done)
    for p in it:
        path = write_prediction(p, predict_dose(model, p, dev, amp=dev.type == "cuda", tta=tta), out, fmt,
                                dose_spacing=dose_spacing, model_name=Path(model_path).name)
        n += 1
        if on_patient is not None:
            on_patient(p, path)
    if n == 0:
        raise ValueError(f"{src} holds no patients to predict")
    return n


def export_model(src: str | os.PathLike, out: str | os.PathLike, half: bool = True,
                 description: str = "") -> Path:
    """Write a released model folder: ``model.pt`` (weights, fp16 by default), ``config.json`` and
    ``README.md``."""
    import dosepred

    ckpt = load_checkpoint(src)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: (v.half() if half and v.is_floating_point() else v).contiguous()
               for k, v in ckpt["model"].items()}
    meta = {k: ckpt[k] for k in ("train_config", "epoch", "global_step", "best", "version")
            if k in ckpt}
    obj = {"format": MODEL_FORMAT, "model_config": ckpt["model_config"], "model": weights, **meta}
    tmp = out / ".model.pt.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, out / "model.pt")
    info = {"format": MODEL_FORMAT, "model_config": ckpt["model_config"], "source": str(ckpt["path"]),
            "dosepred_version": dosepred.__version__, **{k: v for k, v in meta.items()}}
    (out / "config.json").write_text(json.dumps(info, indent=2, default=str))
    readme = out / "README.md"
    if not readme.exists():
        mc = ckpt["model_config"]
        tc = ckpt.get("train_config", {}) or {}
        roi_names = ", ".join(r["name"] for r in mc["rois"])
        readme.write_text(
            f"# {out.name}\n\n{description or 'A dosepred 3D U-Net dose-prediction model.'}\n\n"
            f"- architecture: 3D U-Net, base {mc['base']} channels, {mc['levels']} levels, "
            f"{mc['res_units']} residual units, {mc['norm']} norm, patch {mc['patch']}\n"
            f"- ROIs (bit order): {roi_names}\n"
            f"- trained with loss `{tc.get('loss', '?')}` on `{tc.get('data', '?')}` for "
            f"{ckpt.get('epoch', '?')} epochs ({ckpt.get('global_step', '?')} steps)\n"
            f"- best validation: {json.dumps(ckpt.get('best'))}\n\n"
            f"Use: `dosepred predict --model {out} --data <cache or OpenKBP folder> --out DIR`\n")
    return out
