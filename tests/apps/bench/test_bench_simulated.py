"""The benchmark's ``simulated`` method kind: strategies on simulated engines, no model.

A small run over the shared CT crop (and 2D slices that have no full label map) checks that
the rows run without checkpoints, carry the oracle mark, report the strategy's work, and
recover the organs at noise none; config mistakes and label maps are checked alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from salip.api.factory import CaseInput, build
from salip.apps.bench.datasets import image_shape, load_dataset, load_label_map, load_references
from salip.apps.bench.kinds import BENCH_METHODS, simulation
from salip.apps.bench.methods import make_method
from salip.apps.bench.runner import CASE_COLUMNS, WORK_COLUMNS, run_benchmark
from salip.core.config import SegmentConfig
from salip.core.errors import BenchmarkError, ConfigError
from salip.core.organs import get_organ
from tests.conftest import SLICES, TOTALSEG, require_data

ORGANS = ["liver", "spleen", "kidney_left", "kidney_right", "aorta"]
ROWS = ["slices-none", "volume-none"]


def _config(folder: Path) -> Path:
    require_data(TOTALSEG / "example_ct_sm.nii.gz")
    require_data(SLICES / "images")
    text = f"""
[metrics]
bootstrap_resamples = 20
worst_cases = 1

[[methods]]
name = "slices-none"
method = "simulated"
strategy = "slices"
noise = "none"

[[methods]]
name = "volume-none"
method = "simulated"
strategy = "volume"
noise = "none"
seed = 0

[[datasets]]
name = "ct"
kind = "nifti-multilabel"
images = "{TOTALSEG}/example_ct_sm.nii.gz"
labels = "{{dir}}/example_seg.nii.gz"
label_names = "{TOTALSEG}/labels_total.json"
organs = {json.dumps(ORGANS)}

[[datasets]]
name = "slices"
kind = "image-mask-pairs"
images = "{SLICES}/images/*.png"
masks = "{{dir}}/../masks/{{stem}}_liver.png"
target = "liver"
modality = "ct"
"""
    path = folder / "simulated.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("simbench")
    config = _config(folder)

    def refuse(*args, **kwargs):
        raise AssertionError("a simulated run loaded a model")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SALIP_HOME", str(folder / "home"))  # no checkpoint there
        mp.setattr("salip.api.factory.load_models", refuse)
        result = run_benchmark(config, out=folder / "out")
    return config, result


def test_simulated_rows_run_without_models_and_carry_the_oracle_mark(run):
    _, result = run
    assert (result.computed, result.reused) == (6, 0)  # 2 ok, 4 error records
    cases = pd.read_csv(result.out / "cases.csv", keep_default_na=False, dtype=str)
    assert list(cases.columns) == list(CASE_COLUMNS)
    assert set(cases.uses_ground_truth) == {"True"}
    markdown = (result.out / "summary.md").read_text()
    assert all(f"| {row} † |" in markdown for row in ROWS)
    run_json = json.loads((result.out / "run.json").read_text())
    assert run_json["models"] == {} and run_json["device"] == "cpu"
    extra = {m["name"]: m["extra"] for m in run_json["methods"]}
    assert extra["slices-none"] == {
        "noise": "none",
        "noise_params": extra["volume-none"]["noise_params"],
        "seed": 0,
    }
    assert extra["slices-none"]["noise_params"]["drop_rate"] == 0.0


def test_cases_report_strategy_work_and_recover_organs_at_noise_none(run):
    _, result = run
    text = pd.read_csv(result.out / "cases.csv", keep_default_na=False, dtype=str)
    ok = text[text.status == "ok"]
    assert set(ok.dataset) == {"ct"} and len(ok) == 2 * len(ORGANS)
    for column in WORK_COLUMNS:
        assert all(re.fullmatch(r"\d+", v) for v in ok[column]), column
    cases = pd.read_csv(result.out / "cases.csv")
    ct = cases[cases.dataset == "ct"]
    first = ct.groupby("method").first()
    assert first.loc["slices-none", "strategy"] == "slices"
    assert first.loc["volume-none", "strategy"] == "volume"
    assert first.loc["volume-none", "proposal_slices"] < first.loc["slices-none", "proposal_slices"]
    assert first.loc["slices-none", "proposal_slices"] == 30  # every slice of the crop
    dice = ct.set_index(["method", "organ"]).dice
    assert dice["slices-none", "liver"] >= 0.95
    # The volume strategy seeds from one region per key slice; ties between the liver's
    # pure parts now break at random, so a seed can land on a lobe tip (issue 24's
    # simulator): 0.88 here, against 0.999 for slices.
    assert dice["volume-none", "liver"] >= 0.85
    assert (ct.dice > 0.8).all()
    assert (ct.device == "cpu").all() and ct.peak_gpu_mb.isna().all()


def test_a_case_without_a_full_label_map_is_a_recorded_case_error(run):
    _, result = run
    cases = pd.read_csv(result.out / "cases.csv", keep_default_na=False, dtype=str)
    errors = cases[cases.dataset == "slices"]
    assert len(errors) == 2 * 2 and set(errors.status) == {"error"}
    assert all("datasets have no full label map" in e and "\n" not in e for e in errors.error)
    assert set(errors.encoded_slices) == {""}
    assert result.errors == 4


def test_rerun_reuses_results_and_noise_settings_are_in_the_fingerprint(run, tmp_path):
    config, result = run
    again = run_benchmark(config, out=result.out)
    assert (again.computed, again.reused) == (4, 2)  # the error rows are retried
    text = config.read_text().replace('noise = "none"\nseed = 0', 'noise = "none"\nseed = 1')
    changed = tmp_path / "changed.toml"
    changed.write_text(text)
    other = run_benchmark(changed, out=result.out)
    assert (other.computed, other.reused) == (5, 1)  # volume-none is recomputed


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"noise": "loud"},
            r"unknown noise preset 'loud'.* Valid presets: none, low, moderate, high",
        ),
        ({"noise": 3}, r"noise must be the name of a preset \(none, low, moderate, high\)"),
        ({"drop_rate": 2}, r"noise drop_rate must be a probability in \[0, 1\], got 2"),
        ({"jitter_mm": -1}, r"jitter_mm must be a number >= 0"),
        ({"jitter_px": 1}, r"jitter_px not read.*Did you mean: jitter_mm"),
        ({"seed": -1}, r"seed must be a whole number >= 0"),
        ({"nosie": "low"}, r"setting\(s\) nosie not read.*Did you mean: noise\?.*Valid settings:"),
        ({"points_per_side": 8}, r"points_per_side not read by this method"),
        ({"strategy": "walk"}, r"strategy"),
    ],
)
def test_bad_simulated_settings_list_the_valid_ones(settings, message):
    table = {"name": "sim", "method": "simulated", **settings}
    with pytest.raises(BenchmarkError, match=message) as info:
        make_method(table, {})
    assert str(info.value).startswith("method 'sim' (simulated): ")
    if "nosie" in settings:
        valid = str(info.value).split("Valid settings: ")[1]
        assert all(key in valid for key in ("noise", "seed", "drop_rate", "strategy", "axis"))


def test_simulated_settings_defaults_and_overrides():
    method = make_method({"name": "s", "method": "simulated"}, {})
    assert method.extra_info["noise"] == "moderate" and method.extra_info["seed"] == 0
    assert method.config.assembly.largest_component is True  # as for salip
    assert not method.needs_sam and method.needs_label_map and method.uses_ground_truth
    low = simulation({"noise": "Low", "drop_rate": 0.5, "seed": 3})
    assert (low.preset, low.noise.drop_rate, low.noise.split_rate, low.seed) == ("low", 0.5, 0.1, 3)


def test_the_factory_refuses_missing_inputs():
    case = CaseInput((get_organ("liver"),), "ct", is_2d=True)
    with pytest.raises(ConfigError, match="needs the case's full reference label map"):
        build("simulated", None, SegmentConfig(), case, kinds=BENCH_METHODS)
    with pytest.raises(ConfigError, match="needs the SAM model"):
        build("sam-unprompted", None, SegmentConfig(), case, kinds=BENCH_METHODS)
    with pytest.raises(ConfigError, match="has no setting.*noise.*Its own settings: none"):
        build(
            "sam-unprompted", None, SegmentConfig(), case, extra={"noise": "low"},
            kinds=BENCH_METHODS,
        )  # fmt: skip
    labels = np.zeros((40, 50), dtype=np.uint8)
    labels[10:30, 10:40] = 5
    full = CaseInput(case.organs, "ct", True, label_map=(labels, {5: "liver"}))
    built = build(
        "simulated", None, SegmentConfig(), full, extra={"noise": "none"}, kinds=BENCH_METHODS
    )
    assert built.identity["simulated"]["noise"] == "none" and built.strategy.name == "slices"


def test_dicom_series_cases_and_their_full_label_map(tmp_path):
    dicom = require_data(TOTALSEG / "example_ct_dicom")
    table = {
        "name": "dicom",
        "kind": "nifti-multilabel",
        "images": str(dicom),
        "labels": "{dir}/example_seg_dicom.nii.gz",
        "label_names": str(TOTALSEG / "labels_total.json"),
        "organs": ["liver", "aorta"],
    }
    (case,) = load_dataset(table, tmp_path)
    assert case.case_id == "example_ct_dicom" and case.image == dicom.absolute()
    assert image_shape(case) == (512, 512, 20)
    labels, names = load_label_map(case)
    assert labels.shape == (512, 512, 20) and names[5] == "liver" and names[52] == "aorta"
    reference = load_references(case)["liver"]
    assert np.array_equal(reference, labels == 5) and reference.any()


def test_per_organ_cases_stack_their_class_files(tmp_path):
    folder = tmp_path / "root" / "s0001"
    (folder / "segmentations").mkdir(parents=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), affine), folder / "ct.nii.gz")
    masks = {"liver": (slice(0, 3),), "spleen": (slice(3, 6),), "lung_upper_lobe_left": ()}
    for name, where in masks.items():
        data = np.zeros((6, 5, 4), np.uint8)
        if where:
            data[where] = 1
        nib.save(nib.Nifti1Image(data, affine), folder / "segmentations" / f"{name}.nii.gz")
    table = {"name": "ts", "kind": "nifti-per-organ", "root": "root", "organs": ["liver"]}
    (case,) = load_dataset(table, tmp_path)
    labels, names = load_label_map(case)
    assert names == {1: "liver", 2: "lung_upper_lobe_left", 3: "spleen"}
    assert (labels[:3] == 1).all() and (labels[3:] == 3).all()
    pairs = load_dataset(
        {
            "name": "p",
            "kind": "image-mask-pairs",
            "images": str(require_data(SLICES / "images") / "*.png"),
            "masks": "{dir}/../masks/{stem}_liver.png",
            "target": "liver",
        },
        tmp_path,
    )
    with pytest.raises(BenchmarkError, match="image-mask-pairs datasets have no full label map"):
        load_label_map(pairs[0])
