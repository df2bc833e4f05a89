"""Label-set mappings against TotalSegmentator's own name tables, and `salip organs`."""

from __future__ import annotations

import json

import pytest

from salip.apps.cli import main
from salip.core.errors import OrganError
from salip.core.label_sets import LABEL_SETS, get_label_sets, label_values
from salip.core.organs import ORGANS, get_organ
from tests.conftest import TOTALSEG, require_data


def _table(name: str) -> dict[int, str]:
    data = json.loads(require_data(TOTALSEG / name).read_text())
    return {int(k): v for k, v in data.items()}


@pytest.mark.parametrize(
    ("label_set", "table", "size"),
    [("totalseg", "labels_total.json", 117), ("totalseg_mr", "labels_total_mr.json", 50)],
)
def test_totalseg_mappings_agree_with_the_name_tables(label_set, table, size):
    names = _table(table)
    assert len(names) == size
    ls = LABEL_SETS[label_set]
    for organ, values in ls.labels.items():
        found = [names[v] for v in values]
        pair = get_organ(organ)
        if pair.parts:  # a pair is the union of its sides
            assert sorted(values) == sorted(v for p in pair.parts for v in ls.labels[p])
        elif organ.startswith("lung_") and label_set == "totalseg":  # lobes
            side = organ.split("_")[1]
            assert all(n.startswith("lung_") and n.endswith(f"_{side}") for n in found)
            assert len(found) == (2 if side == "left" else 3)
        elif organ in ls.approximate:
            side = organ.rsplit("_", 1)[1]
            assert found == [f"femur_{side}"]
        else:
            assert found == [organ], organ
    # Every vocabulary organ that TotalSegmentator names is mapped.
    for name in names.values():
        if name in ORGANS:
            assert name in ls.labels, name


def test_every_mapping_names_vocabulary_organs():
    for ls in LABEL_SETS.values():
        assert set(ls.labels) <= set(ORGANS), ls.name
        assert set(ls.approximate) <= set(ls.labels), ls.name
        for values in ls.labels.values():
            assert values and all(v > 0 for v in values)


def test_btcv_amos_and_msd_tables():
    btcv, amos = LABEL_SETS["btcv"], LABEL_SETS["amos"]
    singles = lambda ls: {o: v for o, v in ls.labels.items() if len(v) == 1}  # noqa: E731
    assert sorted(v for (v,) in singles(btcv).values()) == list(range(1, 14))
    assert sorted(v for (v,) in singles(amos).values()) == list(range(1, 16))
    assert label_values("btcv", "portal_vein_and_splenic_vein") == (10,)
    assert label_values("amos", "duodenum") == (13,) and "prostate" in amos.approximate
    assert label_values("msd_liver", "liver") == (1, 2)  # tumour is part of the organ
    assert [ls.name for ls in get_label_sets("msd")] == [
        "msd_liver", "msd_prostate", "msd_pancreas", "msd_hepatic_vessel", "msd_spleen",
    ]  # fmt: skip
    assert get_label_sets("TotalSegmentator")[0].name == "totalseg"
    with pytest.raises(OrganError, match="Did you mean: btcv"):
        get_label_sets("btvc")
    with pytest.raises(OrganError, match="has no label for 'brain'"):
        label_values("btcv", "brain")


def test_organs_command(capsys):
    assert main(["organs"]) == 0
    out = capsys.readouterr().out
    for name in ORGANS:
        assert f"\n{name} " in out
    assert "pair of kidney_left + kidney_right" in out
    assert main(["organs", "--labels", "totalseg"]) == 0
    out = capsys.readouterr().out
    assert "lung_left                      10+11" in out
    assert "femoral_head_left              75  (approximate:" in out
    assert main(["organs", "--labels", "nope"]) == 1
    assert "unknown label set 'nope'" in capsys.readouterr().err


def test_unknown_organ_suggests_close_names():
    with pytest.raises(OrganError, match="Did you mean: kidney_left"):
        get_organ("kidny left")
    with pytest.raises(OrganError, match="Did you mean: celiac_trunk"):
        get_organ("celiac trunc")
