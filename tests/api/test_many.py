"""Several scans in one run: ``salip.segment_many`` and ``salip segment`` with several inputs."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import salip
from salip.api.cases import case_names, find_cases
from salip.apps.cli import main
from salip.core.errors import InputError
from tests.conftest import DATA, TOTALSEG, require_data

FAST = dict(points_per_side=4, modality="ct")


def _mask(path):
    if path.suffix == ".png":
        return np.asarray(Image.open(path))
    return np.asarray(nib.load(path).dataobj)


def test_find_cases_and_their_names(cohort, tmp_path):
    cases = find_cases(cohort)
    assert len(cases) == 6  # the folder of PNGs gives two cases
    assert cases[1].path == cohort[1].resolve() and cases[1].series is None  # one series
    names = case_names(cases)
    # Relative to the deepest folder holding every input (the shared data and the test's
    # folder meet at some ancestor, which depends on the machine), flattened; the two
    # amos_0006_90.png files keep their own names.
    root = Path(os.path.commonpath([DATA.resolve(), tmp_path.resolve()]))
    data = "_".join(DATA.resolve().relative_to(root).parts)
    tmp = "_".join(tmp_path.resolve().relative_to(root).parts)
    assert names == [
        f"{data}_totalseg_example_ct_sm",
        f"{data}_totalseg_example_ct_dicom",
        f"{data}_slices_images_amos_0006_90",
        f"{tmp}_pngs_amos_0004_75",
        f"{tmp}_pngs_amos_0006_90",
        f"{tmp}_broken",
    ]
    assert case_names(list(reversed(cases))) == list(reversed(names))  # not by order
    assert find_cases([str(tmp_path / "pngs" / "*.png")]) == cases[3:5]
    assert [c.path for c in find_cases(cohort[3:4] * 2)] == [c.path for c in cases[3:5]]
    assert case_names(find_cases(cohort[3:4])) == ["amos_0004_75", "amos_0006_90"]
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
    assert [r["name"] for r in rows] == case_names(find_cases(cohort))
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


@pytest.fixture
def two_series(tmp_path):
    """A DICOM folder of two series: the 20-slice CT, and a copy of its first 10 slices
    under a new series UID and description."""
    import pydicom
    from pydicom.uid import generate_uid

    source = require_data(TOTALSEG / "example_ct_dicom_uids")
    folder = tmp_path / "export"
    folder.mkdir()
    files = sorted(source.iterdir())
    uid = generate_uid()
    for i, path in enumerate(files):
        shutil.copy(path, folder / path.name)
        if i < 10:
            ds = pydicom.dcmread(path)
            ds.SeriesInstanceUID, ds.SeriesDescription = uid, "Thin recon"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(folder / f"second_{i:02d}.dcm")
    return folder, uid


def test_a_case_that_raises_is_its_own_failure(cohort, tmp_path, tiny_models, monkeypatch):
    """An unexpected error in one case (a device out of memory, a bug on an odd input) is
    that case's failed row; the cases after it still run."""
    import salip.api.many as many

    original = many.segment_case

    def out_of_memory(volume, **kwargs):
        if volume.path.name.endswith(".png"):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
        return original(volume, **kwargs)

    monkeypatch.setattr(many, "segment_case", out_of_memory)
    options = {**FAST, **tiny_models}
    out = tmp_path / "out"
    rows = salip.segment_many(cohort[:3], organs="liver", output=out, **options)
    assert [r.status for r in rows] == ["done", "done", "failed"]
    assert rows[2].error == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert not list(out.glob(f"{rows[2].name}*"))  # nothing of the failed case
    with open(out / "run.csv", newline="") as handle:
        assert [r["status"] for r in csv.DictReader(handle)] == ["done", "done", "failed"]


def test_a_folder_of_two_series_gives_two_cases(two_series, tmp_path, tiny_models):
    folder, uid = two_series
    cases = find_cases([folder])
    assert [c.series for c in cases][1] == uid and cases[0].series is not None
    assert find_cases([str(folder / "*")]) == cases  # the files matched are the series
    assert cases[0].description == "CT Body 3.0"
    assert case_names(cases) == ["export_CT_Body_3_0", "export_Thin_recon"]
    rows = salip.segment_many(
        [folder], organs="liver", output=tmp_path / "out", **FAST, **tiny_models
    )
    assert [r.status for r in rows] == ["done", "done"]
    shapes = [nib.load(r.outputs[0]).shape for r in rows]
    assert shapes == [(512, 512, 20), (512, 512, 10)]  # each series read on its own
    with open(tmp_path / "out" / "run.csv", newline="") as handle:
        assert [r["series"] for r in csv.DictReader(handle)] == [c.series for c in cases]


def test_a_jobs_file_gives_each_case_its_organs_and_output(cohort, tmp_path, tiny_models):
    jobs = tmp_path / "jobs.csv"
    ct, png = cohort[0], cohort[2]
    jobs.write_text(
        "input,organs,output\n"
        f"{ct},,ct/liver.nii.gz\n"
        f'pngs/amos_0004_75.png,"liver,aorta",\n'
        f"{png},spleen;liver,slices/a.png\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    (out / "ct").mkdir(parents=True)
    stale = out / "ct" / ".liver.nii.gz.x1y2z3.nii.gz"  # left by a killed run
    stale.write_bytes(b"partial")
    options = {**FAST, **tiny_models}
    code = main(
        ["segment", "--jobs", str(jobs), "--organ", "kidneys", "-o", str(out), "--no-progress"]
        + [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    )
    assert code == 0
    with open(out / "run.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == ["ct/liver", "amos_0004_75", "slices/a"]
    assert not stale.exists()
    labels = [
        json.loads((out / f"{name}.json").read_text())["labels"]
        for name in ("ct/liver", "amos_0004_75", "slices/a")
    ]
    assert [list(label) for label in labels] == [
        ["kidneys"],  # the run's organs (--organ kidneys)
        ["liver", "aorta"],
        ["spleen", "liver"],
    ]
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text(
        json.dumps({"input": str(png), "organs": ["liver"]})
        + "\n\n"
        + json.dumps({"input": str(png), "output": "again.png"})
        + "\n",
        encoding="utf-8",
    )
    rows = salip.segment_many(jobs=jsonl, organs="aorta", output=tmp_path / "j", **options)
    assert [(r.name, r.status) for r in rows] == [("amos_0006_90", "done"), ("again", "done")]


@pytest.mark.parametrize(
    "text, message",
    [
        ("input,organ\nx.png,liver\n", "the header row must name an input column and only"),
        ("input,organs\nx.png,livre\n", r"jobs.csv:2: unknown organ 'livre'"),
        ("input,organs\n,liver\n", r"jobs.csv:2: no input"),
        ("input,output\nx.png,x.jpg\n", r"jobs.csv:2: output x.jpg must be a mask path"),
        ("input\n", "lists no case"),
        ("input,output\nx.png,a.png\ny.png,a.png\n", "would both be written as a "),
        ("input,output\nx.png,../../escape.png\n", "must be a path inside the output folder"),
        ("input,output\nx.png,/tmp/abs.png\n", "must be a path inside the output folder"),
        ("input,output\nx.png,link/a.png\n", r"resolves to .*outside the output folder"),
        ("input,modality\nx.png,mri\n", r"jobs.csv:2: modality = 'mri' is not valid"),
        ("input,channel\nx.png,one\n", r"jobs.csv:2: channel 'one' is not a whole number"),
    ],
)
def test_bad_jobs_files_are_refused_before_any_case(tmp_path, capsys, text, message):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(text, encoding="utf-8")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "link").symlink_to(tmp_path)  # a symbolic link leading out of -o
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main(["segment", "--jobs", str(jobs), "--organ", "liver", "-o", str(tmp_path / "o")])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
