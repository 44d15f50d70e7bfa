"""A spy on the arithmetic of a network (tests of `train --cpu-bf16`, `bench networks --precisions`)."""

import torch


def conv_output_dtypes(monkeypatch) -> set:
    """The set that receives the dtype of every 3D convolution's output from now on (the network's own
    arithmetic: float32, or bfloat16 under autocast); ``monkeypatch`` undoes it after the test."""
    seen: set = set()
    real = torch.nn.Conv3d.forward

    def fwd(self, x):
        y = real(self, x)
        seen.add(y.dtype)
        return y

    monkeypatch.setattr(torch.nn.Conv3d, "forward", fwd)
    return seen
