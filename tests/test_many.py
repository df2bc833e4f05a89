"""Several scans in one run: ``salip.segment_many`` and ``salip segment`` with several inputs."""

from __future__ import annotations

import csv
import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import salip
from salip.api.many import case_names, find_cases
from salip.apps.cli import main
from salip.core.errors import InputError
from tests.conftest import SLICES, TOTALSEG, require_data

FAST = dict(points_per_side=4, modality="ct")


@pytest.fixture
def cohort(tmp_path):
    """A NIfTI, a DICOM folder, a PNG, a folder of two PNGs and a corrupt file."""
    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    dicom = require_data(TOTALSEG / "example_ct_dicom")
    png = require_data(SLICES / "images" / "amos_0006_90.png")
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for name in ("amos_0004_75.png", "amos_0006_90.png"):
        shutil.copy(require_data(SLICES / "images" / name), pngs / name)
    corrupt = tmp_path / "broken.nii.gz"
    corrupt.write_bytes(b"this is not a NIfTI file")
    return [ct, dicom, png, pngs, corrupt]


def _mask(path):
    if path.suffix == ".png":
        return np.asarray(Image.open(path))
    return np.asarray(nib.load(path).dataobj)


def test_find_cases_and_their_names(cohort, tmp_path):
    cases = find_cases(cohort)
    assert len(cases) == 6  # the folder of PNGs gives two cases
    assert cases[1] == cohort[1].resolve()  # a DICOM series folder is one case
    names = case_names(cases)
    assert names == [
        "example_ct_sm",
        "example_ct_dicom",
        "amos_0006_90",
        "amos_0004_75",
        "amos_0006_90_2",
        "broken",
    ]
    assert find_cases([str(tmp_path / "pngs" / "*.png")]) == cases[3:5]
    with pytest.raises(InputError, match="matches no file"):
        find_cases([str(tmp_path / "*.jpg")])
    with pytest.raises(InputError, match="no such file"):
        find_cases([tmp_path / "missing.nii.gz"])


def test_a_cohort_with_a_corrupt_file(cohort, tmp_path, tiny_models, monkeypatch):
    out = tmp_path / "out"
    options = {**FAST, **tiny_models}
    code = main(
        ["segment", *map(str, cohort), "--organ", "liver", "-o", str(out), "--no-progress"]
        + [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    )
    assert code == 1  # one case failed
    with open(out / "run.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["status"] for r in rows] == ["done"] * 5 + ["failed"]
    assert "broken.nii.gz" in rows[-1]["error"] and "\n" not in rows[-1]["error"]
    assert float(rows[0]["liver_ml"]) >= 0 and rows[2]["liver_ml"] == ""  # 2D: no volume
    assert not list(out.glob("broken*"))  # nothing partial for the failed case
    # Every case's mask equals a single-input run of that case.
    single = tmp_path / "single"
    single.mkdir()
    for row in rows[:5]:
        suffix = ".png" if row["input"].endswith(".png") else ".nii.gz"
        alone = salip.segment(
            row["input"], organs="liver", output=single / f"{row['name']}{suffix}", **options
        )
        assert np.array_equal(_mask(out / f"{row['name']}{suffix}"), _mask(alone.outputs[0]))
        assert (out / f"{row['name']}.json").is_file()

    # A second run recomputes nothing and loads no model.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished case was segmented again")

    monkeypatch.setattr("salip.models.sam.load_sam", refuse)
    monkeypatch.setattr("salip.models.clip.load_clip", refuse)
    again = salip.segment_many(cohort, organs="liver", output=out, **options)
    assert [r.status for r in again] == ["skipped"] * 5 + ["failed"]


def test_several_cases_need_an_output_folder(cohort, capsys):
    code = main(["segment", *map(str, cohort[2:4]), "--organ", "liver"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["salip: error: several cases need -o FOLDER for their outputs."]
    code = main(["segment", *map(str, cohort[2:4]), "--organ", "liver", "-o", "m.nii.gz"])
    assert code == 1
    assert "-o m.nii.gz names a mask file" in capsys.readouterr().err


def test_an_interrupted_run_completes_when_run_again(cohort, tmp_path, tiny_models, monkeypatch):
    import salip.api.many as many

    good = cohort[:4]
    options = {**FAST, **tiny_models}
    whole = salip.segment_many(good, organs="liver", output=tmp_path / "whole", **options)
    original = many.segment_case
    calls = []

    def interrupted(volume, **kwargs):
        calls.append(volume.path)
        if len(calls) == 3:  # Ctrl-C during the third case
            raise KeyboardInterrupt
        return original(volume, **kwargs)

    monkeypatch.setattr(many, "segment_case", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        salip.segment_many(good, organs="liver", output=out, **options)
    with open(out / "run.csv", newline="") as handle:
        assert [r["status"] for r in csv.DictReader(handle)] == ["done", "done"]
    assert not list(out.glob(f"{whole[2].name}*"))  # the case in flight left nothing
    monkeypatch.setattr(many, "segment_case", original)
    rerun = salip.segment_many(good, organs="liver", output=out, **options)
    assert [r.status for r in rerun] == ["skipped", "skipped", "done", "done", "done"]
    for row in whole:
        for path in row.outputs:
            if path.name.endswith((".nii.gz", ".png")):
                assert np.array_equal(_mask(path), _mask(out / path.name))
