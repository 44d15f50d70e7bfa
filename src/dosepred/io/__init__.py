"""Readers and writers: OpenKBP CSV, the dosepred cache, DICOM RT, NIfTI. They convert to and from
:class:`dosepred.patient.Patient` and do nothing else."""
