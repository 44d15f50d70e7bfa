"""What a small full-resolution head would cost per training step on the CPU (issue 24, round 18).

usage: python scripts/bench_full_res_head.py [--steps 4]

The released network (MONAI UNet channels 16,64,64,128 with the coarse branch 128,128,256) ends in one
transposed convolution from the first level (half resolution) to the full grid: nothing nonlinear
happens at full resolution. A head would widen that convolution to 1 + K outputs and add
``conv(H, 1, 1)(act(norm(conv(C + K + 1, H, k)([x, out]))))`` (last convolution zero) to the first
output. This prototype times forward + MAE + backward + AdamW of a 128^3 volume, one thread, the
release and each head (K, H, kernel k, with or without instance norm + PReLU; best of the timed steps
after one warm-up), and prints each against the release measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.nn import functional as F

from dosepred.models.unet import ModelConfig, _last_conv, build_model

CFG = ModelConfig(channels=[16, 64, 64, 128], coarse=[128, 128, 256], res_units=0, patch=(128, 128, 128))
HEADS = [None, (2, 4, 1, False), (4, 8, 1, False), (4, 8, 1, True), (8, 16, 1, True), (4, 8, 3, True)]


class Head(nn.Module):
    def __init__(self, cin: int, k: int, h: int, ks: int, norm: bool) -> None:
        super().__init__()
        self.c1 = nn.Conv3d(cin + k + 1, h, ks, padding=ks // 2)
        self.n = nn.InstanceNorm3d(h, affine=True) if norm else nn.Identity()
        self.a = nn.PReLU() if norm else nn.ReLU(inplace=True)
        self.c2 = nn.Conv3d(h, 1, 1)
        nn.init.zeros_(self.c2.weight)
        nn.init.zeros_(self.c2.bias)

    def forward(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return self.c2(self.a(self.n(self.c1(torch.cat([x, f], 1)))))


def step_time(head: tuple[int, int, int, bool] | None, steps: int) -> tuple[float, int]:
    torch.manual_seed(0)
    m = build_model(CFG)
    extra: nn.Module | None = None
    if head is not None:
        k = head[0]
        last = _last_conv(m.net)
        wide = nn.ConvTranspose3d(last.in_channels, 1 + k, last.kernel_size, last.stride, last.padding,
                                  output_padding=last.output_padding)
        for parent in m.net.modules():
            for name, child in parent.named_children():
                if child is last:
                    setattr(parent, name, wide)
        extra = Head(CFG.in_channels, *head)
    params = list(m.parameters()) + (list(extra.parameters()) if extra is not None else [])
    opt = torch.optim.AdamW(params, 1e-4)
    x = torch.randn(1, CFG.in_channels, 128, 128, 128)
    y = torch.rand(1, 1, 128, 128, 128)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        out = m.net(x)
        if extra is not None:
            out = out[:, :1] + extra(x, out)
        loss = F.l1_loss(F.softplus(out), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return min(times[1:]), sum(p.numel() for p in params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(1)
    ref = None
    for head in HEADS:
        s, n = step_time(head, a.steps)
        ref = ref or s
        what = ("release" if head is None else
                f"K={head[0]} H={head[1]} kernel {head[2]} {'norm+PReLU' if head[3] else 'ReLU'}")
        print(f"{what:32s} {n / 1e6:6.3f} M  {s:6.2f} s/step  {s / ref:5.2f} x", flush=True)


if __name__ == "__main__":
    main()
