"""The seeded synthetic patient the step benchmarks (``bench.train_step``, ``bench.networks``) train on."""

from __future__ import annotations

import torch


def synthetic_batch(size: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded synthetic patient: a body of soft tissue, a target sphere, an OAR, a dose falling off."""
    g = torch.Generator().manual_seed(seed)
    ax = torch.linspace(-1, 1, size)
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    r = (x ** 2 + y ** 2 + z ** 2).sqrt()
    body = r < 0.9
    ct = torch.where(body, 40.0, -1000.0) + 20 * torch.randn(size, size, size, generator=g)
    codes = torch.zeros(size, size, size, dtype=torch.int32)
    codes[((x - 0.2) ** 2 + y ** 2 + z ** 2).sqrt() < 0.3] |= 1 << 9  # PTV70 (bit 9 of the OpenKBP set)
    codes[((x + 0.4) ** 2 + y ** 2 + z ** 2).sqrt() < 0.2] |= 1 << 2  # a parotid
    dose = 70 * torch.exp(-((x - 0.2) ** 2 + y ** 2 + z ** 2).sqrt() / 0.4) * body
    mask = body.float()
    return {k: v[None].to(device) for k, v in
            {"ct": ct[None], "codes": codes, "mask": mask[None], "dose": dose[None].float()}.items()}
