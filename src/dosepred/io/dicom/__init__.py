"""Read and write DICOM RT: CT image series, RTSTRUCT, RTPLAN (prescriptions) and RTDOSE <-> :class:`Patient`.

Coordinates
-----------
Everything is placed by :class:`dosepred.geometry.Geometry` (DICOM patient coordinates, LPS mm).

- **Import**: the array is ``(slice, row, column)``; axis 0 runs along the slice normal
  ``n = row_dir x col_dir`` (slices sorted ascending along it), axis 1 along the column direction
  (second ImageOrientationPatient triple: the direction in which the row index grows), axis 2 along
  the row direction (first triple). ``Patient.geometry`` is
  ``Geometry.from_dicom(ImagePositionPatient of the first slice, ImageOrientationPatient, (slice gap,
  PixelSpacing[0], PixelSpacing[1]))``. ``meta["origin"]``/``meta["orientation"]`` keep the numbers
  as the files hold them (provenance; export writes them back verbatim while the geometry still
  matches them, so DICOM -> cache -> DICOM gives the same ImagePositionPatient/Orientation strings).
- **Export layout** (:func:`export_layout`): DICOM images are planes stacked along their normal,
  so a grid is written as it is when its axis 0 equals ``axis 2 x axis 1`` (what any DICOM series
  reads as) and it either came from DICOM or its axis 0 runs head-feet. Any other grid, e.g. an
  OpenKBP patient ("PLI": axis 2 runs head-feet), is first reoriented, by permutation and flips only
  (no interpolation), to the axial head-first-supine layout **"SPL"**: ImageOrientationPatient
  ``(1,0,0, 0,1,0)``, slices ascending towards the head, rows towards posterior, columns towards the
  patient's left. Sheared grids (non-perpendicular axes) cannot be written as DICOM images.
- CT is HU (RescaleSlope/Intercept applied, rounded to int16).
- **RTDOSE in**: read on its own grid (ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
  GridFrameOffsetVector) and resampled trilinearly in patient coordinates onto the CT grid with
  :func:`dosepred.resample.resample` (exact where the grids coincide); CT voxels outside the dose
  grid get 0 Gy (with a warning when the body is not covered).
- **RTDOSE out** (:func:`write_rtdose`): the written layout's axes, cropped to the box of the
  possible-dose mask and the non-zero dose (plus one voxel), at ``dose_spacing`` or by default at
  ``max(CT spacing, 2.5 mm)`` per axis (a 512x512 CT at 0.98 mm gets a 2.5 mm dose grid: a few MB,
  not 100 MB). ``write_dicom`` writes the patient's own dose on the full CT grid (lossless export).
  Stored as 32-bit integers with the coarsest decimal DoseGridScaling (1e-3 ... 1e-6 Gy) that
  reproduces every float32 value exactly, else ``Dmax / 4e9``.

ROIs and prescriptions
----------------------
- RTSTRUCT contours are rasterised on each CT slice by pixel-centre inclusion with even-odd (XOR)
  filling, so holes and several contours per slice work. Export draws the contours on the 0.5
  iso-line of each mask (marching squares, vertices at half-voxel positions); re-importing them
  reproduces the masks exactly because no edge passes through a voxel centre.
- Kinds come from what the files say: ROI names go through :mod:`dosepred.io.roi_names` (user map,
  then aliases); an unrecognised name takes its kind from RTROIInterpretedType (PTV/CTV/GTV ->
  target, ORGAN/AVOIDANCE -> oar, EXTERNAL -> the body); prescriptions come from the user map, else
  the RTPLAN's DoseReferenceSequence (TargetPrescriptionDose of a TARGET dose reference with a
  ReferencedROINumber; one SITE-level prescription goes to the only target without one, unless another
  target is named for its dose: then it is that one's), else the
  name ("PTV70"). A plan that disagrees with the name wins, with a warning.
- The body/external contour becomes the possible-dose mask (else CT > -500 HU;
  ``meta["possible_dose_mask"]`` says which); on export the possible-dose mask is written back as an
  EXTERNAL ROI named ``External``.

Matching and validation (see docs/formats.md)
---------------------------------------------
An RTSTRUCT joins the CT series it references (else the one with its FrameOfReference); an RTPLAN
the RTSTRUCT it references; an RTDOSE the RTPLAN or RTSTRUCT it references, and only when it
references none present, the one CT series with its FrameOfReference. Rejected with a
:class:`DicomImportError` naming the file and field: frames of reference that disagree across
CT/RTSTRUCT/RTPLAN/RTDOSE, degenerate ImageOrientationPatient, missing or irregular slices, an
RTSTRUCT referencing CT images that are absent, ContourData that is not a list of (x, y, z) triples
or disagrees with NumberOfContourPoints, an RTDOSE without DoseGridScaling, of DoseType ERROR (an
uncertainty; beside a plan dose it is skipped with a warning) or with a GridFrameOffsetVector that does
not match its frames or starts neither at 0 nor, for axial planes, at ImagePositionPatient's z, and
PLAN RTDOSEs of different RTPLANs not all in the folder (how the plans relate cannot be told).
Contours of fewer than 3 points and open contours (OPEN_PLANAR/OPEN_NONPLANAR) enclose no area: they
are ignored with a warning naming the ROI and the count; contours of one ROI that partly overlap on a
slice are combined even-odd with a warning; a contour repeated point for point on its slice is used
once, with a warning. An RTPLAN referencing another RTSTRUCT than the patient's
gives no per-ROI prescriptions (its ROINumbers are that structure set's), with a warning.

This package converts; it does not evaluate, train or decide which ROIs a protocol needs.

Rooms
-----
One module per thing a reader holds in their head; this package's names are the public API.

- :mod:`.scan`: file discovery, CT series and which RTSTRUCT / RTPLAN / RTDOSE go with each,
  patient ids, :func:`is_dicom_folder`;
- :mod:`.ct`: the CT volume and its geometry;
- :mod:`.rtstruct`: ROI bookkeeping checks and the rasterising of contours;
- :mod:`.rtplan`: prescriptions, fractions, which RTDOSE is the patient's (sequential boosts,
  re-plans, partial doses), ROI names and kinds;
- :mod:`.rtdose`: RTDOSE grids, a dose onto the CT grid, matching predicted RTDOSE files;
- :mod:`.folder`: the folder API (:func:`scan_dicom_folder`, :func:`read_dicom_folder`, ...);
- :mod:`.export`, :mod:`.write`, :mod:`.write_dose`: the export layout and file plumbing, the CT
  series and RTSTRUCT (:func:`write_dicom`), RTDOSE (:func:`write_rtdose`);
- ``_common``: the SOP classes, tolerances, error and warning classes, checked header fields.
"""

from ._common import (
    CT_STORAGE,
    FORMAT_NAME,
    POS_TOL,
    RTDOSE_STORAGE,
    RTPLAN_STORAGE,
    RTSTRUCT_STORAGE,
    SPACING_REL,
    DicomImportError,
    DicomWarning,
)
from .export import EXPORT_AXES, export_layout
from .folder import DicomFolder, iter_dicom_folder, read_dicom_folder, scan_dicom_folder
from .rtdose import RtDoseInfo, dose_on_grid, match_rtdose, read_rtdose, rtdose_grid, scan_rtdoses
from .rtplan import plan_prescriptions
from .scan import files_under, headerless_files, is_dicom_folder
from .write import EXTERNAL_NAME, STUDY_COMPONENT, mask_contours, write_dicom
from .write_dose import DOSE_SPACING, DVH_BIN_GY, dose_grid, dose_scaling, spanning_grid, write_rtdose

__all__ = [
    "CT_STORAGE", "DOSE_SPACING", "DVH_BIN_GY", "EXPORT_AXES", "EXTERNAL_NAME", "FORMAT_NAME", "POS_TOL",
    "RTDOSE_STORAGE", "RTPLAN_STORAGE", "RTSTRUCT_STORAGE", "SPACING_REL", "STUDY_COMPONENT", "DicomFolder",
    "DicomImportError", "DicomWarning", "RtDoseInfo", "dose_grid", "dose_on_grid", "dose_scaling",
    "export_layout", "files_under", "headerless_files", "is_dicom_folder", "iter_dicom_folder",
    "mask_contours", "match_rtdose", "plan_prescriptions", "read_dicom_folder", "read_rtdose", "rtdose_grid",
    "scan_dicom_folder", "scan_rtdoses", "spanning_grid", "write_dicom", "write_rtdose",
]
