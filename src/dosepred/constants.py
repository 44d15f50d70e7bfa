"""Constants shared by several stages, defined once here and imported where they are used.

- ``HU_MIN``, ``HU_MAX``: the CT window the network reads (HU outside it are clipped), which is
  also the range :func:`dosepred.io.pack.pack_cache` keeps;
- ``HU_SCALE``: the clipped HU are divided by it to form the network's CT channel
  (:func:`dosepred.models.unet.ct_channel`);
- ``AIR_HU`` (-1000): air. The CT value of synthetic patients outside the body and the padding of
  training crops and warps where they leave the stored volume. It is ``HU_MIN``, so padding with it
  reads to the network exactly as any lower value would;
- ``CT_FILL_HU`` (-1024): the CT value a resampled patient gets outside the source's field of view
  (:func:`dosepred.resample.resample_patient`, :func:`dosepred.models.space.resample_into`), the
  usual scanner padding value. Below the window, so the network reads it as ``AIR_HU``; kept apart
  from ``AIR_HU`` because caches and predictions written so far carry it (a cache's CT box is
  the box of voxels that differ from the corner value);
- ``BODY_HU`` (-500): the body threshold. Without a body/external contour the possible-dose mask
  of a DICOM or NIfTI patient, and of a patient predicted without one, is ``CT > BODY_HU`` with
  devices (couch, headrest) removed and each axial slice's holes filled
  (:func:`dosepred.geometry.ct_body`), and prediction crops a patient without a possible-dose mask
  to the box of ``CT > BODY_HU`` (:func:`dosepred.predict.crop_box`).
- ``MAX_DOSE_GY`` (1000): no radiotherapy dose is higher; a dose above it is refused wherever one
  is read (RTDOSE, NIfTI, a scored prediction of any format): it is almost surely in cGy.
- ``MAX_CRITERION_GY`` (200): no clinical criterion of external-beam radiotherapy limits, aims at or
  prescribes a dose above it (head-and-neck prescriptions are 50-80 Gy, hot-spot limits about 110 %
  of them); a protocol's dose limit or goal, ``V<x>Gy`` threshold or prescription above it is
  refused (:mod:`dosepred.protocol.schema`): it is almost surely in cGy (a lens ``Dmax <= 700``
  meant as 7 Gy would otherwise pass every plan).
"""

from __future__ import annotations

HU_MIN, HU_MAX, HU_SCALE = -1000.0, 2000.0, 1000.0
AIR_HU = -1000
CT_FILL_HU = -1024
BODY_HU = -500.0
MAX_DOSE_GY = 1000.0
MAX_CRITERION_GY = 200.0

__all__ = ["AIR_HU", "BODY_HU", "CT_FILL_HU", "HU_MAX", "HU_MIN", "HU_SCALE", "MAX_CRITERION_GY",
           "MAX_DOSE_GY"]
