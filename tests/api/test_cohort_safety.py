"""Results stay with the right scan: stable case names, checked resumes, no clobbering
between runs, outputs confined to -o, run.csv as a ledger, and counts of what was written."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import salip
from salip.api.cases import case_names, find_cases
from salip.core.errors import ConfigError, OutputError
from salip.io.locks import LOCK_NAME, case_lock
from salip.io.output_set import OutputSet
from tests.conftest import REPO, TOTALSEG, LabelStrategy, require_data

FAST = dict(points_per_side=4, modality="ct")


def _table(folder: Path) -> list[dict[str, str]]:
    with open(folder / "run.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tree/x/a.nii.gz and tree/y/a.nii.gz: two scans with one file name (2D slabs of the
    example CT, so that a case takes a moment)."""
    ct = nib.load(require_data(TOTALSEG / "example_ct_sm.nii.gz"))
    data = np.asarray(ct.dataobj)
    root = tmp_path / "tree"
    for sub, z in (("x", 10), ("y", 20), ("spare", 14)):
        (root / sub).mkdir(parents=True)
        nib.save(nib.Nifti1Image(data[:, :, z : z + 2], ct.affine), root / sub / "a.nii.gz")
    spare = root / "spare"
    shutil.move(spare, tmp_path / "spare")
    return root


def test_names_depend_on_the_input_alone(tree, tmp_path):
    cases = find_cases([str(tree / "*")])
    assert case_names(cases) == ["x_a", "y_a"]
    (tree / "w").mkdir()
    shutil.copy(tmp_path / "spare" / "a.nii.gz", tree / "w" / "a.nii.gz")
    cases = find_cases([str(tree / "*")])
    assert case_names(cases) == ["w_a", "x_a", "y_a"]  # x and y keep their names
    assert case_names(find_cases([tree])) == ["w_a", "x_a", "y_a"]
    assert case_names(find_cases([tree / "x" / "a.nii.gz"])) == ["a"]  # one file: its stem
    # Only inputs that flatten alike can clash; they are refused, never numbered by order.
    nib.save(nib.load(tree / "x" / "a.nii.gz"), tree / "x" / "a.nii")
    with pytest.raises(ConfigError, match="would both be written as x_a ") as caught:
        salip.segment_many([str(tree / "*")], organs="liver", output=tmp_path / "o")
    assert "\n" not in str(caught.value) and not (tmp_path / "o").exists()


def test_a_rerun_with_a_new_clashing_input_keeps_every_result_with_its_scan(
    tree, tmp_path, tiny_models
):
    """The issue's report: x/a and y/a, then w/a added; names stay, w/a alone is computed,
    and each sidecar names its own scan."""
    options = {**FAST, **tiny_models}
    out = tmp_path / "out"
    first = salip.segment_many([str(tree / "*")], organs="liver", output=out, **options)
    assert [(r.name, r.status) for r in first] == [("x_a", "done"), ("y_a", "done")]
    (tree / "w").mkdir()
    shutil.copy(tmp_path / "spare" / "a.nii.gz", tree / "w" / "a.nii.gz")
    second = salip.segment_many([str(tree / "*")], organs="liver", output=out, **options)
    assert [(r.name, r.status) for r in second] == [
        ("w_a", "done"), ("x_a", "skipped"), ("y_a", "skipped"),
    ]  # fmt: skip
    for row in _table(out):
        sidecar = json.loads((out / f"{row['name']}.json").read_text())
        assert sidecar["source"]["path"] == row["input"]
        assert row["input"] == str((tree / row["name"][0] / "a.nii.gz").resolve())
    rows = {r["name"]: r for r in _table(out)}
    # The ledger keeps what the first run measured, and both runs' statuses.
    assert rows["x_a"]["seconds"] == str(round(first[0].seconds, 3))
    assert rows["x_a"]["history"].startswith("done@") and ";skipped@" in rows["x_a"]["history"]
    assert rows["x_a"]["liver_ml"] != "" and rows["x_a"]["written"] != ""


def test_a_changed_input_is_a_one_line_failure_not_a_reuse(tree, tmp_path, tiny_models):
    options = {**FAST, **tiny_models}
    out = tmp_path / "out"
    salip.segment_many([str(tree / "*")], organs="liver", output=out, **options)
    before = {p: p.read_bytes() for p in out.iterdir() if p.name != "run.csv"}
    shutil.copy(tmp_path / "spare" / "a.nii.gz", tree / "x" / "a.nii.gz")  # another scan
    rows = salip.segment_many([str(tree / "*")], organs="liver", output=out, **options)
    assert [r.status for r in rows] == ["failed", "skipped"]
    assert "exists and is not this case's result: the input has changed" in rows[0].error
    assert "--overwrite" in rows[0].error and "\n" not in rows[0].error
    assert {p: p.read_bytes() for p in out.iterdir() if p.name != "run.csv"} == before
    other = salip.segment_many([str(tree / "*")], organs="spleen", output=out, **options)
    assert [r.status for r in other] == ["failed", "failed"]
    assert "they hold liver, not spleen" in other[1].error
    redone = salip.segment_many([str(tree / "*")], organs="liver", output=out, overwrite=True,
                                **options)  # fmt: skip
    assert [r.status for r in redone] == ["done", "done"]


def test_the_output_folder_is_never_searched(tree, tmp_path, tiny_models):
    """-o inside the searched folder: reruns find the same two cases, not salip's masks."""
    options = {**FAST, **tiny_models}
    out = tree / "out"
    for _ in range(2):
        rows = salip.segment_many([tree], organs="liver", output=out, **options)
        assert [r.name for r in rows] == ["x_a", "y_a"]
    # salip's own outputs elsewhere are not cases either (but a scan beside them is).
    shutil.copytree(out, tmp_path / "copied")
    from salip.core.errors import InputError

    with pytest.raises(InputError, match="no NIfTI file, 2D image or DICOM series found"):
        find_cases([tmp_path / "copied"])
    shutil.copy(tree / "x" / "a.nii.gz", tmp_path / "copied" / "scan.nii.gz")
    assert case_names(find_cases([str(tmp_path / "copied" / "*.nii.gz")])) == ["scan"]


def test_skipped_cases_keep_their_volume_columns(tree, tmp_path, tiny_models):
    options = {**FAST, **tiny_models}
    out = tmp_path / "out"
    salip.segment_many([str(tree / "*")], organs="liver", output=out, **options)
    (out / "run.csv").unlink()  # the ledger is lost: the sidecars still know the volumes
    salip.segment_many([str(tree / "*")], organs="liver", output=out, **options)
    rows = _table(out)
    assert "liver_ml" in rows[0] and all(r["liver_ml"] != "" for r in rows)
    assert all(r["status"] == "skipped" and r["seconds"] == "" for r in rows)


# --- two runs into one folder -------------------------------------------------------------


def test_a_commit_never_replaces_a_file_that_appeared_after_planning(tmp_path):
    source = tmp_path / "in.nii.gz"
    source.write_bytes(b"x")
    mask, sidecar = tmp_path / "m.nii.gz", tmp_path / "m.json"
    appeared = pytest.raises(OutputError, match="appeared while this run was writing")
    with appeared as caught, OutputSet(source, overwrite=False) as outputs:
        outputs.add(sidecar, "sidecar")
        outputs.add(mask, "-o")
        outputs.stage(sidecar, lambda tmp: tmp.write_text("ours"))
        outputs.stage(mask, lambda tmp: tmp.write_bytes(b"ours"))
        mask.write_bytes(b"another run's")  # appears after planning
        outputs.commit()
    assert "\n" not in str(caught.value)
    assert mask.read_bytes() == b"another run's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz", "m.nii.gz"]


def _hold_case_lock(folder: Path, name: str) -> subprocess.Popen:
    """Another process holding case ``name`` of ``folder`` (until killed), once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from pathlib import Path
            from salip.io.locks import case_lock
            with case_lock(Path({str(folder)!r}), {name!r}) as got:
                print(got, flush=True)
                time.sleep(300)
        """)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "True"
    return holder


def test_a_case_lock_ends_with_its_process(tmp_path):
    holder = _hold_case_lock(tmp_path, "x_a")
    try:
        with case_lock(tmp_path, "x_a") as got:
            assert got is False
        with case_lock(tmp_path, "y_a") as got:
            assert got is True  # other cases are free
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with case_lock(tmp_path, "x_a") as got:
        assert got is True  # the killed process left no lock behind
    assert (tmp_path / LOCK_NAME).is_file()


def test_two_runs_into_one_folder_write_each_case_once(tmp_path, tiny_models):
    """--organ liver and --organ kidneys started together on one cohort and folder: every
    case is written by one run, with all its files from that run; the other run records
    it as skipped or failed; nothing is lost or mixed."""
    ct = nib.load(require_data(TOTALSEG / "example_ct_sm.nii.gz"))
    data = np.asarray(ct.dataobj)
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for i in range(6):
        nib.save(nib.Nifti1Image(data[:, :, 4 * i : 4 * i + 3], ct.affine), cohort / f"c{i}.nii.gz")
    out = tmp_path / "out"
    flags = ["--sam-checkpoint", tiny_models["sam_checkpoint"], "--clip-model",
             tiny_models["clip_model"], "--device", "cpu", "--points-per-side", "4",
             "--modality", "ct", "--no-progress", "--previews"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "salip.apps.cli",
                "segment",
                str(cohort),
                "--organ",
                organ,
                "-o",
                str(out),
                *flags,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for organ in ("liver", "kidneys")
    ]
    results = [run.communicate(timeout=600) for run in runs]
    assert all(run.returncode in (0, 1) for run in runs), results
    assert (out / "run.csv").is_file(), results
    rows = _table(out)
    assert [r["name"] for r in rows] == [f"c{i}" for i in range(6)]
    for row in rows:
        statuses = [h.split("@")[0] for h in row["history"].split(";")]
        assert statuses.count("done") == 1 and len(statuses) == 2, row
        assert set(statuses) <= {"done", "skipped", "failed"}, row
        assert row["status"] == statuses[-1], (row["history"], row["error"])  # newest event
        sidecar = json.loads((out / f"{row['name']}.json").read_text())
        organ = next(iter(sidecar["labels"]))
        assert organ in ("liver", "kidneys")
        mask = np.asarray(nib.load(out / f"{row['name']}.nii.gz").dataobj)
        assert set(np.unique(mask)) <= {0, 1}  # one organ's label map, never a mix
        assert (out / f"{row['name']}.preview.png").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_NAME]


def test_a_run_waits_for_nothing_when_another_holds_a_case(tree, tmp_path, tiny_models):
    """A case locked by another process is skipped at once, with the reason."""
    out = tmp_path / "out"
    out.mkdir()
    holder = _hold_case_lock(out, "x_a")
    try:
        start = time.monotonic()
        rows = salip.segment_many([str(tree / "*")], organs="liver", output=out,
                                  **FAST, **tiny_models)  # fmt: skip
        assert time.monotonic() - start < 100
    finally:
        holder.kill()
        holder.wait()
    assert [(r.name, r.status) for r in rows] == [("x_a", "skipped"), ("y_a", "done")]
    assert rows[0].error == "another salip run was writing it"
    assert not (out / "x_a.nii.gz").exists()


# --- what is reported is what was written -----------------------------------------------------


def test_report_counts_what_the_label_map_holds_where_organs_overlap(tmp_path):
    """liver and spleen claim the same voxels: the label map gives them to liver (listed
    first), and the report, sidecar and statistics count them once, for liver."""
    from salip.io import read_input

    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    volume = read_input(ct)
    liver = np.zeros(volume.data.shape, dtype=np.uint8)
    liver[30:60, 30:60, 5:15] = 1
    spleen = np.zeros_like(liver)
    spleen[50:70, 50:70, 5:15] = 2  # overlaps liver on 10x10x10 voxels

    class Both(LabelStrategy):
        def run(self, view, organs, *, progress=False):
            from salip.strategies.base import StrategyResult

            return StrategyResult({"liver": liver > 0, "spleen": spleen > 0},
                                  {o.name: [] for o in organs})  # fmt: skip

    strategy = Both(None, {})  # masks in the canonical layout of volume.data
    result = salip.segment(ct, organs="liver,spleen", output=tmp_path / "m.nii.gz",
                           segmenter=strategy, statistics=tmp_path / "s.json")  # fmt: skip
    labels = np.asarray(nib.load(tmp_path / "m.nii.gz").dataobj)
    organs = result.report["organs"]
    assert organs["liver"]["voxels"] == int((labels == 1).sum()) == 30 * 30 * 10
    assert organs["spleen"]["voxels"] == int((labels == 2).sum()) == 20 * 20 * 10 - 1000
    assert result.report["overlaps"]["pairs"] == [
        {"organs": ["liver", "spleen"], "voxels": 1000, "kept_by": "liver"}
    ]
    assert "listed first" in result.report["overlaps"]["rule"]
    sidecar = json.loads((tmp_path / "m.json").read_text())
    assert sidecar["volume_ml"] == {o: organs[o]["volume_ml"] for o in organs}
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["organs"]["spleen"]["voxels"] == organs["spleen"]["voxels"]
    split = salip.segment(ct, organs="liver,spleen", output=tmp_path / "split", split=True,
                          segmenter=strategy)  # fmt: skip
    assert split.report["organs"]["spleen"]["voxels"] == 20 * 20 * 10  # its own file, whole
