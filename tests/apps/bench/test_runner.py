"""``salip benchmark`` end to end on the shared data with tiny random-weight models.

The Dice values are meaningless (random weights); these tests check the machinery: every
method runs, every output is written, only oracle rows see references, results are resumed,
bad cases become error rows, and config mistakes are explained.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from salip.apps.bench import methods as bench_methods
from salip.apps.bench.runner import CASE_COLUMNS, load_config, run_benchmark
from salip.core.errors import BenchmarkError
from salip.io import read_input, to_canonical
from salip.io.orientation import to_source_grid
from salip.io.slicing import display_slice
from tests.conftest import SLICES, TOTALSEG, require_data

METHODS = ["salip", "salip-paper", "sam-unprompted", "sam-everything-oracle", "sam-gt-box"]
ORACLES = {"sam-everything-oracle", "sam-gt-box"}
ORGANS = ["liver", "spleen", "kidneys"]
OUTPUTS = [
    "cases.csv",
    "summary.csv",
    "summary.md",
    "run.json",
    "figures/dice_boxplot.png",
    "figures/worst_cases.png",
]
# Random weights never pass the default IoU/stability thresholds: let every proposal through.
LOOSE = "points_per_side = 4\npred_iou_thresh = 0.0\nstability_score_thresh = 0.0\n"


def write_config(folder: Path, tiny_sam_path: Path, tiny_clip_dir: Path, extra: str = "") -> Path:
    require_data(TOTALSEG / "example_ct_sm.nii.gz")
    require_data(SLICES / "images")
    text = f"""
[models]
sam_checkpoint = "{tiny_sam_path}"
clip_model = "local-dir:{tiny_clip_dir}"
device = "cpu"

[metrics]
bootstrap_resamples = 50
worst_cases = 2

[[methods]]
name = "salip"
method = "cascade"
{LOOSE}
[[methods]]
name = "salip-paper"
method = "cascade"
scoring = "salip"
{LOOSE}
[[methods]]
name = "sam-unprompted"
method = "sam-unprompted"

[[methods]]
name = "sam-everything-oracle"
method = "sam-everything-oracle"
{LOOSE}
[[methods]]
name = "sam-gt-box"
method = "sam-gt-box"

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
{extra}"""
    path = folder / "bench.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_sam_path, tiny_clip_dir):
    """One full run, with a record of which methods were handed references."""
    folder = tmp_path_factory.mktemp("bench")
    config = write_config(folder, tiny_sam_path, tiny_clip_dir)
    seen: dict[str, set[bool]] = {}
    originals = {bench_methods.Method: bench_methods.Method.build}

    def spy(original):
        def segmenter(self, models, case):
            seen.setdefault(self.name, set()).add(case.references is not None)
            return original(self, models, case)

        return segmenter

    import salip.models.clip
    import salip.models.sam

    loads: list[str] = []

    def counted(name, original):
        def load(*args, **kwargs):
            loads.append(name)
            return original(*args, **kwargs)

        return load

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SALIP_HOME", str(folder / "home"))
        for cls, original in originals.items():
            mp.setattr(cls, "build", spy(original))
        mp.setattr(salip.models.sam, "load_sam", counted("sam", salip.models.sam.load_sam))
        mp.setattr(salip.models.clip, "load_clip", counted("clip", salip.models.clip.load_clip))
        result = run_benchmark(config, out=folder / "out")
    seen["model loads"] = loads
    return config, result, seen


def test_all_methods_write_every_output(first_run):
    _, result, _ = first_run
    for name in OUTPUTS:
        path = result.out / name
        assert path.is_file() and path.stat().st_size > 0, name
    assert result.summary_md == result.out / "summary.md"
    assert (result.computed, result.reused, result.errors) == (15, 0, 0)
    cases = pd.read_csv(result.out / "cases.csv", keep_default_na=False)
    assert list(cases.columns) == list(CASE_COLUMNS)
    # (3 organs x 1 volume + 1 organ x 2 images) x 5 methods
    assert len(cases) == 25 and set(cases["status"]) == {"ok"}
    assert cases.groupby("method").size().to_dict() == dict.fromkeys(METHODS, 5)
    assert {m for m in METHODS if cases[cases.method == m].uses_ground_truth.all()} == ORACLES
    volume = cases[cases.dataset == "ct"]
    assert set(volume.organ) == set(ORGANS) and set(volume.spacing) == {"3,3,3"}
    assert (volume.gt_voxels > 0).all() and (volume.gt_slices > 0).all()
    images = cases[cases.dataset == "slices"]
    assert set(images.spacing) == {"1,1"}
    assert (images.dice == images.slice_dice).all()  # a 2D image is one slice
    assert cases.dice.between(0, 1).all() and (cases.wall_s > 0).all()
    # montage slices for every row, in the display orientation of the image
    for rel in set(cases.montage):
        with np.load(result.out / rel) as data:
            organs = {key.split("__")[0] for key in data.files}
            for organ in organs:
                assert data[f"{organ}__image"].dtype == np.uint8
                assert data[f"{organ}__gt"].shape == data[f"{organ}__image"].shape


def test_table_has_one_row_per_method_with_oracles_marked(first_run):
    _, result, _ = first_run
    markdown = (result.out / "summary.md").read_text()
    table = markdown.split("\n\n## ")[1]  # the Dice table section
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    labels = [row.split("|")[1].strip() for row in rows[1:]]
    assert labels == [f"{m} †" if m in ORACLES else m for m in METHODS]
    assert "† reads the reference masks" in markdown
    summary = pd.read_csv(result.out / "summary.csv")
    assert len(summary) == 4 * 5  # (ct: 3 organs + slices: liver) x 5 methods
    run = json.loads((result.out / "run.json").read_text())
    assert len(run["models"]["sam"]["sha256"]) == 64
    assert run["versions"]["torch"] and run["hardware"]["device"] == "cpu"
    assert [m["name"] for m in run["methods"]] == METHODS
    assert run["config_file"]["models"]["device"] == "cpu"


def test_only_oracle_methods_are_handed_references(first_run):
    _, _, seen = first_run
    seen = dict(seen)
    assert seen.pop("model loads") == ["sam", "clip"]  # once per run, not per case
    assert seen == {m: {m in ORACLES} for m in METHODS}


def test_oracle_rows_depend_on_the_reference(tmp_path, tiny_sam_path):
    """The same oracle on the same image, with a reference moved away: a different mask."""
    from salip.api.factory import CaseInput, Models
    from salip.apps.bench.methods import make_method
    from salip.core.organs import get_organ
    from salip.models.sam import load_sam

    volume = read_input(require_data(SLICES / "images" / "amos_0006_90.png"))
    image = volume.data
    ref = np.zeros(image.shape[:2], dtype=bool)
    ref[200:300, 100:220] = True
    models = Models(load_sam(str(tiny_sam_path)), None, "cpu")
    method = make_method({"name": "box", "method": "sam-gt-box"}, {"device": "cpu"})
    liver = (get_organ("liver"),)
    masks = []
    for reference in (ref, np.roll(ref, 150, axis=1)):
        seg = method.build(
            models, CaseInput(liver, "ct", True, {"liver": reference})
        ).strategy.segmenter
        (out,) = seg([image], liver, [0])
        masks.append(out.masks["liver"])
    assert masks[0].shape == ref.shape and not np.array_equal(masks[0], masks[1])
    empty = method.build(
        models, CaseInput(liver, "ct", True, {"liver": ref & False})
    ).strategy.segmenter
    assert not empty([image], liver, [0])[0].masks["liver"].any()


def test_resumed_run_recomputes_nothing(first_run, tmp_path, monkeypatch):
    config, result, _ = first_run
    out = tmp_path / "out"
    shutil.copytree(result.out, out)
    records = sorted((out / "cases").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in records]

    def refuse(*args, **kwargs):
        raise AssertionError("a finished case was segmented again")

    monkeypatch.setattr("salip.apps.bench.case_run.segment", refuse)
    monkeypatch.setattr("salip.api.factory.load_models", refuse)
    monkeypatch.setattr("salip.apps.bench.case_run.read_input", refuse)  # no image is even read
    again = run_benchmark(config, out=out)
    assert (again.computed, again.reused, again.errors) == (0, 15, 0)
    assert [p.stat().st_mtime_ns for p in records] == stamps
    before = pd.read_csv(result.out / "cases.csv")
    after = pd.read_csv(out / "cases.csv")
    pd.testing.assert_frame_equal(before, after)


def test_changed_settings_recompute_only_that_method(first_run, tmp_path):
    config, result, _ = first_run
    out = tmp_path / "out"
    shutil.copytree(result.out, out)
    text = config.read_text().replace(
        'name = "sam-gt-box"\nmethod = "sam-gt-box"\n',
        'name = "sam-gt-box"\nmethod = "sam-gt-box"\nbox_margin = 0.1\n',
    )
    changed = tmp_path / "bench.toml"
    changed.write_text(text)
    again = run_benchmark(changed, out=out)
    assert (again.computed, again.reused) == (3, 12)  # 3 cases x sam-gt-box
    rerun = run_benchmark(changed, out=out, rerun=True, limit=1)
    assert (rerun.computed, rerun.reused) == (10, 0)  # 2 datasets x 1 case x 5 methods


def test_bad_cases_become_error_rows(tmp_path, tiny_sam_path, tiny_clip_dir):
    images, labels = tmp_path / "data" / "images", tmp_path / "data" / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    good = nib.load(require_data(TOTALSEG / "example_ct_sm.nii.gz"))
    crop = nib.Nifti1Image(np.asarray(good.dataobj)[:64, :64, :3], good.affine)

    def label(shape):
        return nib.Nifti1Image(np.ones(shape, np.uint8), good.affine)

    # a good case, a corrupt image, and a label volume of the wrong shape
    nib.save(crop, images / "a_good.nii.gz")
    nib.save(label((64, 64, 3)), labels / "a_good.nii.gz")
    (images / "b_corrupt.nii.gz").write_bytes(b"not a nifti file")
    nib.save(label((64, 64, 3)), labels / "b_corrupt.nii.gz")
    nib.save(crop, images / "c_shape.nii.gz")
    nib.save(label((9, 9, 3)), labels / "c_shape.nii.gz")
    (tmp_path / "data" / "names.json").write_text('{"1": "liver"}')
    config = tmp_path / "bench.toml"
    config.write_text(
        f"""
[models]
sam_checkpoint = "{tiny_sam_path}"
clip_model = "local-dir:{tiny_clip_dir}"
device = "cpu"

[[methods]]
name = "unprompted"
method = "sam-unprompted"

[[datasets]]
name = "mixed"
kind = "nifti-multilabel"
images = "data/images/*.nii.gz"
labels = "{{dir}}/../labels/{{stem}}.nii.gz"
label_names = "data/names.json"
"""
    )
    result = run_benchmark(config, out=tmp_path / "out")
    cases = pd.read_csv(result.out / "cases.csv", keep_default_na=False).set_index("case")
    assert list(cases.index) == ["a_good", "b_corrupt", "c_shape"]
    assert cases.loc["a_good", "status"] == "ok" and cases.loc["a_good", "error"] == ""
    assert cases.loc["b_corrupt", "status"] == "error"
    assert "cannot read NIfTI" in cases.loc["b_corrupt", "error"]
    assert cases.loc["c_shape", "status"] == "error"
    assert "(9, 9, 3)" in cases.loc["c_shape", "error"]
    assert result.errors == 2
    assert "2 error rows" in (result.out / "summary.md").read_text()
    # errors are retried on the next run; the good case is reused and not even read, and
    # the images to recompute are read ahead in the prefetch thread
    import threading

    import salip.io

    reads, read = [], salip.io.read_input

    def spy(path, **kwargs):
        reads.append((Path(path).name, threading.current_thread().name))
        return read(path, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("salip.apps.bench.case_run.read_input", spy)
        again = run_benchmark(config, out=tmp_path / "out")
    assert (again.computed, again.reused, again.errors) == (2, 1, 2)
    assert sorted(name for name, _ in reads) == ["b_corrupt.nii.gz", "c_shape.nii.gz"]
    assert all(thread.startswith("salip-prefetch") for _, thread in reads)


@pytest.mark.parametrize(
    ("methods", "message"),
    [
        ('name = "x"\nmethod = "cascde"', "Did you mean: cascade?"),
        ('name = "x"\nmethod = "head"', "--method head needs --head PATH"),
        ('name = "x"\nmethod = "sam-unprompted"\ntop_k = 2', "not read by this method"),
        ('name = "x"\nmethod = "cascade"\nsam_checkpoint = "vit_h"', "belong in [models]"),
        ('name = "x"\nmethod = "cascade"\nscoring = "best"', "use one of contrast, salip"),
        ('name = "x"\nmethod = "cascade"\ntop_k = "2"', "wrong type"),
        ('method = "cascade"', "has no `name`"),
    ],
)
def test_method_mistakes_are_explained(tmp_path, methods, message):
    config = tmp_path / "bench.toml"
    config.write_text(
        f'[models]\ndevice = "cpu"\n[[methods]]\n{methods}\n'
        '[[datasets]]\nname = "d"\nkind = "msd"\nroot = "x"\n'
    )
    with pytest.raises(BenchmarkError, match=re.escape(message)):
        load_config(config)


METHOD = "[[methods]]\nname = 'a'\nmethod = 'cascade'\n"
DATASET = "[[datasets]]\nname = 'd'\nkind = 'msd'\nroot = 'x'\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model]\ndevice = 'cpu'\n" + METHOD + DATASET, "unknown key(s) model"),
        ("[models]\ndevice = 'cpu'\n" + DATASET, "at least one [[methods]]"),
        ("[models]\ndevice = 'cpu'\n" + METHOD, "at least one [[datasets]]"),
        ("[models]\ngpu = 'cpu'\n" + METHOD + DATASET, "unknown key(s) gpu"),
        ("[metrics]\nconfidence = 2.0\n" + METHOD + DATASET, "confidence must be between 0"),
        (METHOD + METHOD + DATASET, "method name(s) repeat: a"),
        ("not toml [", "cannot read config"),
    ],
)
def test_config_mistakes_are_explained(tmp_path, text, message):
    config = tmp_path / "bench.toml"
    config.write_text(text)
    with pytest.raises(BenchmarkError, match=re.escape(message)):
        load_config(config)


def test_the_cascade_old_method_name_still_reads(tmp_path, caplog):
    config = tmp_path / "bench.toml"
    config.write_text("[[methods]]\nname = 'a'\nmethod = 'salip'\n" + DATASET)
    with caplog.at_level(logging.WARNING, logger="salip.apps.bench.methods"):
        (method,) = load_config(config).methods
    assert method.kind == "cascade" and method.spec.name == "cascade"
    assert 'method = "salip" is now method = "cascade"' in caplog.text


def test_missing_config_is_explained(tmp_path):
    with pytest.raises(BenchmarkError, match="not found; pass --config"):
        load_config(tmp_path / "missing.toml")


def test_cli_prints_the_summary_path(first_run, tmp_path, capsys):
    from salip.apps.cli import main

    config, result, _ = first_run
    out = tmp_path / "out"
    shutil.copytree(result.out, out)
    assert main(["benchmark", "--config", str(config), "--out", str(out), "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "summary.md")
    assert main(["benchmark", "--config", str(config), "--limit", "0"]) == 1
    assert "limit must be a whole number" in capsys.readouterr().err


def test_references_reach_the_canonical_display_grid():
    """to_canonical inverts to_source_grid, so reference slices line up with the images."""
    path = require_data(TOTALSEG / "example_mr_sm.nii.gz")  # LPS: two flipped axes
    volume = read_input(path)
    raw = np.asarray(nib.load(path).dataobj).astype(np.float32)
    np.testing.assert_array_equal(to_canonical(raw, volume.geometry), volume.data)
    np.testing.assert_array_equal(to_source_grid(volume.data, volume.geometry), raw)
    ct = read_input(require_data(TOTALSEG / "example_ct_sm.nii.gz"))
    assert display_slice(ct.data, False, "axial", 5).shape == (101, 122)  # rows A->P, cols R->L
    with pytest.raises(Exception, match="not in the input's grid"):
        to_canonical(raw[:5], volume.geometry)


def test_read_input_picks_a_channel_of_a_4d_file(tmp_path):
    data = np.stack([np.full((4, 5, 6), c, np.int16) for c in range(3)], axis=-1)
    path = tmp_path / "multi.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    assert read_input(path, channel=2).data.max() == 2
    assert read_input(path, channel=2).geometry.shape == (4, 5, 6)
    with pytest.raises(Exception, match="channel 3 out of range"):
        read_input(path, channel=3)
    with pytest.raises(Exception, match="4D image"):
        read_input(path)
