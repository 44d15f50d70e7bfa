"""A calibration.json object as the writers before version 4 wrote it, for the tests that turn a
version-4 calibration into an older one by hand."""

from __future__ import annotations

from typing import Any


def without_centred(cal: dict[str, Any]) -> dict[str, Any]:
    """``cal`` (edited in place, and returned) without what version 4 added: the ``centred`` method's
    scores and tails, each criterion's ``centre``, and ``centred`` as a family's method (``signed``
    instead, the method it is where every centre is 0)."""
    for fam in cal["families"].values():
        fam.get("scores", {}).pop("centred", None)
        (fam.get("tail_scores") or {}).pop("centred", None)
        for st in fam.get("criterion_stats", {}).values():
            st.pop("centre", None)
        if fam.get("method") == "centred":
            fam["method"] = "signed"
    return cal
