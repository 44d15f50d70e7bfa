"""Dose-prediction networks: a 3D U-Net over CT, prescription map, OAR bits and the possible-dose mask."""

from .unet import ARCH, DoseUNet, ModelConfig, ModelError, build_model, check_roi_set

__all__ = ["ARCH", "DoseUNet", "ModelConfig", "ModelError", "build_model", "check_roi_set"]
