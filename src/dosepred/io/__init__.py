"""Readers and writers: OpenKBP CSV, the dosepred cache, DICOM RT, NIfTI. They convert to and from
:class:`dosepred.Patient` and do nothing else.

The names below are the public API; the submodules (:mod:`dosepred.io.formats`: the table of formats,
one row per format, which every command looks up; :mod:`dosepred.io.source`: which kind a path is
and opening it; :mod:`dosepred.io.cache`, :mod:`dosepred.io.openkbp`, :mod:`dosepred.io.dicom`,
:mod:`dosepred.io.nifti`: one format each; :mod:`dosepred.io.roi_names`: ROI names and maps;
:mod:`dosepred.io.pack`: the packed transport copy of a cache) hold the rest. Every command's
``SRC`` goes through :func:`open_source` / :func:`load_patients` (a cache, an OpenKBP, NIfTI or DICOM
folder)::

    from dosepred.io import load_patients, write_cache

    patients = list(load_patients("../shared/data/openkbp/sample/train-pats"))
    cache = write_cache(patients, "cache")        # one .npz per patient + dataset.json
    p = cache.load(cache.ids[0])                  # a dosepred.Patient
"""

from .cache import Cache, CacheError, is_cache, write_cache
from .dicom import DicomImportError, iter_dicom_folder, read_dicom_folder, write_dicom, write_rtdose
from .nifti import NiftiFormatError, iter_nifti_folder, read_nifti_folder
from .nifti import read_patient as read_nifti_patient
from .nifti import write_dose as write_nifti_dose
from .nifti import write_patient as write_nifti_patient
from .openkbp import OpenKBPFormatError, is_openkbp_folder, read_dose_csv, write_dose_csv
from .openkbp import read_folder as read_openkbp_folder
from .openkbp import read_patient as read_openkbp_patient
from .openkbp import write_patient as write_openkbp_patient
from .roi_names import RoiMap
from .source import SourceError, load_patients, open_source, source_kind

__all__ = [
    "Cache", "CacheError", "DicomImportError", "NiftiFormatError", "OpenKBPFormatError", "RoiMap",
    "SourceError", "open_source", "source_kind",
    "is_cache", "is_openkbp_folder", "iter_dicom_folder", "iter_nifti_folder", "load_patients",
    "read_dicom_folder", "read_dose_csv", "read_nifti_folder", "read_nifti_patient", "read_openkbp_folder",
    "read_openkbp_patient", "write_cache", "write_dicom", "write_dose_csv", "write_nifti_dose",
    "write_nifti_patient", "write_openkbp_patient", "write_rtdose",
]
