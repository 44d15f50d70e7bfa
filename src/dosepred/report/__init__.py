"""Static, self-contained HTML reports (one ``report.html``, images embedded as base64 PNG).

::

    from dosepred.report import write_report
    write_report("out/report", {"MAE": res_mae, "MAE+CDM": res_cdm}, patients,
                 {"MAE": doses_mae, "MAE+CDM": doses_cdm}, title="MAE vs MAE+CDM")

An evaluation report holds the cohort table (one row per named prediction), a criteria summary, and
per patient a criteria table with a colour key, cumulative DVHs (reference solid, predictions
dashed/dotted, one colour per ROI) and three orthogonal views (:mod:`dosepred.report.views`:
oriented from the patient geometry, edge letters, mm scale bar, isodose lines, ROI contours and
legend, difference with a dead zone, slice sliders in plain JavaScript). For large cohorts use
:class:`ReportWriter`, which renders each patient as it streams past and keeps no volumes. The plan
QA report (:class:`dosepred.qa.report.QAReportWriter`) shares these parts. matplotlib (Agg backend)
and Pillow are imported only here.
"""

from .html import ReportWriter, write_report

__all__ = ["ReportWriter", "write_report"]
