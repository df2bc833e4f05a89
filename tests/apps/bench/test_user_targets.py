"""The benchmark names user targets (from $SALIP_PROMPTS_DIR) in a dataset's target."""

from __future__ import annotations

import csv
import json

from salip.apps.bench.runner import run_benchmark
from salip.core.prompts import packaged_dir
from tests.conftest import SLICES, require_data


def test_a_benchmark_dataset_can_target_a_user_structure(tmp_path, monkeypatch, tiny_models):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    liver = json.loads((packaged_dir() / "liver.json").read_text(encoding="utf-8"))
    liver["organ"] = "hepatic_parenchyma"
    liver["definition"]["synonyms"] = ["liver tissue"]
    (prompts / "hepatic_parenchyma.json").write_text(json.dumps(liver), encoding="utf-8")
    monkeypatch.setenv("SALIP_PROMPTS_DIR", str(prompts))
    require_data(SLICES / "images" / "amos_0004_75.png")
    config = tmp_path / "bench.toml"
    config.write_text(
        f"""
[models]
sam_checkpoint = "{tiny_models["sam_checkpoint"]}"
clip_model = "{tiny_models["clip_model"]}"
device = "cpu"

[metrics]
bootstrap_resamples = 20

[[methods]]
name = "sam-gt-box"
method = "sam-gt-box"

[[datasets]]
name = "amos"
kind = "image-mask-pairs"
images = "{SLICES}/images/*.png"
masks = "{{dir}}/../masks/{{stem}}_liver.png"
target = "Liver tissue"
modality = "ct"
""",
        encoding="utf-8",
    )
    result = run_benchmark(config, out=tmp_path / "out")
    with open(result.out / "cases.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["organ"], r["status"]) for r in rows] == [("hepatic_parenchyma", "ok")] * 2
