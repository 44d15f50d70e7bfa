"""User-written JSON/TOML files saved with a UTF-8 byte-order mark (Windows Notepad and Excel write
one) are read as without it: a protocol, an ROI map, a training config, a split file or id list and a
NIfTI folder's rois.json were refused ("Unexpected UTF-8 BOM") or, for the id list and rois.json,
ended in a traceback when not UTF-8 at all."""

from __future__ import annotations

import json

import pytest

from dosepred.errors import DosepredError
from dosepred.io import nifti
from dosepred.io.roi_names import RoiMap
from dosepred.patient import RoiSet
from dosepred.protocol import load_protocol
from dosepred.split import read_id_lists, read_split
from dosepred.training.config import TrainConfig

BOM = "\ufeff"


def _write(path, obj, bom=True):
    text = obj if isinstance(obj, str) else json.dumps(obj)
    path.write_text((BOM if bom else "") + text, encoding="utf-8")
    return path


def test_files_with_a_byte_order_mark_read_as_without(tmp_path):
    proto = {"name": "clinic", "criteria": [{"roi": "SpinalCord", "metric": "Dmax", "direction": "<=",
                                             "limit": 45}]}
    for bom in (False, True):
        p = load_protocol(_write(tmp_path / f"p{bom}.json", proto, bom), RoiSet.openkbp())
        assert [(c.roi, c.metric, c.limit) for c in p.criteria] == [("SpinalCord", "Dmax", 45)]
        m = RoiMap.load(_write(tmp_path / f"m{bom}.json", {"Cord": "SpinalCord"}, bom))
        assert m.resolve("Cord").name == "SpinalCord"
        assert TrainConfig.read_file(_write(tmp_path / f"c{bom}.json", {"lr": 0.001}, bom)) == {"lr": 0.001}
        assert TrainConfig.read_file(_write(tmp_path / f"c{bom}.toml", "lr = 0.001\n", bom)) == {"lr": 0.001}
        split = {"splits": {"val": ["a", "b"]}}
        assert read_split(_write(tmp_path / f"s{bom}.json", split, bom))["val"] == ["a", "b"]
        ids = _write(tmp_path / f"ids{bom}.txt", "val: a b\n", bom)
        assert read_id_lists([str(ids)]) == {"val": ["a", "b"]}
        d = tmp_path / f"nii{bom}"
        d.mkdir()
        _write(d / "rois.json", {"id": "p1", "rois": []}, bom)
        assert nifti.read_sidecar(d)["id"] == "p1"


@pytest.mark.parametrize("which", ["split", "ids", "rois"])
def test_a_file_that_is_not_utf8_is_one_error(tmp_path, which):
    bad = tmp_path / "f.json"
    bad.write_bytes(b'{"splits": {"val": ["\xe9"]}}')  # Latin-1
    with pytest.raises(DosepredError, match="UTF-8"):
        if which == "split":
            read_split(bad)
        elif which == "ids":
            read_id_lists([str(bad)])
        else:
            (tmp_path / "rois.json").write_bytes(bad.read_bytes())
            nifti.read_sidecar(tmp_path)
