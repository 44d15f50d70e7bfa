"""dosepred: 3D dose prediction for head-and-neck radiotherapy with clinical DVH metric losses.

Conventions (stated once, used everywhere):

- Arrays keep the source's axis order; ``spacing`` is mm per array axis.
- CT in HU (int16), dose in Gy (float32), volumes in cc, percentages 0-100.
- ROIs travel as one unsigned integer volume of bit-mask codes: bit k set <=> voxel in ROI k of
  the dataset's :class:`RoiSet` (see :mod:`dosepred.roi`).
- Tensors are (B, C, *spatial).

Public API (every ``dosepred`` command is a thin call into these)::

    import dosepred

    patients = list(dosepred.load_patients("../shared/data/openkbp/sample/train-pats"))
    model = dosepred.load_model("models/openkbp-mae-cdm")
    pairs = [(p, dosepred.predict_dose(model, p)) for p in patients]
    result = dosepred.evaluate_cohort(pairs, "openkbp-clinical")
    print(result.summary())

- data: :class:`Patient`, :class:`RoiSet`, :mod:`dosepred.io` (:func:`load_patients`,
  :func:`write_cache`, :class:`Cache`, OpenKBP / DICOM / NIfTI readers and writers),
  :func:`make_cohort` (synthetic patients);
- models: :func:`load_model` (:mod:`dosepred.models.checkpoint`), :func:`predict_dose`,
  :func:`predict_to` (:mod:`dosepred.predict`), :class:`InferenceOptions` (how to predict, e.g.
  ``dosepred.predict_dose(model, p, dosepred.InferenceOptions(tta=False))``; :mod:`dosepred.inference`);
- evaluation: :func:`load_protocol`, :func:`evaluate_patient`, :func:`evaluate_cohort`,
  :class:`CohortResult` (:mod:`dosepred.evaluation`);
- training: :class:`TrainConfig`, :func:`train`, :func:`build_loss` (:mod:`dosepred.training`,
  :mod:`dosepred.losses`).
- errors: :class:`DosepredError`, the base of everything a user can cause (the CLI prints it as one
  line, exit code 2), :class:`InputError` for bad input, :class:`UnknownNameError` for a name not
  found (:mod:`dosepred.errors`).

Names other than :class:`Patient`, :class:`Roi` and :class:`RoiSet` are imported on first use, so
``import dosepred`` stays light (torch is loaded only when a model function is used).
"""

from __future__ import annotations

from ._lazy import lazy_attributes
from .patient import Patient, Roi, RoiSet

__version__ = "0.1.0"

#: Public name -> module that defines it (imported on first access).
_LAZY = {
    "Cache": ".io.cache", "load_patients": ".io.source", "write_cache": ".io.cache",
    "make_cohort": ".synth",
    "load_model": ".models.checkpoint", "predict_dose": ".predict", "predict_to": ".predict",
    "InferenceOptions": ".inference",
    "Protocol": ".protocol", "load_protocol": ".protocol",
    "CohortResult": ".evaluation", "PatientResult": ".evaluation", "evaluate_cohort": ".evaluation",
    "evaluate_patient": ".evaluation",
    "TrainConfig": ".training", "train": ".training", "build_loss": ".losses",
    "distance_falloff": ".baseline",
    "DosepredError": ".errors", "InputError": ".errors", "UnknownNameError": ".errors",
}

__all__ = ["Patient", "Roi", "RoiSet", *_LAZY, "__version__"]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
