"""The checkpoint format (dosepred.models.checkpoint): safe loading, the space record and its fallbacks."""

import json
import os

import pytest
import torch

from dosepred.models import ModelConfig, ModelError, build_model
from dosepred.models.checkpoint import (
    CHECKPOINT_FORMAT,
    MODEL_FORMAT,
    export_model,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from dosepred.models.space import ModelSpace


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _tiny() -> tuple[ModelConfig, dict]:
    cfg = ModelConfig(base=2, levels=2, res_units=0, patch=(8, 8, 8))
    return cfg, build_model(cfg).state_dict()


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"format": CHECKPOINT_FORMAT, "payload": _Evil(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="not a readable dosepred checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_space_round_trip_and_fallbacks(tmp_path):
    cfg, state = _tiny()
    space = ModelSpace(axes="LPI", spacing_min=(1, 2, 3), spacing_max=(2, 3, 4), fov_min=(10, 20, 30),
                       fov_max=(40, 50, 60), masked=False, patients=3, spacing_median=(1.5, 2.5, 3.5),
                       shape_median=(20, 20, 20))
    save_checkpoint({"format": CHECKPOINT_FORMAT, "model_config": cfg.to_dict(), "model": state,
                     "space": space.to_dict()}, tmp_path / "run" / "checkpoints" / "last.pt")
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp"))  # written atomically
    model = load_model(tmp_path / "run")
    assert model.space == space and model.space.lr_axis == 0
    # exported: the record travels in model.pt and config.json
    out = export_model(tmp_path / "run", tmp_path / "m")
    assert ModelSpace.from_dict(json.loads((out / "config.json").read_text())["space"]) == space
    assert load_model(out).space == space
    # a model.pt without a record: the folder's config.json record, else the OpenKBP default
    torch.save({"format": MODEL_FORMAT, "model_config": cfg.to_dict(), "model": state}, out / "model.pt")
    assert load_model(out).space == space
    (out / "config.json").write_text(json.dumps({"format": MODEL_FORMAT}))
    assert load_model(out).space == ModelSpace.openkbp()
    ck = load_checkpoint(out)
    assert ck["space"]["source"].startswith("OpenKBP train split")
    # an invalid record is a clear error
    torch.save({"format": MODEL_FORMAT, "model_config": cfg.to_dict(), "model": state,
                "space": {"axes": "PLX"}}, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="space record is invalid"):
        load_checkpoint(tmp_path / "bad.pt")
