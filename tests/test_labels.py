"""Label table: SynthSeg 2.0 labels, source -> channel lookup, dseg.tsv round trips."""

import re
from pathlib import Path

import pytest
import torch

from l2s_pipelines.errors import InputError
from l2s_pipelines.labels import IGNORE_INDEX, LabelTable, generation_classes

SYNTHSEG2 = [0, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28, 41, 42, 43,
             44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60]
GEN_TSV = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "label_maps" / "generation_labels.tsv")


def test_default_table_has_synthseg2_labels_in_order():
    t = LabelTable.default()
    assert t.values == SYNTHSEG2
    assert t.names[t.index_of(17)] == "Left-Hippocampus"
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in t.colors)
    assert t.tissue[t.index_of(2)] == "white_matter" and t.tissue[t.index_of(16)] == "brainstem"
    # left/right partners are symmetric; midline labels are their own partner
    for v, p in zip(t.values, t.lr_partner):
        assert t.lr_partner[t.index_of(p)] == v
    assert t.lr_partner[t.index_of(14)] == 14 and t.lr_partner[t.index_of(17)] == 53


def test_value_lut_maps_lesions_unknowns_and_ignore():
    t = LabelTable.default()
    lut = t.value_lut(530)
    assert lut.dtype == torch.long and lut.shape == (531,)
    assert lut[25] == t.index_of(2) and lut[57] == t.index_of(41)  # lesions -> white matter
    assert lut[255] == IGNORE_INDEX
    assert lut[502] == 0 and lut[30] == 0  # extra-cerebral, vessel -> background
    assert [int(lut[v]) for v in SYNTHSEG2] == list(range(33))
    mapped = t.source_to_target(torch.tensor([[0, 60], [255, 57]]))
    assert mapped.tolist() == [[0, 32], [IGNORE_INDEX, t.index_of(41)]]


def test_channel_flip_lut_is_an_involution():
    t = LabelTable.default()
    f = t.channel_flip_lut()
    assert torch.equal(f[f], torch.arange(len(t)))
    assert f[t.index_of(2)] == t.index_of(41) and f[t.index_of(16)] == t.index_of(16)


def test_dict_and_tsv_round_trips(tmp_path):
    t = LabelTable.default()
    assert LabelTable.from_dict(t.to_dict()) == t
    assert LabelTable.from_dict(t.to_dict()["labels"]) == t  # manifest list form
    full = LabelTable.from_tsv(t.to_tsv(tmp_path / "full.tsv", full=True))
    assert full == t
    bids = t.to_tsv(tmp_path / "dseg.tsv")
    assert bids.read_text().splitlines()[0].split("\t") == ["index", "name", "abbreviation", "color"]
    back = LabelTable.from_tsv(bids)
    assert (back.values, back.names, back.colors) == (t.values, t.names, t.colors)


def test_bad_tables_raise(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text("value\tlabel\n1\tx\n")
    with pytest.raises(InputError, match="bad.tsv"):
        LabelTable.from_tsv(p)
    with pytest.raises(ValueError):
        LabelTable(values=[0, 2], names=["bg", "wm"], abbreviations=["bg", "wm"],
                   colors=["#000000", "#ffffff"], lr_partner=[0, 41], tissue=["background", "white_matter"])


def test_generation_classes_default_merges_left_right():
    cls = generation_classes([0, 2, 41, 17, 53, 16, 25, 57, 502])
    assert cls[2] == cls[41] and cls[17] == cls[53] and cls[25] == cls[57]
    assert len({cls[0], cls[2], cls[17], cls[16], cls[25], cls[502]}) == 6
    assert sorted(set(cls.values())) == list(range(6))


def test_generation_classes_from_tsv():
    cls = generation_classes([0, 17, 18, 53, 4, 5, 999], GEN_TSV)
    assert cls[17] == cls[18] != cls[53]  # hippocampus with amygdala, left separate from right
    assert cls[4] == cls[5]
    assert cls[999] not in {cls[v] for v in (0, 17, 53, 4)}  # unknown value: own class
    with pytest.raises(InputError, match="nothere"):
        generation_classes([0], "/nonexistent/nothere.tsv")


def test_present_values_match_numpy_unique_for_every_integer_layout():
    """The look-up path (8/16-bit maps, signed and unsigned, C or Fortran order) and the
    np.unique path give the values np.unique gives."""
    import numpy as np

    from l2s_pipelines.labels import present_values

    rng = np.random.default_rng(0)
    base = rng.choice([-3, 0, 2, 41, 127], size=(7, 6, 5))
    for dtype in (np.int8, np.int16, np.int32, np.float32):
        for lab in (base.astype(dtype), np.asfortranarray(base.astype(dtype))):
            assert present_values(lab) == set(np.unique(lab).astype(int).tolist()) == {-3, 0, 2, 41, 127}
    unsigned = np.abs(base)
    for dtype in (np.uint8, np.uint16):
        assert present_values(unsigned.astype(dtype)) == {0, 2, 3, 41, 127}
