"""``salip bench-speed`` on CPU with tiny models: it runs, writes its JSON, and salip's
masks equal the reference structure's at fp32 (same proposals, crops, scores and boxes)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from salip.apps.bench.speed import parse_shape, synthetic_ct
from salip.apps.cli import main
from salip.core.errors import ConfigError
from tests.conftest import TOTALSEG, require_data

KEYS = {
    "reference_s",
    "salip_s",
    "ratio",
    "agreement_iou",
    "stages",
    "device",
    "precision",
    "shape",
    "sam_checkpoint_sha256",
}
# Random weights never pass the default IoU/stability thresholds; 0 gives every stage work.
LOOSE = ["--points-per-side", "6", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]


def _models(tiny_sam_path, tiny_clip_dir):
    return [
        "--sam-checkpoint",
        str(tiny_sam_path),
        "--clip-model",
        f"local-dir:{tiny_clip_dir}",
        "--device",
        "cpu",
    ]


def test_bench_speed_synthetic_fp32_agrees(tmp_path, capsys, tiny_sam_path, tiny_clip_dir):
    out = tmp_path / "speed.json"
    args = ["bench-speed", "--shape", "96x80x6", "--json", str(out), "-q"]
    assert main(args + _models(tiny_sam_path, tiny_clip_dir) + LOOSE) == 0
    result = json.loads(out.read_text())
    assert set(result) >= KEYS
    assert result["shape"] == [96, 80, 6] and result["device"] == "cpu"
    assert result["precision"] == "fp32" and result["slices"] == 6
    assert result["reference_s"] > 0 and result["salip_s"] > 0
    assert result["ratio"] == pytest.approx(result["reference_s"] / result["salip_s"], rel=0.01)
    assert result["agreement_iou"] >= 0.98
    assert {"sam_encoder", "proposals", "clip_image", "refine", "read", "write"} <= set(
        result["stages"]
    )
    assert {"amg", "clip", "refine", "io"} <= set(result["reference_stages"])
    assert len(result["sam_checkpoint_sha256"]) == 64
    assert result["sam_weights"].startswith("not official")
    line = capsys.readouterr().out.strip()
    assert line.startswith("| ") and f"{result['ratio']}×" in line


def test_bench_speed_on_a_real_volume(tmp_path, tiny_sam_path, tiny_clip_dir):
    src = nib.load(require_data(TOTALSEG / "example_ct_sm.nii.gz"))
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj)[..., 12:15], src.affine), path)
    out = tmp_path / "speed.json"
    args = ["bench-speed", "--input", str(path), "--json", str(out), "-q"]
    args += ["--extra-organ", "spleen,kidneys"]
    assert main(args + _models(tiny_sam_path, tiny_clip_dir) + LOOSE) == 0
    result = json.loads(out.read_text())
    assert result["shape"] == [122, 101, 3] and result["agreement_iou"] >= 0.98
    # the several-organ run is timed as well
    assert result["multi_organs"] == ["liver", "spleen", "kidneys"]
    assert result["multi_organ_s"] > 0
    assert result["multi_organ_ratio"] == pytest.approx(
        result["multi_organ_s"] / result["salip_s"], rel=0.01
    )


def test_shapes_and_phantom():
    assert parse_shape("512x512x200") == (512, 512, 200)
    for bad in ("512x512", "0x5x5", "axbxc"):
        with pytest.raises(ConfigError, match="three sizes"):
            parse_shape(bad)
    data, affine = synthetic_ct((40, 30, 5))
    assert data.shape == (40, 30, 5) and data.dtype == np.int16
    assert data.min() <= -1000 and data.max() >= 600 and affine[2, 2] == 2.5
    left, right = data[:20].mean(), data[20:].mean()
    assert left > right  # the liver-like blob lies on the patient's right (low x in RAS)
