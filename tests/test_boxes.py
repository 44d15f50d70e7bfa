"""Bounding boxes against numpy's own nonzero extents."""

import numpy as np
import pytest

from dosepred.boxes import box_shape, coords_box, grow, mask_box, union


def _np_box(mask):
    nz = np.nonzero(mask)
    return tuple(slice(int(c.min()), int(c.max()) + 1) for c in nz)


def test_mask_box_matches_nonzero_extents_with_margins_and_empty_masks():
    rng = np.random.default_rng(3)
    for _ in range(20):
        m = np.zeros((9, 11, 7), bool)
        lo = rng.integers(0, 5, 3)
        m[lo[0]:lo[0] + rng.integers(1, 4), lo[1]:lo[1] + rng.integers(1, 6), lo[2]:lo[2] + 2] = True
        m &= rng.random(m.shape) > 0.3
        if not m.any():
            continue
        assert mask_box(m) == _np_box(m)
        grown = mask_box(m, (1, 2, 30))
        assert grown[2] == slice(0, 7)  # a margin beyond the array is clipped to it
        assert grown[0] == slice(max(0, _np_box(m)[0].start - 1), min(9, _np_box(m)[0].stop + 1))
    empty = np.zeros((4, 5), bool)
    assert mask_box(empty) == (slice(0, 0), slice(0, 0))
    assert mask_box(empty, 2, empty="full") == (slice(0, 4), slice(0, 5))
    assert mask_box(empty, empty="none") is None and mask_box(empty, 3, "none") is None
    assert mask_box(m, 1, empty="none") == mask_box(m, 1)
    with pytest.raises(ValueError, match="empty"):
        mask_box(empty, empty="nothing")


def test_grow_clips_to_the_array():
    box = (slice(2, 5), slice(0, 3), slice(6, 7))
    assert grow(box, 1, (9, 9, 7)) == (slice(1, 6), slice(0, 4), slice(5, 7))
    assert grow(box, (0, 10, 2), (9, 9, 7)) == (slice(2, 5), slice(0, 9), slice(4, 7))
    assert grow(box, np.int64(3), (9, 9, 7)) == (slice(0, 8), slice(0, 6), slice(3, 7))


def test_coords_box_and_union():
    rng = np.random.default_rng(5)
    a, b = rng.random((6, 8, 5)) > 0.9, rng.random((6, 8, 5)) > 0.95
    assert coords_box([np.nonzero(a), np.nonzero(b)]) == _np_box(a | b)
    assert union(_np_box(a), _np_box(b)) == _np_box(a | b)
    assert coords_box([np.nonzero(np.zeros((2, 2), bool))]) is None and union(None, _np_box(a)) == _np_box(a)
    assert box_shape(_np_box(a)) == tuple(s.stop - s.start for s in _np_box(a))
