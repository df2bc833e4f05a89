"""Benchmark dataset kinds: case listing, organ mapping and reference loading."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image, ImageDraw

from salip.apps.bench.datasets import (
    KINDS,
    expand_pattern,
    image_shape,
    load_dataset,
    load_reference,
    load_references,
    mask_threshold,
)
from salip.core.errors import BenchmarkError
from salip.core.label_sets import LABEL_SETS, totalseg_files
from salip.io import file_stem
from tests.conftest import SLICES, TOTALSEG, require_data


def _seg() -> np.ndarray:
    return np.asarray(nib.load(require_data(TOTALSEG / "example_seg.nii.gz")).dataobj)


def _totalseg_spec(label_names: str) -> dict:
    return {
        "name": "totalseg-example",
        "kind": "nifti-multilabel",
        "images": "example_ct_sm.nii.gz",
        "labels": "example_seg.nii.gz",
        "label_names": label_names,
    }


def _save_nifti(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def _save_png(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data).save(path)
    return path


# --------------------------------------------------------------------------- shared data


def test_multilabel_with_json_name_table_matches_the_label_set():
    require_data(TOTALSEG)
    (case,) = load_dataset(_totalseg_spec("labels_total.json"), TOTALSEG)
    assert case.case_id == "example_ct_sm" and case.dataset == "totalseg-example"
    assert {"liver", "spleen", "kidney_left", "kidneys", "lungs"} <= set(case.organs)
    assert case.values == LABEL_SETS["totalseg"].labels  # lobes -> lungs, sides -> pairs
    assert "femoral_heads" in case.approximate
    assert image_shape(case) == (122, 101, 30)

    seg = _seg()
    refs = load_references(case)
    assert refs["liver"].dtype == bool and refs["liver"].shape == seg.shape
    np.testing.assert_array_equal(refs["liver"], seg == 5)
    np.testing.assert_array_equal(refs["lungs"], np.isin(seg, range(10, 15)))
    np.testing.assert_array_equal(refs["kidneys"], np.isin(seg, (2, 3)))
    np.testing.assert_array_equal(load_reference(case, "hepar"), seg == 5)  # synonym

    (by_set,) = load_dataset(_totalseg_spec("totalseg"), TOTALSEG)
    assert by_set.organs == case.organs and by_set.modality == "ct"
    for organ, ref in load_references(by_set).items():
        np.testing.assert_array_equal(ref, refs[organ], err_msg=organ)


def test_multilabel_organ_selection_and_organ_map():
    require_data(TOTALSEG)
    spec = _totalseg_spec("labels_total.json") | {"organs": ["Liver", "both kidneys"]}
    (case,) = load_dataset(spec, TOTALSEG)
    assert case.organs == ("liver", "kidneys")
    spec = _totalseg_spec("labels_total.json") | {
        "organs": ["heart"],
        "organ_map": {"heart": "liver", "pulmonary_vein": "heart"},
    }
    (case,) = load_dataset(spec, TOTALSEG)
    assert case.values == {"heart": (53,)}
    spec["organs"] = ["liver"]  # liver = liver + the remapped heart class
    assert load_dataset(spec, TOTALSEG)[0].values == {"liver": (5, 51)}


def test_totalseg_files_agree_with_the_label_set():
    names = {
        int(k): v
        for k, v in json.loads(require_data(TOTALSEG / "labels_total.json").read_text()).items()
    }
    values = {name: value for value, name in names.items()}
    ls = LABEL_SETS["totalseg"]
    assert set(totalseg_files()) == set(ls.labels)
    for organ, classes in totalseg_files().items():
        assert sorted(values[c] for c in classes) == sorted(ls.labels[organ]), organ


def test_image_mask_pairs_on_slices():
    require_data(SLICES)
    spec = {
        "name": "slices",
        "kind": "image-mask-pairs",
        "images": "images/*.png",
        "masks": "{dir}/../masks/{stem}_liver.png",
        "target": "liver",
    }
    cases = load_dataset(spec, SLICES)
    assert [c.case_id for c in cases] == ["amos_0004_75", "amos_0006_90"]
    for case in cases:
        assert case.organs == ("liver",)
        ref = case.reference("liver")
        png = np.asarray(Image.open(SLICES / "masks" / f"{case.case_id}_liver.png"))
        assert ref.dtype == bool and ref.shape == (512, 512) == case.shape()
        np.testing.assert_array_equal(ref, png > 127)
        assert ref.any()
    assert len(load_dataset(spec, SLICES, limit=1)) == 1


# --------------------------------------------------------------------------- synthetic layouts


def _per_organ_layout(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """Two TotalSegmentator-style cases; returns case -> class -> mask."""
    rng = np.random.default_rng(0)
    classes = [
        "liver",
        "kidney_left",
        "kidney_right",
        "lung_upper_lobe_left",
        "lung_lower_lobe_left",
        "lung_upper_lobe_right",
        "lung_middle_lobe_right",
        "lung_lower_lobe_right",
        "trachea",
    ]
    layout = {}
    for case in ("s0002", "s0001"):
        _save_nifti(root / case / "ct.nii.gz", np.zeros((6, 5, 4), dtype=np.int16))
        masks = {c: (rng.random((6, 5, 4)) > 0.7).astype(np.uint8) for c in classes}
        for name, mask in masks.items():
            _save_nifti(root / case / "segmentations" / f"{name}.nii.gz", mask)
        layout[case] = masks
    (root / "meta.csv").write_text("image_id\n")
    (root / "not_a_case").mkdir()
    return layout


def test_nifti_per_organ(tmp_path):
    layout = _per_organ_layout(tmp_path / "ts")
    spec = {"name": "ts", "kind": "nifti-per-organ", "root": "ts"}
    cases = load_dataset(spec, tmp_path)
    assert [c.case_id for c in cases] == ["s0001", "s0002"]
    case = cases[0]
    assert case.organs == (
        "kidneys", "kidney_left", "kidney_right", "liver", "lungs", "lung_left", "lung_right",
    )  # fmt: skip
    masks = layout["s0001"]
    refs = load_references(case)
    np.testing.assert_array_equal(refs["liver"], masks["liver"] > 0)
    np.testing.assert_array_equal(
        refs["lung_left"], (masks["lung_upper_lobe_left"] | masks["lung_lower_lobe_left"]) > 0
    )
    lobes = [c for c in masks if c.startswith("lung_")]
    np.testing.assert_array_equal(refs["lungs"], np.any([masks[c] > 0 for c in lobes], axis=0))
    np.testing.assert_array_equal(
        refs["kidneys"], (masks["kidney_left"] | masks["kidney_right"]) > 0
    )
    assert len(load_dataset(spec, tmp_path, limit=1)) == 1

    spec |= {"organs": ["lungs"], "organ_map": {"trachea": "lungs"}}
    (first, _) = load_dataset(spec, tmp_path)
    trachea = masks["trachea"] > 0
    np.testing.assert_array_equal(first.reference("lungs"), trachea)  # organ_map wins


def _msd_layout(root: Path, image: np.ndarray, name: str = "LITS") -> np.ndarray:
    label = np.zeros((6, 5, 4), dtype=np.uint8)
    label[1:3, 1:3, 1:3] = 1
    label[2, 2, 2] = 2
    label[4, 4, 3] = 2
    _save_nifti(root / "imagesTr" / "liver_1.nii.gz", image)
    _save_nifti(root / "labelsTr" / "liver_1.nii.gz", label)
    _save_nifti(root / "imagesTr" / "liver_0.nii.gz", image)
    _save_nifti(root / "labelsTr" / "liver_0.nii.gz", label)
    info = {
        "name": name,
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "training": [
            {"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"}
            for i in (1, 0)
        ],
        "test": ["./imagesTs/liver_9.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(info))
    return label


def test_msd_liver(tmp_path):
    label = _msd_layout(tmp_path / "Task03_Liver", np.zeros((6, 5, 4), dtype=np.int16))
    cases = load_dataset({"name": "msd", "kind": "msd", "root": "Task03_Liver"}, tmp_path)
    assert [c.case_id for c in cases] == ["liver_0", "liver_1"]
    case = cases[0]
    assert case.organs == ("liver",) and case.values == {"liver": (1, 2)} and case.channel == 0
    np.testing.assert_array_equal(case.reference("liver"), np.isin(label, (1, 2)))

    spec = {"name": "msd", "kind": "msd", "root": str(tmp_path / "Task03_Liver")}
    with pytest.raises(BenchmarkError, match="no reference for spleen.*it has: liver"):
        load_dataset(spec | {"organs": ["spleen"]}, tmp_path)
    assert load_dataset(spec | {"task": "msd_liver"}, Path("/"))[0].values == case.values


def test_msd_4d_image_records_channel(tmp_path):
    root = tmp_path / "Task05_Prostate"
    image = np.zeros((6, 5, 4, 2), dtype=np.float32)
    label = _msd_layout(root, image, name="PROSTATE")
    info = json.loads((root / "dataset.json").read_text())
    info["labels"] = {"0": "background", "1": "PZ", "2": "TZ"}
    (root / "dataset.json").write_text(json.dumps(info))
    spec = {"name": "p", "kind": "msd", "root": "Task05_Prostate", "channel": 1}
    case = load_dataset(spec, tmp_path)[0]
    assert case.channel == 1 and case.organs == ("prostate",) and case.modality == "mr"
    assert image_shape(case) == (6, 5, 4)
    np.testing.assert_array_equal(case.reference("prostate"), label > 0)
    bad = load_dataset(spec | {"channel": 2}, tmp_path)[0]
    with pytest.raises(BenchmarkError, match="channel 2 out of range.*0..1"):
        bad.reference("prostate")


def test_msd_unknown_task_lists_msd_sets(tmp_path):
    root = tmp_path / "Task02_Heart"
    _msd_layout(root, np.zeros((6, 5, 4), dtype=np.int16), name="LeftAtrium")
    info = json.loads((root / "dataset.json").read_text())
    info["labels"] = {"0": "background", "1": "left atrium"}
    (root / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(BenchmarkError, match="set `task` to one of: msd_liver, msd_prostate"):
        load_dataset({"name": "h", "kind": "msd", "root": str(root)}, tmp_path)


# --------------------------------------------------------------------------- 2D masks


def _pairs_spec(**extra: object) -> dict:
    spec = {
        "name": "pairs",
        "kind": "image-mask-pairs",
        "images": "img/*.png",
        "masks": "mask/{stem}_mask.png",
        "target": "fetal head",
    }
    return spec | extra


def test_fill_outline_fills_an_ellipse(tmp_path):
    _save_png(tmp_path / "img" / "hc.png", np.zeros((80, 100), dtype=np.uint8))
    outline = Image.new("L", (100, 80), 0)
    ImageDraw.Draw(outline).ellipse((10, 10, 89, 69), outline=255, width=2)
    outline.save(_save_png(tmp_path / "mask" / "hc_mask.png", np.zeros((1, 1), np.uint8)))
    (plain,) = load_dataset(_pairs_spec(), tmp_path)
    (filled,) = load_dataset(_pairs_spec(fill_outline=True), tmp_path)
    assert plain.organs == ("fetal_head",)
    ring, disc = plain.reference("fetal_head"), filled.reference("fetal_head")
    assert ring.shape == disc.shape == (80, 100)
    area = np.pi * 40 * 30  # semi-axes of the drawn ellipse
    assert ring.sum() < 0.15 * area
    assert abs(disc.sum() - area) < 0.05 * area
    assert (disc >= ring).all()


def test_thresholds_for_01_and_0255_masks(tmp_path):
    values = np.array([[0, 1, 100, 200], [255, 0, 0, 1]], dtype=np.uint8)
    _save_png(tmp_path / "img" / "a.png", np.zeros((2, 4, 3), dtype=np.uint8))
    _save_png(tmp_path / "mask" / "a_mask.png", values)
    (auto,) = load_dataset(_pairs_spec(), tmp_path)
    np.testing.assert_array_equal(auto.reference("fetal_head"), values > 127.5)
    (low,) = load_dataset(_pairs_spec(threshold=0), tmp_path)
    np.testing.assert_array_equal(low.reference("fetal_head"), values > 0)
    binary = np.array([[0, 1, 1, 0], [1, 0, 0, 1]], dtype=np.uint8)
    _save_png(tmp_path / "mask" / "a_mask.png", binary)
    np.testing.assert_array_equal(auto.reference("fetal_head"), binary == 1)
    rgb = np.zeros((2, 4, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    _save_png(tmp_path / "mask" / "a_mask.png", rgb)  # colour mask: first channel
    np.testing.assert_array_equal(auto.reference("fetal_head"), rgb[..., 0] > 0)
    assert mask_threshold(np.array([0, 1])) == 0.5
    assert mask_threshold(np.array([0, 255], dtype=np.uint8)) == 127.5
    assert mask_threshold(np.array([0, 65535], dtype=np.uint16)) == 32767.5


# --------------------------------------------------------------------------- patterns


def test_expand_pattern(tmp_path):
    base = tmp_path / "cfg"
    nii = tmp_path / "data" / "imgs" / "case_01.nii.gz"
    assert file_stem(nii) == "case_01" and file_stem(Path("a.b.png")) == "a.b"
    assert expand_pattern("labels/{stem}.nii.gz", nii, base) == base / "labels/case_01.nii.gz"
    assert expand_pattern("{dir}/../lbl/{stem}_seg.nii.gz", nii, base) == Path(
        f"{tmp_path}/data/lbl/case_01_seg.nii.gz"
    )
    png = Path("images/x.png")  # relative images are relative to base_dir
    assert expand_pattern("{dir}/{stem}_liver.png", png, base) == base / "images/x_liver.png"
    assert expand_pattern("seg.nii.gz", png, base) == base / "seg.nii.gz"
    assert expand_pattern("/abs/seg.nii.gz", png, base) == Path("/abs/seg.nii.gz")
    with pytest.raises(BenchmarkError, match=r"use only \{stem\}"):
        expand_pattern("{name}.png", png, base)


# --------------------------------------------------------------------------- errors


def test_unknown_kind_and_key(tmp_path):
    with pytest.raises(BenchmarkError, match="Did you mean: msd.*Valid kinds: " + ", ".join(KINDS)):
        load_dataset({"name": "x", "kind": "msdd"}, tmp_path)
    with pytest.raises(BenchmarkError, match="no `name`"):
        load_dataset({"kind": "msd"}, tmp_path)
    spec = _pairs_spec(mask="x")
    with pytest.raises(BenchmarkError, match="unknown key.*mask.*Did you mean: masks.*Valid keys"):
        load_dataset(spec, tmp_path)
    with pytest.raises(BenchmarkError, match="missing key `target`"):
        load_dataset({k: v for k, v in _pairs_spec().items() if k != "target"}, tmp_path)
    with pytest.raises(BenchmarkError, match="`threshold` must be a number"):
        load_dataset(_pairs_spec(threshold="high"), tmp_path)


def test_organ_errors(tmp_path):
    require_data(TOTALSEG)
    spec = _totalseg_spec("labels_total.json") | {"organs": ["fetal_head"]}
    with pytest.raises(
        BenchmarkError, match="no reference for fetal_head.*it has: spleen, kidneys"
    ):
        load_dataset(spec, TOTALSEG)
    spec = _totalseg_spec("labels_total.json") | {"organ_map": {"trachea": "esophagos"}}
    with pytest.raises(BenchmarkError, match="organ_map.*Did you mean: esophagus"):
        load_dataset(spec, TOTALSEG)
    spec = _totalseg_spec("labels_total.json") | {"organ_map": {"tracheaa": "esophagus"}}
    with pytest.raises(BenchmarkError, match="not a class of this dataset. Did you mean: trachea"):
        load_dataset(spec, TOTALSEG)
    with pytest.raises(BenchmarkError, match="Did you mean: btcv"):
        load_dataset(_totalseg_spec("btvc"), TOTALSEG)
    with pytest.raises(BenchmarkError, match="target.*Did you mean: liver"):
        load_dataset(_pairs_spec(target="livr"), tmp_path)


def test_missing_label_and_shape_mismatch_fail_at_load_time(tmp_path):
    _save_nifti(tmp_path / "a.nii.gz", np.zeros((4, 4, 3), dtype=np.int16))
    _save_nifti(tmp_path / "b.nii.gz", np.zeros((4, 4, 3), dtype=np.int16))
    _save_nifti(tmp_path / "a_seg.nii.gz", np.zeros((4, 4, 2), dtype=np.uint8))
    spec = {
        "name": "m",
        "kind": "nifti-multilabel",
        "images": "?.nii.gz",
        "labels": "{stem}_seg.nii.gz",
        "label_names": "btcv",
    }
    a, b = load_dataset(spec, tmp_path)  # listing reads no label
    with pytest.raises(BenchmarkError, match=r"case m/a:.*shape \(4, 4, 2\).*\(4, 4, 3\)"):
        a.reference("liver")
    with pytest.raises(BenchmarkError, match="case m/b: reference file .*b_seg.nii.gz not found"):
        b.reference("liver")
    with pytest.raises(BenchmarkError, match="no reference for 'brain'"):
        b.reference("brain")
    (tmp_path / "a_seg.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(BenchmarkError, match="cannot read reference"):
        a.reference("liver")
    with pytest.raises(BenchmarkError, match="no image file matches"):
        load_dataset(spec | {"images": "none/*.nii.gz"}, tmp_path)


def test_limit_and_name_override(tmp_path):
    for i in range(3):
        _save_png(tmp_path / "img" / f"c{i}.png", np.zeros((3, 3), dtype=np.uint8))
    cases = load_dataset(_pairs_spec(), tmp_path, "override", limit=2)
    assert [c.case_id for c in cases] == ["c0", "c1"]
    assert {c.dataset for c in cases} == {"override"}
    with pytest.raises(BenchmarkError, match="limit"):
        load_dataset(_pairs_spec(), tmp_path, limit=0)


def test_name_tables_in_both_orientations_and_organ_map_needs_one(tmp_path):
    _save_nifti(tmp_path / "img.nii.gz", np.zeros((3, 3, 2), dtype=np.int16))
    label = np.zeros((3, 3, 2), dtype=np.uint8)
    label[0, 0, 0], label[1, 1, 1], label[2, 2, 1] = 1, 2, 3
    _save_nifti(tmp_path / "img_seg.nii.gz", label)
    table = {"labels": {"background": 0, "Liver": 1, "left kidney": 2, "kidney_right": 3}}
    (tmp_path / "dataset.json").write_text(json.dumps(table))
    spec = {
        "name": "n",
        "kind": "nifti-multilabel",
        "images": "img.nii.gz",
        "labels": "{stem}_seg.nii.gz",
        "label_names": "dataset.json",
    }
    (case,) = load_dataset(spec, tmp_path)
    assert case.values == {
        "kidneys": (2, 3),
        "kidney_left": (2,),
        "kidney_right": (3,),
        "liver": (1,),
    }
    np.testing.assert_array_equal(case.reference("kidneys"), np.isin(label, (2, 3)))
    with pytest.raises(BenchmarkError, match="organ_map needs label_names to be a JSON"):
        load_dataset(spec | {"label_names": "amos", "organ_map": {"x": "liver"}}, tmp_path)
