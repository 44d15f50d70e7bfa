"""The checkpoint format (dosepred.models.checkpoint): safe loading, the space record and its fallbacks."""

import json
import os
import zipfile
from pathlib import Path

import numpy as np
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
    shared_path,
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


def test_a_damaged_or_cut_model_file_is_refused_not_loaded(tmp_path):
    """A byte flipped inside a weight tensor's data loaded silently (torch does not check the zip
    archive's CRC-32s) and moved the predicted dose by up to 56 Gy (hunt/truncated_ckpt.py); a file
    cut short was "not a PyTorch checkpoint file; OSError: [Errno 22] Invalid argument"."""
    cfg, state = _tiny()
    state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in state.items()}
    save_checkpoint({"format": MODEL_FORMAT, "model_config": cfg.to_dict(), "model": state},
                    tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    load_model(tmp_path / "ok.pt")  # the intact file loads
    raw = torch.full_like(next(v for v in state.values() if v.numel() >= 16), 0.5).numpy().tobytes()
    at = data.find(raw[:16])
    assert at > 0
    flipped = bytearray(data)
    flipped[at + 1] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    with pytest.raises(ModelError, match=r"flipped\.pt: not a readable dosepred checkpoint \(the file is "
                       r"corrupted: its entry \S+ fails the archive's CRC-32 check"):
        load_model(tmp_path / "flipped.pt")
    for frac in (0.1, 0.5, 0.99):
        (tmp_path / "cut.pt").write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(ModelError, match=r"cut\.pt: not a readable dosepred checkpoint \(the file is "
                           r"truncated or corrupted\)$"):
            load_model(tmp_path / "cut.pt")


@pytest.mark.parametrize("version, match", [
    (2, r"v2\.pt: written by a newer dosepred \(checkpoint version 2; this dosepred .* reads up to "
        r"version 1\): upgrade dosepred"),
    ("1", r"version '1' is not a positive integer"),
    (0, r"version 0 is not a positive integer"),
])
def test_a_checkpoint_of_a_later_or_unknown_version_is_refused(tmp_path, version, match):
    """A file of a later layout was read as if of this one (its records could mean something else)."""
    cfg, state = _tiny()
    obj = {"format": MODEL_FORMAT, "version": version, "model_config": cfg.to_dict(), "model": state}
    save_checkpoint(obj, tmp_path / f"v{version}.pt")
    with pytest.raises(ModelError, match=match):
        load_model(tmp_path / f"v{version}.pt")


def test_a_newer_checkpoint_names_no_package_index_install(tmp_path):
    """The refusal told to run `pip install -U dosepred`: dosepred installs from its repository (README:
    `pip install -e .`), and that command fetches whatever a package index holds under the name, or
    nothing. The remedy names the install from a checkout."""
    cfg, state = _tiny()
    obj = {"format": MODEL_FORMAT, "version": 2, "model_config": cfg.to_dict(), "model": state}
    save_checkpoint(obj, tmp_path / "v2.pt")
    with pytest.raises(ModelError) as e:
        load_model(tmp_path / "v2.pt")
    assert "pip install -U dosepred" not in str(e.value)
    assert "pip install -e ." in str(e.value), str(e.value)


@pytest.mark.parametrize("version", [1, None])
def test_a_checkpoint_of_this_version_or_without_one_loads(tmp_path, version):
    cfg, state = _tiny()
    obj = {"format": MODEL_FORMAT, "model_config": cfg.to_dict(), "model": state}
    if version is not None:
        obj["version"] = version
    save_checkpoint(obj, tmp_path / "m.pt")
    assert load_checkpoint(tmp_path / "m.pt").get("version", 1) == 1


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



def test_a_model_without_a_record_does_not_take_openkbp_s_space_for_an_unreadable_config(tmp_path):
    """A model.pt without a space record takes its folder's config.json record; a config.json that is
    there but cannot be read (a hand edit leaving a trailing comma) or whose "space" is not a record
    was taken as "no record", and the model as an OpenKBP one: an "LPI" model was fed its patients
    in "PLI" axes, spacing and field of view of another data set, without a word."""
    cfg, state = _tiny()
    space = ModelSpace(axes="LPI", spacing_min=(1, 2, 3), spacing_max=(2, 3, 4), fov_min=(10, 20, 30),
                       fov_max=(40, 50, 60), masked=False, patients=3)
    m = tmp_path / "m"
    m.mkdir()
    save_checkpoint({"format": MODEL_FORMAT, "model_config": cfg.to_dict(), "model": state}, m / "model.pt")
    good = json.dumps({"format": MODEL_FORMAT, "space": space.to_dict()}, indent=2)
    (m / "config.json").write_text(good)
    assert load_model(m).space == space
    broken = good.replace('"format": "dosepred-model",', '"format": "dosepred-model",,')
    for text in (broken, json.dumps({"format": MODEL_FORMAT, "space": "LPI"}), "[1, 2]", "\xff\xfe"):
        (m / "config.json").write_text(text)
        with pytest.raises(ModelError, match=r"m/config\.json"):
            load_model(m)
    # no "space" in it (a model exported before the record) or no config.json: the documented default
    (m / "config.json").write_text(json.dumps({"format": MODEL_FORMAT}))
    assert load_model(m).space == ModelSpace.openkbp()
    (m / "config.json").unlink()
    assert load_model(m).space == ModelSpace.openkbp()


def test_a_model_without_a_record_flipped_along_another_axis_is_not_taken_for_openkbp_s(tmp_path):
    """A checkpoint saved before the space record (no "space" in it, none beside it) is taken to be in
    OpenKBP's PLI space, whose left-right axis is array axis 1. One whose model_config says it was
    flipped along axis 0 or 2 (flip_axis: the training data's left-right axis, set by hand then) was
    trained on arrays in other axes: its patients were permuted into PLI and predicted anyway."""
    cfg, state = _tiny()
    for axis in (0, 2):
        cfg.flip_axis = axis
        save_checkpoint({"format": CHECKPOINT_FORMAT, "model_config": cfg.to_dict(), "model": state},
                        tmp_path / "run" / "checkpoints" / "last.pt")
        with pytest.raises(ModelError, match=rf"last\.pt has no space record.*flip_axis {axis}"):
            load_model(tmp_path / "run")
    cfg.flip_axis = 1  # as OpenKBP's arrays: the documented default
    save_checkpoint({"format": CHECKPOINT_FORMAT, "model_config": cfg.to_dict(), "model": state},
                    tmp_path / "run" / "checkpoints" / "last.pt")
    assert load_model(tmp_path / "run").space == ModelSpace.openkbp()
    # a record (in the checkpoint, or a model folder's config.json) says where the model is: taken
    lpi = ModelSpace(axes="LPI", spacing_min=(1, 2, 3), spacing_max=(2, 3, 4), fov_min=(10, 20, 30),
                     fov_max=(40, 50, 60), patients=3)
    cfg.flip_axis = 0
    m = tmp_path / "m"
    save_checkpoint({"format": MODEL_FORMAT, "model_config": cfg.to_dict(), "model": state}, m / "model.pt")
    (m / "config.json").write_text(json.dumps({"format": MODEL_FORMAT, "space": lpi.to_dict()}))
    assert load_model(m).space == lpi


def test_a_model_without_a_record_does_not_take_the_space_of_another_model_s_config(tmp_path):
    """A model.pt without a space record reads the record of the config.json beside it: one copied from
    another model's folder (assembling a release by hand) gave this model that model's space (axes,
    spacing) without a word. config.json repeats the model's architecture and training, so one that
    differs from model.pt's is another model's: an error naming it."""
    cfg, state = _tiny()
    space = ModelSpace(axes="LPI", spacing_min=(1, 2, 3), spacing_max=(2, 3, 4), fov_min=(10, 20, 30),
                       fov_max=(40, 50, 60), masked=False, patients=3)
    m = tmp_path / "m"
    mine = {"model_config": cfg.to_dict(), "train_config": {"loss": "mae", "data": "/c/train"}, "epoch": 5,
            "global_step": 1500}
    save_checkpoint({"format": MODEL_FORMAT, "model": state, **mine}, m / "model.pt")
    (m / "config.json").write_text(json.dumps({"format": MODEL_FORMAT, **mine, "space": space.to_dict()}))
    assert load_model(m).space == space  # its own config.json
    wider = ModelConfig(base=4, levels=2, res_units=0, patch=(8, 8, 8)).to_dict()
    for key, theirs in (("model_config", wider), ("train_config", {"loss": "mae+cdm", "data": "/c/train"}),
                        ("global_step", 3000)):
        (m / "config.json").write_text(json.dumps({"format": MODEL_FORMAT, **mine, key: theirs,
                                                   "space": space.to_dict()}))
        with pytest.raises(ModelError, match=rf"m/config\.json describes another model than model\.pt "
                           rf"\(its {key} differs"):
            load_model(m)

def test_average_of_checkpoints_is_the_mean_of_their_weights(tmp_path):
    from dosepred.models.checkpoint import average_checkpoints

    cfg = ModelConfig(base=2, levels=2, res_units=0, patch=(8, 8, 8))
    states = []
    for seed in range(3):
        torch.manual_seed(seed)
        states.append(build_model(cfg).state_dict())
        save_checkpoint({"format": CHECKPOINT_FORMAT, "model_config": cfg.to_dict(), "model": states[-1]},
                        tmp_path / f"c{seed}.pt")
    paths = [tmp_path / f"c{s}.pt" for s in range(3)]
    avg = average_checkpoints(paths)
    for k, v in states[0].items():
        if v.is_floating_point():
            want = (states[0][k].double() + states[1][k].double() + states[2][k].double()) / 3
            assert torch.allclose(avg["model"][k].double(), want, atol=1e-6), k
    assert avg["averaged"] == [str(p) for p in paths]
    out = export_model(paths, tmp_path / "m", half=False)
    m = load_checkpoint(out / "model.pt")
    assert all(torch.equal(m["model"][k], avg["model"][k]) for k in avg["model"])
    assert "average of the weights of 3 checkpoints" in (out / "README.md").read_text()
    other = ModelConfig(base=4, levels=2, res_units=0, patch=(8, 8, 8))
    save_checkpoint({"format": CHECKPOINT_FORMAT, "model_config": other.to_dict(),
                     "model": build_model(other).state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="another architecture"):
        average_checkpoints([paths[0], tmp_path / "other.pt"])


def test_the_use_lines_of_a_model_card_quote_a_path_with_spaces(tmp_path):
    """The 'Use:' line of the README export-model and ensemble write showed the model folder as is:
    `dosepred predict --model /x/my models/m ...` copied into a shell gives --model '/x/my' and a
    stray argument. The paths are shell-quoted now: split by a shell they give the folder back."""
    import re
    import shlex

    from dosepred.models.checkpoint import write_ensemble

    cfg, state = _tiny()
    for i in (1, 2):
        torch.manual_seed(i)
        save_checkpoint({"format": CHECKPOINT_FORMAT, "model_config": cfg.to_dict(),
                         "model": build_model(cfg).state_dict()}, tmp_path / f"c{i}.pt")
    m = export_model(tmp_path / "c1.pt", tmp_path / "my models" / "m 1", half=False)
    write_ensemble([tmp_path / "c1.pt", tmp_path / "c2.pt"], tmp_path / "my models" / "ens")
    for folder in (m, tmp_path / "my models" / "ens"):
        readme = (folder / "README.md").read_text()
        uses = re.findall(r"`(dosepred (?:predict|calibrate) --model [^`]*)`", readme)
        # the folder's name: the folders above it are the machine's that wrote it (a user's home)
        assert uses and all(shlex.split(u)[3] == folder.name for u in uses), uses


def test_the_use_lines_of_a_model_card_name_every_source_predict_reads(tmp_path):
    """The 'Use:' line of the README export-model and ensemble write (and of the released models'
    cards) said `--data <cache or OpenKBP folder>`, while `predict --data` reads NIfTI and DICOM
    folders too (4 formats, the card named 2). It now names each format as the help texts do."""
    from pathlib import Path

    from dosepred.io import formats
    from dosepred.models.checkpoint import write_ensemble

    cfg, _ = _tiny()
    for i in (1, 2):
        torch.manual_seed(i)
        save_checkpoint({"format": CHECKPOINT_FORMAT, "model_config": cfg.to_dict(),
                         "model": build_model(cfg).state_dict()}, tmp_path / f"c{i}.pt")
    m = export_model(tmp_path / "c1.pt", tmp_path / "m", half=False)
    write_ensemble([tmp_path / "c1.pt", tmp_path / "c2.pt"], tmp_path / "ens")
    released = sorted((Path(__file__).parents[1] / "models").glob("openkbp-*/README.md"))
    assert len(released) >= 5
    for readme in [m / "README.md", tmp_path / "ens" / "README.md", *released]:
        text = " ".join(readme.read_text().split())  # the released cards wrap their lines
        assert "--data PATIENTS" in text and "cache or OpenKBP folder" not in text, readme
        assert all(f.described in text for f in formats.FORMATS), readme


def test_half_export_keeps_small_tensors_in_full_precision(tmp_path):
    """``export_model(half=True)``: tensors of at least HALF_MIN_NUMEL elements stored in fp16, smaller ones
    in fp32 (bit-identical to the checkpoint); the loaded model is fp32 throughout."""
    from dosepred.models.checkpoint import HALF_MIN_NUMEL

    cfg = ModelConfig(base=8, levels=6, res_units=0, patch=(64, 64, 64))  # 8..256 channels: both kinds
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    ck = {"format": CHECKPOINT_FORMAT, "model_config": cfg.to_dict(), "model": state}
    save_checkpoint(ck, tmp_path / "c.pt")
    out = export_model(tmp_path / "c.pt", tmp_path / "m")
    stored = torch.load(out / "model.pt", weights_only=True)["model"]
    big = [k for k, v in state.items() if v.is_floating_point() and v.numel() >= HALF_MIN_NUMEL]
    small = [k for k, v in state.items() if v.is_floating_point() and v.numel() < HALF_MIN_NUMEL]
    assert big and small
    assert all(stored[k].dtype == torch.float16 and torch.equal(stored[k], state[k].half()) for k in big)
    assert all(stored[k].dtype == torch.float32 and torch.equal(stored[k], state[k]) for k in small)
    from dosepred.models.checkpoint import load_model

    net = load_model(out)
    assert all(p.dtype == torch.float32 for p in net.parameters())


# ------------------------------------------------------------------ through the command line


def _cli(*args):
    from typer.testing import CliRunner

    from dosepred.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _last_line_error(r, text):
    assert r.exit_code == 2, (r.output, r.exception)
    assert "Traceback" not in r.output and r.output.splitlines()[-1] == f"error: {text}", r.output


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A TINY run stopped after epoch 2 of 3: checkpoints last.pt (epoch 2), prev.pt (1), best.pt."""
    from dosepred.training import TrainConfig, train
    from tiny_models import TINY, tiny_cache

    root = tmp_path_factory.mktemp("resume")
    train(TrainConfig(data=str(tiny_cache(root, 1)), out=str(root / "run"), epochs=3, steps_per_epoch=1,
                      stop_after=2, seed=1, **TINY))
    return root / "run"


def _no_checkpoints(k):
    import shutil

    shutil.rmtree(k)


def _foreign_last(k):
    (k / "prev.pt").unlink()
    torch.save({"state_dict": {}}, k / "last.pt")


def _no_last_junk_prev(k):
    (k / "last.pt").unlink()
    (k / "prev.pt").write_bytes(b"junk")


@pytest.mark.parametrize("damage, message", [
    (_no_checkpoints, "--resume: {k}/last.pt does not exist (nothing to resume in {run})"),
    (_foreign_last, "--resume: {k}/last.pt is not a dosepred checkpoint (no format tag "
     "'dosepred-checkpoint') (and there is no prev.pt to fall back to)"),
    (_no_last_junk_prev, "--resume: {k}/last.pt does not exist; and the previous checkpoint {k}/prev.pt: "
     "not a readable dosepred checkpoint (not a PyTorch checkpoint file; "),
], ids=["no-checkpoints", "foreign-last-no-prev", "no-last-junk-prev"])
def test_cli_resume_from_a_missing_or_wrong_checkpoint(tmp_path, interrupted_run, damage, message):
    """``train --resume`` of a run without checkpoints, with a last.pt of another program and no prev.pt,
    or without last.pt and a prev.pt that is no checkpoint: one error line naming the files (the last
    case named only prev.pt, not why last.pt was not used), and the run folder as it was."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(interrupted_run, run)
    damage(run / "checkpoints")
    before = _files(run)
    r = _cli("train", "--out", run, "--resume", "--threads", "1", "--no-progress")
    assert r.exit_code == 2, (r.output, r.exception)
    last = r.output.splitlines()[-1]
    assert last.startswith("error: " + message.format(k=run / "checkpoints", run=run)), r.output
    assert "Traceback" not in r.output and _files(run) == before


def test_cli_export_of_two_different_models_is_one_line(tmp_path):
    """``export-model A B`` averages the weights of fine-tunes of one model; two models of other widths:
    one line naming both files, no model folder."""
    paths = []
    for base in (2, 4):
        cfg = ModelConfig(base=base, levels=2, res_units=0, patch=(8, 8, 8))
        paths.append(save_checkpoint({"format": CHECKPOINT_FORMAT, "model_config": cfg.to_dict(),
                                      "model": build_model(cfg).state_dict()}, tmp_path / f"b{base}.pt"))
    r = _cli("export-model", *paths, "--out", tmp_path / "m")
    _last_line_error(r, f"{paths[1]}: another architecture or ROI set than {paths[0]}; only checkpoints of "
                        "one model can be averaged")
    assert len(r.output.splitlines()) == 1 and not (tmp_path / "m").exists()
    with pytest.raises(ModelError, match="^no checkpoint to average$"):  # the API only: the CLI needs one
        export_model([], tmp_path / "m2")
    assert not (tmp_path / "m2").exists()


def test_cli_predict_with_weights_of_another_model_names_the_weight(tmp_path):
    """A checkpoint whose weights are not of the network its model_config describes: ``predict`` stops
    with one line naming the file, the first weight and both shapes (it named nothing: torch's first
    line, 'Error(s) in loading state_dict for DoseUNet:'), and writes no output."""
    from dosepred.io.cache import write_cache
    from dosepred.synth import make_cohort

    cfg, _ = _tiny()
    wide = ModelConfig(base=4, levels=2, res_units=0, patch=(8, 8, 8))
    ck = save_checkpoint({"format": MODEL_FORMAT, "model_config": cfg.to_dict(),
                          "model": build_model(wide).state_dict()}, tmp_path / "model.pt")
    write_cache(make_cohort(1, seed=2, size=12), tmp_path / "cache")
    r = _cli("predict", "--model", ck, "--data", tmp_path / "cache", "--out", tmp_path / "pred",
             "--device", "cpu", "--no-progress")
    _last_line_error(r, f"{ck}: weights do not fit the recorded architecture (size mismatch for "
                        "net.model.0.conv.weight: copying a param with shape torch.Size([4, 10, 3, 3, 3]) "
                        "from checkpoint, the shape in current model is torch.Size([2, 10, 3, 3, 3]). "
                        "(and 4 more))")
    assert not (tmp_path / "pred").exists()


def test_the_model_card_names_the_split_and_the_init_it_was_trained_from(tmp_path):
    """A fine-tune (--init, same ROIs) on the training split of a clinic cache: the README said
    'trained with loss `mae` on `CACHE` for 1 epochs', as for a model trained from scratch on every
    patient of the cache, validation patients included. It now names the split, the number of
    training patients and the --init model."""
    from dosepred.training import TrainConfig, Trainer
    from tiny_models import TINY, tiny_cache, tiny_run

    data = tiny_cache(tmp_path, 2)
    first = tiny_run(data, tmp_path / "first")
    split = tmp_path / "s.json"
    split.write_text(json.dumps({"splits": {"train": ["synth_000", "synth_001"], "val": ["synth_002"]}}))
    Trainer(TrainConfig(data=str(data), out=str(tmp_path / "ft"), init=str(first),
                        train_split=f"{split}:train", epochs=1, steps_per_epoch=1, seed=1, **TINY),
            progress=False).fit()
    readme = (export_model(tmp_path / "ft", tmp_path / "m") / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("- trained with"))
    assert line == ("- trained with loss `mae` on `train` (split `s.json:train`: 2 patients), fine-tuned "
                    "from `first`, for 1 epochs (1 steps)"), readme
    readme = (export_model(first, tmp_path / "m0") / "README.md").read_text()
    assert "- trained with loss `mae` on `train` for 1 epochs (3 steps)" in readme  # from scratch, all


def test_an_exported_model_names_no_folder_of_the_machine_that_trained_it(tmp_path):
    """A released model folder is copied to other machines: its config.json, README.md and model.pt
    named the training machine's folders (data, validation, --init, split and protocol files, the run
    and its checkpoint: /home/alice/clinic/..., 11 places for this fine-tune), which say who trained it
    and where patients' data lie, and mean nothing elsewhere. They are recorded by name
    (``train``, ``s.json:train``, ``ft/checkpoints/best.pt``); the model predicts from its new place, and
    its run keeps the full paths that --resume compares."""
    import shutil

    from dosepred.io.cache import Cache
    from dosepred.predict import predict_dose
    from dosepred.training import TrainConfig, Trainer
    from tiny_models import TINY, tiny_cache, tiny_run

    home = tmp_path / "home" / "alice"
    data = tiny_cache(home, 2)
    first = tiny_run(data, home / "first")
    split, proto = home / "s.json", home / "p.json"
    split.write_text(json.dumps({"splits": {"train": ["synth_000", "synth_001"], "val": ["synth_002"]}}))
    shutil.copy(Path(__file__).resolve().parents[1] / "src/dosepred/protocol/builtin/openkbp.json", proto)
    Trainer(TrainConfig(data=str(data), val=str(data), out=str(home / "ft"), init=str(first),
                        protocol=str(proto), train_split=f"{split}:train", val_split=f"{split}:val", epochs=1,
                        steps_per_epoch=1, seed=1, **TINY), progress=False).fit()
    assert str(home) in (home / "ft" / "config.json").read_text()  # the run's own record: --resume's
    export_model(home / "ft", tmp_path / "m")
    files = {f.name: f.read_bytes() for f in (tmp_path / "m").iterdir()}
    with zipfile.ZipFile(tmp_path / "m" / "model.pt") as z:  # torch's pickle: its strings as written
        files["model.pt"] = b"".join(z.read(n) for n in z.namelist() if n.endswith(".pkl"))
    for name, text in files.items():
        assert b"alice" not in text and str(tmp_path).encode() not in text, name
    tc = json.loads(files["config.json"])["train_config"]
    assert (tc["data"], tc["val"], tc["init"], tc["protocol"], tc["train_split"], tc["out"]) == (
        "train", "train", "first", "p.json", "s.json:train", "ft")
    assert json.loads(files["config.json"])["source"] == "ft/checkpoints/best.pt"
    assert shared_path("models/openkbp-mae/model.pt") == "openkbp-mae/model.pt"
    assert shared_path("openkbp-clinical") == "openkbp-clinical"  # a built-in protocol's name
    moved = shutil.copytree(tmp_path / "m", tmp_path / "bob" / "m")
    shutil.rmtree(home)
    p = next(iter(Cache.open(tiny_cache(tmp_path / "bob", 2))))
    want = predict_dose(load_model(tmp_path / "m"), p)
    np.testing.assert_array_equal(predict_dose(load_model(moved), p), want)


def _strict_json(text):
    """``json.loads`` as strict parsers read JSON: ``NaN`` / ``Infinity`` are errors."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_an_exported_config_json_is_standard_json_when_a_validation_score_is_nan(tmp_path):
    """A run validated on protocol openkbp (no limits: criteria_pass_rate NaN, as every released model's
    ``best`` holds) exported a config.json holding ``"criteria_pass_rate": NaN``, which JavaScript's
    JSON.parse and other strict parsers refuse (the whole file unreadable). NaN and infinities are now
    null in config.json and the model card; the model still loads (config.json matches model.pt)."""
    cfg, state = _tiny()
    best = {"epoch": 5, "select": "dvh", "value": 1.84, "dvh_score": 1.84, "criteria_pass_rate": float("nan"),
            "ptv_score": float("inf")}
    save_checkpoint({"format": CHECKPOINT_FORMAT, "model_config": cfg.to_dict(), "model": state, "best": best,
                     "epoch": 5, "global_step": 10}, tmp_path / "run" / "checkpoints" / "last.pt")
    out = export_model(tmp_path / "run", tmp_path / "m")
    info = _strict_json((out / "config.json").read_text())
    assert info["best"] == {**best, "criteria_pass_rate": None, "ptv_score": None}
    line = next(x for x in (out / "README.md").read_text().splitlines() if x.startswith("- best validation"))
    assert _strict_json(line.split(": ", 1)[1])["criteria_pass_rate"] is None
    load_model(out)
