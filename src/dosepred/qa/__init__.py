"""Plan QA: clinical plans against the dose a model predicts as achievable, with calibrated intervals.

::

    from dosepred.qa import calibrate, run_qa
    calibrate("models/m", "validation-cache", "openkbp-clinical")   # writes models/m/calibration.json
    result = run_qa("models/m", "plans/", "openkbp-clinical", coverage=0.9, report="qa-out")

The rooms, each importing only those listed before it (docs/qa.md explains the method):

- :mod:`~dosepred.qa.families`: metric families (what is pooled), which end of a metric is better,
  :class:`~dosepred.qa.families.Unit` (one patient and criterion);
- :mod:`~dosepred.qa.conformal`: split-conformal maths (numpy): quantile rules, interval offsets,
  a family fitted on units (:class:`~dosepred.qa.conformal.Family`), the interval of a prediction;
- :mod:`~dosepred.qa.crossval`: cross-validation of the methods and the choice of one per family;
- :mod:`~dosepred.qa.band`: the report's calibrated DVH band;
- :mod:`~dosepred.qa.calibration`: ``calibration.json`` as a typed, versioned record
  (:class:`Calibration`, :func:`load_calibration`, :func:`write_calibration`);
- :mod:`~dosepred.qa.calibrating`: computing a calibration from a model and patients with plan doses
  (:func:`calibrate`);
- :mod:`~dosepred.qa.result`: flags and the results of a criterion, plan and cohort (the qa JSON);
- :mod:`~dosepred.qa.report`: the HTML report;
- :mod:`~dosepred.qa.check`: the checker (:class:`QAChecker`, :func:`run_qa`).

Importing the package imports none of them: the names of ``__all__`` are imported on first use,
so that ``dosepred.qa.conformal`` stays numpy-only when imported alone.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

#: Public name -> the module that defines it (imported on first access).
_LAZY = {
    "FAMILIES": ".families", "lower_is_better": ".families", "metric_family": ".families",
    "Calibration": ".calibration", "CalibrationError": ".calibration", "load_calibration": ".calibration",
    "write_calibration": ".calibration", "calibrate": ".calibrating",
    "FLAG_BETTER": ".result", "FLAG_COVERAGE_BELOW": ".result", "FLAG_HOT_ABOVE": ".result",
    "FLAG_OAR_BELOW": ".result", "FLAG_NOT_CONTOURED": ".result", "FLAG_OAR_ABOVE": ".result",
    "FLAG_UNCALIBRATED": ".result",
    "IMPROVEMENT_FLAGS": ".result", "NOTE_GRID": ".result", "NOTE_VOLUME": ".result",
    "CriterionQA": ".result", "PatientQA": ".result", "QAResult": ".result", "flags_for": ".result",
    "QAReportWriter": ".report",
    "QAChecker": ".check", "QAError": ".check", "contoured": ".check", "open_plans": ".check",
    "run_qa": ".check", "to_roi_set": ".check",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
