"""Text files as Windows editors and Excel save them (a byte-order mark, UTF-16 "Unicode", a Windows
code page, ';' separators and decimal commas, CRLF line ends): each is read as meant or refused in one
line naming the file, never read wrongly or ended in a traceback."""

from __future__ import annotations

import codecs
import json

import pytest

from dosepred import synth
from dosepred.io import cache
from dosepred.io.cache import CacheError


def _utf16(text: str) -> bytes:
    return codecs.BOM_UTF16_LE + text.encode("utf-16-le")  # Notepad's "Unicode"


def test_cache_dataset_json_saved_by_notepad(tmp_path):
    """A cache's dataset.json edited in Notepad (a patient's meta, e.g. its study date): with a
    byte-order mark it was refused ("Unexpected UTF-8 BOM"), in UTF-16 or cp1252 it ended in a
    traceback (UnicodeDecodeError, "internal error")."""
    c = cache.write_cache(synth.make_cohort(2, seed=1, size=16), tmp_path / "c")
    js = c.root / "dataset.json"
    text = js.read_text(encoding="utf-8")
    js.write_bytes(codecs.BOM_UTF8 + text.replace("\n", "\r\n").encode())
    assert cache.Cache.open(c.root).ids == [e["id"] for e in json.loads(text)["patients"]]
    for raw in (_utf16(text), text.replace('"source"', '"Par\u00f3tida"', 1).encode("cp1252")):
        js.write_bytes(raw)
        with pytest.raises(CacheError, match=r"dataset.json is not UTF-8 text .*save it as UTF-8"):
            cache.Cache.open(c.root)
