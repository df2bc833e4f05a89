"""The ``salip`` command end to end with tiny checkpoints, and its one-line errors."""

from __future__ import annotations

import dataclasses
import gzip
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import salip
from salip.apps.cli import main
from salip.core.config import flat_fields
from tests.conftest import SLICES, TOTALSEG, require_data

FAST = ["--points-per-side", "8", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]


@pytest.fixture
def model_flags(tiny_models):
    return [
        "--sam-checkpoint",
        tiny_models["sam_checkpoint"],
        "--clip-model",
        tiny_models["clip_model"],
        "--device",
        "cpu",
        *FAST,
    ]


def test_segment_ct_two_organs(tmp_path, model_flags):
    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    out = tmp_path / "organs.nii.gz"
    code = main(
        ["segment", str(ct), "--organ", "liver,spleen", "-o", str(out),
         "--preview", str(tmp_path / "p.png"), "--report", str(tmp_path / "r.json"),
         # The paper's scoring always keeps a crop, so the report has records to check even
         # with random weights (under slices, every slice's); contrast scoring is tested in
         # test_contrast.py, the volume strategy in test_volume_strategy.py.
         "--scoring", "salip", "--strategy", "slices", "--no-progress", *model_flags]
    )  # fmt: skip
    assert code == 0
    source, written = nib.load(ct), nib.load(out)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
    sidecar = json.loads((tmp_path / "organs.json").read_text())
    assert sidecar["labels"] == {"liver": 1, "spleen": 2}
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["organs"]) == {"liver", "spleen"}
    liver = report["organs"]["liver"]
    voxel_ml = 3.0 * 3.0 * 3.0 / 1000
    assert liver["volume_ml"] == pytest.approx(liver["voxels"] * voxel_ml, abs=1e-3)
    assert liver["chosen"] and {"slice", "bbox", "clip_score", "area", "refine_iou"} <= set(
        liver["chosen"][0]
    )
    assert report["models"]["sam"]["embed_dim"] == 32
    assert report["models"]["prompts"]["liver"]["source"] == "hand-written"
    assert {"sam_encoder", "proposals", "clip_image", "refine"} <= set(report["timings_s"])
    preview = np.asarray(Image.open(tmp_path / "p.png"))
    assert preview.ndim == 3 and preview.shape[2] == 3


def test_segment_split_writes_one_file_per_organ(tmp_path, model_flags):
    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    folder = tmp_path / "masks"
    code = main(
        ["segment", str(ct), "--organ", "liver", "--organ", "spleen", "--split",
         "-o", str(folder), "-q", *model_flags]
    )  # fmt: skip
    assert code == 0
    for organ in ("liver", "spleen"):
        img = nib.load(folder / f"{organ}.nii.gz")
        assert img.shape == (122, 101, 30)
        assert set(np.unique(np.asarray(img.dataobj))) <= {0, 1}


def test_segment_png_slice(tmp_path, model_flags):
    png = require_data(SLICES / "images" / "amos_0004_75.png")
    out = tmp_path / "liver.png"
    # The AMOS slices are CT; nothing in the file says so, so the modality is given.
    args = ["segment", str(png), "--organ", "liver", "--modality", "ct", "-o", str(out), "-q"]
    assert main([*args, *model_flags]) == 0
    mask = np.asarray(Image.open(out))
    assert mask.shape == (512, 512) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}


def test_segment_is_deterministic(tmp_path, tiny_models):
    png = require_data(SLICES / "images" / "amos_0006_90.png")
    options = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    runs = [
        salip.segment(
            png, organs=["liver", "aorta"], write=False, modality="ct", **tiny_models, **options
        )
        for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0].labels, runs[1].labels)
    assert (
        runs[0].report["organs"]["liver"]["chosen"] == runs[1].report["organs"]["liver"]["chosen"]
    )


def test_proposals_command_writes_amg_records(tmp_path, tiny_models):
    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    out = tmp_path / "proposals.json"
    code = main(
        ["proposals", str(ct), "--slice", "12", "-o", str(out), "-q",
         "--sam-checkpoint", tiny_models["sam_checkpoint"], "--device", "cpu", *FAST]
    )  # fmt: skip
    assert code == 0
    records = json.loads(out.read_text())
    assert records and set(records[0]) == {
        "segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score",
        "crop_box",
    }  # fmt: skip
    # Axial slice 12 of a RAS volume is shown as a 101 (A) x 122 (R) image.
    assert records[0]["segmentation"]["size"] == [101, 122]
    assert main(["proposals", str(ct), "--slice", "99", "-o", str(tmp_path / "x.json"),
                 "--sam-checkpoint", tiny_models["sam_checkpoint"]]) == 1  # fmt: skip


def test_help_documents_every_config_field(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = capsys.readouterr().out
    for name in flat_fields():
        assert "--" + name.replace("_", "-") in text, name
    for flag in ("--organ", "--output", "--split", "--overwrite", "--preview", "--report"):
        assert flag in text


def test_flags_map_one_to_one_onto_config(tmp_path, monkeypatch):
    """Each flag lands in the config field of the same name."""
    seen = {}

    def fake_segment(source, **kwargs):
        seen.update(kwargs)
        raise salip.SalipError("stop")

    monkeypatch.setattr("salip.apps.cli.segment.segment", fake_segment)
    main(["segment", "x.nii.gz", "--organ", "liver", "--points-per-side", "7", "--window",
          "lung", "--crop-mode", "box", "--no-largest-component", "--top-k", "3"])  # fmt: skip
    config = salip.SegmentConfig().replace(**{k: v for k, v in seen.items() if k in flat_fields()})
    assert config.proposals.points_per_side == 7
    assert config.slicing.window == "lung"
    assert config.crops.crop_mode == "box"
    assert config.assembly.largest_component is False
    assert config.scoring.top_k == 3
    assert dataclasses.asdict(config.models) == dataclasses.asdict(salip.SegmentConfig().models)


# --- errors: one line, non-zero exit, no traceback, outputs untouched ---------------------


def _error(capsys, argv) -> str:
    code = main(argv)
    stderr = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("salip: error:")]
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0])
    return errors[0]


def test_missing_file(capsys, tmp_path):
    assert "no such file" in _error(
        capsys, ["segment", str(tmp_path / "nope.nii.gz"), "--organ", "liver"]
    )


def test_corrupt_and_truncated_nifti(capsys, tmp_path, model_flags):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"\x00" * 100)
    assert "cannot read NIfTI" in _error(
        capsys, ["segment", str(garbage), "--organ", "liver", *model_flags]
    )
    whole = require_data(TOTALSEG / "example_ct_sm.nii.gz").read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    assert "cannot read NIfTI" in _error(
        capsys,
        [
            "segment",
            str(truncated),
            "--organ",
            "liver",
            "-o",
            str(tmp_path / "o.nii.gz"),
            *model_flags,
        ],
    )
    assert not (tmp_path / "o.nii.gz").exists()


def test_4d_input(capsys, tmp_path):
    path = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.int16), np.eye(4)), path)
    assert "4D image" in _error(capsys, ["segment", str(path), "--organ", "liver"])


def test_unsupported_and_corrupt_images(capsys, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "unsupported file type" in _error(capsys, ["segment", str(text), "--organ", "liver"])
    png = tmp_path / "broken.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    assert "cannot read image" in _error(capsys, ["segment", str(png), "--organ", "liver"])
    empty = tmp_path / "empty_dicom"
    empty.mkdir()
    (empty / "readme.txt").write_text("no dicom here")
    assert "no DICOM image files" in _error(capsys, ["segment", str(empty), "--organ", "liver"])


def test_unknown_organ_suggests_closest(capsys):
    err = _error(capsys, ["segment", "x.nii.gz", "--organ", "livr"])
    assert "unknown organ 'livr'" in err and "Did you mean: liver" in err


def test_missing_and_incompatible_checkpoint(capsys, tmp_path, tiny_models):
    ct = str(require_data(TOTALSEG / "example_ct_sm.nii.gz"))
    out = str(tmp_path / "o.nii.gz")
    err = _error(
        capsys, ["segment", ct, "--organ", "liver", "-o", out, "--sam-checkpoint", "vit_b"]
    )
    assert "salip models download vit_b" in err
    err = _error(
        capsys,
        ["segment", ct, "--organ", "liver", "-o", out, "--sam-checkpoint",
         tiny_models["sam_checkpoint"], "--sam-model-type", "vit_h"],
    )  # fmt: skip
    assert "not vit_h" in err
    assert not (tmp_path / "o.nii.gz").exists()


def test_existing_output_is_kept_unless_overwrite(capsys, tmp_path, model_flags):
    png = require_data(SLICES / "images" / "amos_0004_75.png")
    out = tmp_path / "mask.png"
    out.write_bytes(b"precious")
    assert "--overwrite" in _error(
        capsys,
        ["segment", str(png), "--organ", "liver", "-o", str(out), "--modality", "ct", *model_flags],
    )
    assert out.read_bytes() == b"precious"
    assert (
        main(
            [
                "segment",
                str(png),
                "--organ",
                "liver",
                "-o",
                str(out),
                "--overwrite",
                "--modality",
                "ct",
                "-q",
                *model_flags,
            ]
        )
        == 0
    )
    assert np.asarray(Image.open(out)).shape == (512, 512)


def test_never_writes_into_the_input(capsys, tmp_path, model_flags):
    src = tmp_path / "scan.nii.gz"
    data = np.asarray(nib.load(require_data(TOTALSEG / "example_ct_sm.nii.gz")).dataobj)
    nib.save(nib.Nifti1Image(data, np.eye(4)), src)
    before = src.read_bytes()
    err = _error(
        capsys,
        ["segment", str(src), "--organ", "liver", "-o", str(src), "--overwrite", *model_flags],
    )
    assert "refusing to write into the input" in err
    assert src.read_bytes() == before
    assert gzip.decompress(before)  # still a valid gzip stream


def test_wrong_output_suffix(capsys, tmp_path, model_flags):
    png = require_data(SLICES / "images" / "amos_0004_75.png")
    err = _error(
        capsys,
        ["segment", str(png), "--organ", "liver", "-o", str(tmp_path / "m.nii.gz"), *model_flags],
    )
    assert ".png" in err


def test_organs_command(capsys):
    assert main(["organs"]) == 0
    out = capsys.readouterr().out
    assert "liver" in out and "inferior_vena_cava" in out and "postcava" in out


def test_other_libraries_warnings_are_one_line_and_quiet_with_q(capsys):
    """highdicom's warnings run over several lines, and Ray logs notices through its own
    handler: one line each by default, none with -q (salip's own warnings still show)."""
    import logging
    import warnings

    from salip.api import cluster
    from salip.apps.cli.app import _setup_logging

    for quiet in (False, True):
        _setup_logging(0, quiet)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = logging._showwarning  # what captureWarnings installs  # noqa: SLF001
            warnings.warn("a highdicom note:\nover two lines", UserWarning, stacklevel=1)
        logging.getLogger("salip.api.many").warning("case x failed: why")
        err = capsys.readouterr().err
        assert err.endswith("case x failed: why\n"), repr(err)
        noted = [line for line in err.splitlines() if "highdicom" in line]
        assert len(noted) == (0 if quiet else 1), err
        assert quiet or "a highdicom note: over two lines" in noted[0], err
        # Ray is started quiet too (its token-authentication notice is a WARNING).
        assert cluster.logger.isEnabledFor(logging.INFO) is not quiet


def test_only_the_command_that_runs_is_imported():
    """The lazy boundary is importing the command: `salip organs` loads neither torch nor
    another command's module, and its help lists every command."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from salip.apps.cli import main\n"
        "code = main(['organs'])\n"
        "print('MODULES', 'torch' in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith('salip.apps.cli.')))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    last = run.stdout.strip().splitlines()[-1]
    assert (
        last
        == "MODULES False ['salip.apps.cli.app', 'salip.apps.cli.flags', 'salip.apps.cli.organs']"
    )
    from salip.apps.cli.app import COMMANDS, build_parser

    listed = build_parser("organs")._subparsers._group_actions[0].choices  # noqa: SLF001
    assert list(listed) == list(COMMANDS)
