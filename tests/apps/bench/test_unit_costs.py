"""``salip bench-units`` with the tiny test SAM on CPU: three positive unit costs, the result
keys and Markdown line, the CLI's JSON, and one-line errors for bad settings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from salip.apps.bench.unit_costs import markdown_line, measure_unit_costs, phantom_slices
from salip.apps.cli import main
from salip.core.errors import ConfigError

COSTS = ("encoder_s_per_slice", "everything_s_per_slice", "box_s_per_prompt")
KEYS = {
    *COSTS,
    "everything_over_encoder",
    "date",
    "device",
    "hardware",
    "torch",
    "model_type",
    "weights",
    "image_size",
    "points_per_side",
    "points_per_batch",
    "precision",
    "runtime",
}


def test_measure_unit_costs_tiny(tiny_sam_path):
    result = measure_unit_costs(
        sam_checkpoint=str(tiny_sam_path),
        model_type=None,
        device="cpu",
        slices=1,
        image_size=64,
        points_per_side=4,
        box_prompts=2,
    )
    assert set(result) >= KEYS
    for key in COSTS:
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["everything_over_encoder"] == pytest.approx(
        result["everything_s_per_slice"] / result["encoder_s_per_slice"]
    )
    assert result["device"] == "cpu" and result["precision"] == "fp32"
    # The default runtime on CPU at fp32 is ONNX Runtime, at 16 prompts per decoder call.
    assert result["runtime"] == "onnx" and result["points_per_batch"] == 16
    assert result["box_prompts"] == 2
    assert result["weights"].startswith("not official") and result["image_size"] == 64
    assert result["encoder_s_per_slice_auto_batch"] is None
    line = markdown_line(result)
    assert line.startswith("| ") and line.endswith(" |") and "| fp32, onnx |" in line
    for key in COSTS:
        assert f"{result[key]:.4g}" in line


def test_cli_writes_json(tmp_path, capsys, tiny_sam_path):
    out = tmp_path / "units.json"
    args = ["bench-units", "--sam-checkpoint", str(tiny_sam_path), "--device", "cpu"]
    args += ["--slices", "1", "--image-size", "48", "--points-per-side", "2"]
    args += ["--box-prompts", "2", "--json", str(out), "-q"]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert set(result) >= KEYS and all(result[k] > 0 for k in COSTS)
    assert result["points_per_side"] == 2 and result["image_size"] == 48
    assert capsys.readouterr().out.strip() == markdown_line(result)


def test_bad_model_type_is_one_line():
    with pytest.raises(ConfigError) as info:
        measure_unit_costs(model_type="vit_x", device="cpu", slices=1)
    message = str(info.value)
    assert "\n" not in message and "vit_x" in message
    assert all(name in message for name in ("vit_b", "vit_l", "vit_h"))


def test_cli_bad_model_type_and_counts(capsys):
    assert main(["bench-units", "--sam-model-type", "vit_x", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "vit_b, vit_l, vit_h" in err
    with pytest.raises(ConfigError, match="slices"):
        measure_unit_costs(slices=0, device="cpu")


def test_phantom_slices_have_structure():
    images = phantom_slices(2, 64)
    assert len(images) == 2
    assert all(i.shape == (64, 64, 3) and i.dtype == np.uint8 for i in images)
    assert len(np.unique(images[0])) > 3  # air, body, organs
