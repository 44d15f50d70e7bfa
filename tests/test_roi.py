"""Bit-mask ROI codes: lossless encode/decode in numpy and torch, dtype choice, limits."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dosepred import roi


def _masks(n: int, shape=(4, 3, 5), seed: int = 0, p: float = 0.5) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape)) < p


# -------------------------------------------------------------------------------- hand-made cases

def test_hand_made_overlapping_masks():
    a = np.array([[[1, 1, 0]]], bool)
    b = np.array([[[0, 1, 1]]], bool)
    c = np.array([[[0, 0, 0]]], bool)
    codes = roi.encode([a, b, c])
    assert codes.dtype == np.uint8
    assert codes.tolist() == [[[0b001, 0b011, 0b010]]]
    assert roi.decode(codes, 1).tolist() == [[[False, True, True]]]
    assert not roi.decode(codes, 2).any()


def test_bit_63_is_the_top_bit_of_uint64():
    masks = np.zeros((64, 1, 1, 2), bool)
    masks[63, 0, 0, 0] = True
    masks[0, 0, 0, 1] = True
    codes = roi.encode(masks)
    assert codes.dtype == np.uint64
    assert int(codes[0, 0, 0]) == 1 << 63 and int(codes[0, 0, 1]) == 1
    t = roi.to_torch(codes)
    assert t.dtype == torch.int64
    assert roi.decode_torch(t, 63).tolist() == [[[True, False]]]
    assert roi.decode_torch(t, 0).tolist() == [[[False, True]]]


@pytest.mark.parametrize("n, dtype", [(0, np.uint8), (1, np.uint8), (8, np.uint8), (9, np.uint16),
                                      (16, np.uint16), (17, np.uint32), (32, np.uint32), (33, np.uint64),
                                      (63, np.uint64), (64, np.uint64)])
def test_dtype_choice_and_roundtrip(n, dtype):
    assert roi.code_dtype(n) == np.dtype(dtype)
    masks = _masks(n, seed=n)
    codes = roi.encode(masks, shape=(4, 3, 5))
    assert codes.dtype == np.dtype(dtype) and codes.shape == (4, 3, 5)
    np.testing.assert_array_equal(roi.decode_all(codes, n), masks)
    t = roi.to_torch(codes)
    assert t.element_size() == np.dtype(dtype).itemsize
    np.testing.assert_array_equal(roi.decode_torch(t, list(range(n))).numpy(), masks)


def test_65_rois_is_a_clear_error():
    with pytest.raises(ValueError, match="65 ROIs.*at most 64"):
        roi.code_dtype(65)
    with pytest.raises(ValueError, match="65 ROIs"):
        roi.encode(_masks(65))


def test_zero_rois_needs_shape():
    assert roi.encode([], shape=(2, 2, 2)).shape == (2, 2, 2)
    with pytest.raises(ValueError, match="shape"):
        roi.encode([])
    assert roi.decode_all(np.zeros((2, 2, 2), np.uint8), 0).shape == (0, 2, 2, 2)
    t = roi.decode_torch(torch.zeros((2, 2, 2), dtype=torch.uint8), [])
    assert t.shape == (0, 2, 2, 2)


@pytest.mark.parametrize("fill", [False, True])
def test_one_voxel_and_all_voxels(fill):
    one = np.zeros((1, 1, 1), bool)
    one[0, 0, 0] = fill
    codes = roi.encode([one, ~one])
    assert roi.decode(codes, 0)[0, 0, 0] == fill and roi.decode(codes, 1)[0, 0, 0] == (not fill)
    full = np.ones((3, 4, 5), bool)
    masks = np.stack([full] * 17)
    codes = roi.encode(masks)
    assert int(codes.min()) == (1 << 17) - 1
    np.testing.assert_array_equal(roi.decode_all(codes, 17), masks)


def test_bad_inputs():
    with pytest.raises(ValueError, match="mask 1 has shape"):
        roi.encode([np.zeros((2, 2, 2)), np.zeros((2, 2, 3))])
    with pytest.raises(TypeError, match="unsigned"):
        roi.decode(np.zeros((2, 2, 2), np.int32), 0)
    with pytest.raises(IndexError, match="bit 8"):
        roi.decode(np.zeros((2, 2, 2), np.uint8), 8)
    with pytest.raises(IndexError, match="bit 16"):
        roi.decode_torch(torch.zeros((2, 2, 2), dtype=torch.int16), 16)
    with pytest.raises(TypeError):
        roi.to_torch(np.zeros((2, 2, 2), np.int32))


def test_decode_torch_batched_channel_axis():
    masks = _masks(5, shape=(3, 4, 5), seed=1)
    codes = roi.to_torch(roi.encode(masks))
    batch = torch.stack([codes, codes])  # (B, *spatial)
    out = roi.decode_torch(batch, [4, 0, 2], dtype=torch.float32)
    assert out.shape == (2, 3, 3, 4, 5) and out.dtype == torch.float32
    np.testing.assert_array_equal(out[1, 0].numpy(), masks[4])
    np.testing.assert_array_equal(out[0, 2].numpy(), masks[2])


# ------------------------------------------------------------------------------------- properties

@st.composite
def mask_stacks(draw):
    n = draw(st.integers(0, 64))
    shape = draw(st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)))
    masks = draw(arrays(np.bool_, (n, *shape)))
    return masks, shape


@settings(max_examples=60, deadline=None)
@given(mask_stacks())
def test_property_numpy_and_torch_lossless(ms):
    masks, shape = ms
    n = masks.shape[0]
    codes = roi.encode(masks, shape=shape)
    assert codes.dtype == roi.code_dtype(n)
    np.testing.assert_array_equal(roi.decode_all(codes, n), masks)
    for k in range(n):
        np.testing.assert_array_equal(roi.decode(codes, k), masks[k])
    t = roi.to_torch(codes)
    np.testing.assert_array_equal(roi.decode_torch(t, list(range(n))).numpy(), masks)
    # unused high bits stay clear
    if 0 < n < codes.dtype.itemsize * 8:
        assert int(codes.max()) >> n == 0


def test_lr_pairs_of_names_with_l_and_r_as_words():
    # names the aliases do not know are kept as written ('Hippocampus L'); the side as a word of its
    # own (space, hyphen, underscore, brackets; first or last; any case) makes a pair too, else a
    # flip leaves 'Hippocampus L' on the patient's right
    for left, right in (("Hippocampus L", "Hippocampus R"), ("L Carotid", "R Carotid"),
                        ("Lacrimal-Lt", "Lacrimal-Rt"), ("hippocampus_l", "hippocampus_r"),
                        ("Temporal Lobe (L)", "Temporal Lobe (R)"), ("Lobe Left", "Lobe Right"),
                        ("LeftParotid", "RightParotid"), ("Parotid_L", "Parotid_R")):
        assert roi.lr_pairs(["PTV70", left, "Brainstem", right]) == [(1, 3)], (left, right)
    # a letter inside a word is no side: vertebrae L1 / R1, 'Lips' beside 'Rips'
    assert roi.lr_pairs(["L1", "R1", "Lips", "Rips", "Larynx"]) == []


def test_lr_pairs_of_a_roi_set_keep_kind_and_prescription():
    """Mirroring swaps a pair's labels: two targets of other prescriptions ('PTV L' 70 Gy, 'PTV_R'
    56 Gy) are no pair (the mirrored 70 Gy target would be labelled 56 Gy), nor a target and an
    organ; OARs and targets of one prescription are."""
    from dosepred.patient import Roi, RoiSet

    rs = RoiSet((Roi("PTV L", "target", 70.0), Roi("PTV R", "target", 56.0), Roi("PTV_L", "target", 63.0),
                 Roi("PTV_R", "target", 63.0), Roi("Parotid L"), Roi("Parotid R"),
                 Roi("Node Lt", "target", 56.0), Roi("Node Rt")))
    assert roi.lr_pairs(rs) == [(2, 3), (4, 5)]
    assert roi.lr_pairs(rs.names) == [(0, 1), (2, 3), (4, 5), (6, 7)]  # names alone: by name only


@pytest.mark.parametrize("left, right", [
    ("Hippocampus Lft", "Hippocampus Rgt"), ("Hippocampus_Sin", "Hippocampus_Dex"),
    ("Parotis links", "Parotis rechts"), ("Parotida izq", "Parotida der"),
    ("Parótida Izquierda", "Parótida Derecha"), ("Parotida_Izda", "Parotida_Dcha"),
    ("Parotide sx", "Parotide dx"), ("PAROTIDA_IZQ", "PAROTIDA_DER"), ("Parotide gauche", "Parotide droite")])
def test_a_flip_swaps_the_side_words_a_clinic_writes(left, right):
    """Names kept as written (the aliases know no 'Parotida') whose side is a word the aliases read
    (lft/rgt, sin/dex, links/rechts) or a clinic writes (izq/der, sx/dx, ...): a flip without swapping
    them left 'Parotida izq' on the patient's right in every mirrored crop and test-time pass."""
    assert roi.lr_pairs(["PTV70", left, "Brainstem", right]) == [(1, 3)], (left, right)
    # the masks by hand: the left organ at the high end of the left-right axis (axis 0 here)
    m = np.zeros((2, 8, 3, 3), bool)
    m[0, 6:8] = True  # left
    m[1, 0:3] = True  # right
    codes = roi.encode(m, shape=m.shape[1:])
    out = roi.decode_all(roi.mirror_codes(codes, 0, roi.lr_pairs([left, right])), 2)
    # mirrored, the organ that was on the right (index 0..2) lies at 5..7 and now carries the left name
    np.testing.assert_array_equal(out[0], m[1][::-1])
    np.testing.assert_array_equal(out[1], m[0][::-1])
    # a letter or word inside another word is still no side ('Dexamethasone', 'Sinus')
    assert roi.lr_pairs(["Sinus", "Dexus", "Derma", "Izquierdo_ring"]) == []



@pytest.mark.parametrize("left, right", [
    ("Parotis li", "Parotis re"), ("Nerf optique G", "Nerf optique D"), ("Cochlea_Li", "Cochlea_Re"),
    ("PAROTIDE G", "PAROTIDE D")])
def test_a_flip_swaps_german_and_french_abbreviations(left, right):
    """German 'li' / 're' and French 'G' / 'D' after an organ were no side words: such a pair kept as
    written (an ROI the aliases do not know, or a model trained on such names) was mirrored without
    swapping its names, the left name on the patient's right in every mirrored crop and test-time pass."""
    assert roi.lr_pairs(["PTV70", left, "Brainstem", right]) == [(1, 3)], (left, right)
    _assert_mirror_swaps(left, right)
    assert roi.lr_pairs(["Gland", "Dland", "Relief", "Lift"]) == []  # letters inside words are no side


def _assert_mirror_swaps(left: str, right: str) -> None:
    """Mirroring a left mask (high end of axis 0) and a right one (low end) swaps the two names' masks."""
    m = np.zeros((2, 8, 3, 3), bool)
    m[0, 6:8] = True  # left, at the high end of axis 0
    m[1, 0:3] = True  # right
    codes = roi.encode(m, shape=m.shape[1:])
    out = roi.decode_all(roi.mirror_codes(codes, 0, roi.lr_pairs([left, right])), 2)
    np.testing.assert_array_equal(out[0], m[1][::-1])
    np.testing.assert_array_equal(out[1], m[0][::-1])


@pytest.mark.parametrize("left, right", [
    ("Ojo izquierdo", "Ojo derecho"), ("Nervio optico izquierdo", "Nervio optico derecho"),
    ("Nerf optique gauche", "Nerf optique droit"), ("Occhio sinistro", "Occhio destro"),
    ("Olho esquerdo", "Olho direito"), ("NERVIO_OPTICO_IZQUIERDO", "NERVIO_OPTICO_DERECHO")])
def test_a_flip_swaps_masculine_side_words(left, right):
    """A Spanish, Italian, Portuguese or French organ of masculine gender takes the masculine side word
    (ojo izquierdo / derecho, nerf optique gauche / droit): SIDE_WORD_PAIRS held only the feminine
    forms, so such a pair was mirrored unswapped, the left name on the patient's right in every
    mirrored crop and test-time pass."""
    assert roi.lr_pairs(["PTV70", left, "Brainstem", right]) == [(1, 3)], (left, right)
    _assert_mirror_swaps(left, right)


@pytest.mark.parametrize("left, right", [
    ("Parotida Izq", "Parotida Dcha"), ("Parotida_izda", "Parotida_der"), ("Ojo izq", "Ojo derecho"),
    ("Parotide sinistra", "Parotide dx"), ("PAROTIDA IZQUIERDA", "PAROTIDA DCHA")])
def test_a_flip_swaps_side_words_of_two_abbreviations(left, right):
    """Spanish clinics pair the abbreviations as they come ('izq.' with 'dcha.', 'izda.' with 'der.'),
    Italian ones a word with an abbreviation: a pair whose two side words are not one of SIDE_WORD_PAIRS
    was mirrored unswapped, though the side check reads both sides. The one name of the other side
    that differs by its side word alone is the pair; two such names are no guess."""
    assert roi.lr_pairs(["PTV70", left, "Brainstem", right]) == [(1, 3)], (left, right)
    assert roi.lr_pairs(["PTV70", right, "Brainstem", left]) == [(1, 3)], (left, right)
    _assert_mirror_swaps(left, right)
    # two names of the other side for one: no guess
    assert roi.lr_pairs(["Ojo izq", "Ojo derecho", "Ojo dcha"]) == []
    # each name's own partner first: izq / der and izda / dcha, not izq / dcha
    names = ["Parotida izq", "Parotida dcha", "Parotida der", "Parotida izda"]
    assert roi.lr_pairs(names) == [(0, 2), (1, 3)]
