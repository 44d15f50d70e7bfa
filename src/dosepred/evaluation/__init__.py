"""Evaluation of predicted doses against reference plans, in two layers:

- :mod:`dosepred.evaluation.scoring`: the scores and protocol criteria of (reference
  :class:`~dosepred.Patient`, predicted dose) pairs or of :class:`ScoringCase` objects (what scoring
  reads of a patient, :mod:`dosepred.evaluation.case`): :func:`evaluate_patient`,
  :func:`evaluate_case`, :func:`evaluate_cohort`, :class:`CohortResult`. It reads no files.
- :mod:`dosepred.evaluation.pairing`: which prediction belongs to which reference patient, and
  reading both from their sources (a cache, OpenKBP, NIfTI or DICOM reference; a prediction cache or
  folder of files) through :mod:`dosepred.io`: :func:`match_predictions`, :func:`iter_cases` (to
  score: no CT, no full grids where avoidable), :func:`iter_pairs` (whole-grid Patients, e.g. for
  the report).

::

    from dosepred.evaluation import evaluate_cohort, iter_cases, match_predictions

    found, missing = match_predictions("cache/val", "pred")
    result = evaluate_cohort(iter_cases("cache/val", "pred", [i for i, _ in found]), "openkbp-clinical")
    result.summary()   # dose_score, dvh_score, ptv_score, oar_score, criteria_pass_rate, ...
"""

from .pairing import (
    PREDICTION_PATTERNS,
    PREDICTION_READERS,
    find_prediction,
    iter_cases,
    iter_pairs,
    load_references,
    match_predictions,
    read_prediction,
    reference_ids,
)
from .scoring import (
    MAX_DOSE_OUTSIDE_MASK,
    WARN_DOSE_OUTSIDE_MASK_PCT,
    CohortResult,
    CriterionResult,
    MetricValue,
    PatientResult,
    ScoringCase,
    as_dose_array,
    evaluate_case,
    evaluate_cohort,
    evaluate_patient,
)

__all__ = [
    "MAX_DOSE_OUTSIDE_MASK", "PREDICTION_PATTERNS", "PREDICTION_READERS", "WARN_DOSE_OUTSIDE_MASK_PCT",
    "CohortResult", "CriterionResult",
    "MetricValue", "PatientResult", "ScoringCase", "as_dose_array", "evaluate_case", "evaluate_cohort",
    "evaluate_patient", "find_prediction", "iter_cases", "iter_pairs", "load_references", "match_predictions",
    "read_prediction", "reference_ids",
]
