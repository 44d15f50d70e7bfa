"""Static HTML evaluation reports: ``report.html`` plus PNG images in one folder, readable offline.

::

    from dosepred.report import write_report
    write_report("out/report", {"MAE": res_mae, "MAE+CDM": res_cdm}, patients,
                 {"MAE": doses_mae, "MAE+CDM": doses_cdm}, title="MAE vs MAE+CDM")

A report holds the cohort table (one row per named prediction), a criteria summary, and per
patient a criteria table (pass green, fail red), cumulative DVHs (reference solid, predictions
dashed/dotted, one colour per ROI) and an axial dose slice with contours. For large cohorts use
:class:`ReportWriter`, which renders each patient as it streams past and keeps no volumes.
matplotlib (Agg backend) is imported only here.
"""

from .html import ReportWriter, write_report

__all__ = ["ReportWriter", "write_report"]
