"""benchmarks/gpu_check.py: its dry run (CPU, tiny models, small sizes) goes through every
step that the one-shot GPU run takes, so nothing is first tried on the GPU."""

from __future__ import annotations

import importlib.util
import json
import sys

from tests.conftest import REPO, TOTALSEG, require_data


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_gpu_check_dry_run_writes_its_json_and_rows(tmp_path, capsys):
    require_data(TOTALSEG / "example_ct_sm.nii.gz")
    gpu_check = _gpu_check()
    out = tmp_path / "dry.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    check = json.loads(out.read_text())
    assert check["dry_run"] and check["device"] == "cpu" and check["weights"].startswith("random")
    (units,) = check["unit_costs"]
    assert units["encoder_s_per_slice"] > 0 and units["everything_s_per_slice"] > 0
    runs = {row["strategy"]: row for row in check["end_to_end"]}
    assert set(runs) == {"slices", "volume"}
    for row in runs.values():
        assert row["slices"] == 8  # 4 slices of the CT, tiled twice
        assert row["wall_s"] > 0 and row["timings_s"]["sam_encoder"] > 0
        assert row["counts"]["point_prompts"] > 0
    # The volume strategy runs everything mode on its key slices only.
    assert runs["volume"]["counts"]["proposal_slices"] < runs["slices"]["counts"]["proposal_slices"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[:-1] == check["results_md"] and len(printed[:-1]) == 3
    assert all(line.startswith("| ") for line in printed[:-1])
    # Without a CUDA device the full check refuses to start, and says what to do.
    if not __import__("torch").cuda.is_available():
        assert gpu_check.main(["--out", str(tmp_path / "full.json")]) == 2
        assert "use --dry-run" in capsys.readouterr().err
