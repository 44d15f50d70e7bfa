"""Helpers of the tests that build tiny models from a run (test_cascade, test_coarse): the tiny
architecture, a trainer set up as far as its model, and seeded random network inputs."""

import torch

from dosepred.training import Trainer

#: a 2-level, 4-channel U-Net on 16^3 crops: a training step takes milliseconds
TINY = dict(patch=(16, 16, 16), base=4, levels=2, res_units=0, batch=1, threads=1, loss="mae")


def ready(cfg, log=None):
    """A Trainer for ``cfg`` set up as far as its model (device, data, model and --init weights);
    ``log`` receives its log lines when given."""
    t = Trainer(cfg, progress=False, log=log)
    t.setup_device()
    t.setup_data()
    t.setup_model()
    return t


def random_inputs(seed=0, size=16):
    """Seeded (ct, codes, mask) of one ``size``^3 patient: HU, 10-bit ROI codes, a mask of ~80 %."""
    g = torch.Generator().manual_seed(seed)
    ct = torch.randint(-1000, 1500, (1, 1, size, size, size), generator=g).float()
    codes = torch.randint(0, 2 ** 10, (1, size, size, size), generator=g).to(torch.int32)
    mask = (torch.rand((1, 1, size, size, size), generator=g) > 0.2).float()
    return ct, codes, mask


def tiny_cache(root, seed):
    """A cache of 3 seeded synthetic 20^3 patients in ``root/train``; its path."""
    from dosepred.io.cache import write_cache
    from dosepred.synth import make_cohort

    write_cache(make_cohort(3, seed=seed, size=20), root / "train")
    return root / "train"


def tiny_run(cache, out):
    """A TINY model trained 3 steps (seed 1) on ``cache`` into ``out``; its path."""
    from dosepred.training import TrainConfig

    Trainer(TrainConfig(data=str(cache), out=str(out), epochs=1, steps_per_epoch=3, seed=1, **TINY),
            progress=False).fit()
    return out
