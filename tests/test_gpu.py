"""The cascade on a CUDA device (skipped where there is none, as on CI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import salip
from tests.conftest import SLICES, TOTALSEG, require_data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("scoring", ["contrast", "salip"])
def test_cuda_run_matches_the_cpu_run(tmp_path, tiny_models, scoring):
    """Same inputs on CPU and GPU: same crops chosen, masks nearly identical."""
    image = require_data(SLICES / "images" / "amos_0006_90.png")
    options = dict(write=False, points_per_side=8, scoring=scoring, organs=["liver", "kidneys"])
    # Random weights: let every proposal through so that crops are scored and refined.
    options.update(pred_iou_thresh=0.0, stability_score_thresh=0.0, min_area=0.0, max_area=1.0)
    cpu = salip.segment(image, **options, **tiny_models)
    gpu = salip.segment(image, **options, **{**tiny_models, "device": "cuda"})
    assert gpu.report["models"]["device"] == "cuda"
    for organ in ("liver", "kidneys"):
        chosen = [[c["bbox"] for c in r.report["organs"][organ]["chosen"]] for r in (cpu, gpu)]
        assert chosen[0] == chosen[1]
        if scoring == "salip":  # always keeps crops: the refinement ran on the GPU
            assert chosen[1]
        a, b = cpu.masks[organ].astype(bool), gpu.masks[organ].astype(bool)
        assert (a ^ b).sum() <= 0.01 * max(1, (a | b).sum())


def test_cuda_volume_with_cached_text(tmp_path, tiny_models):
    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    options = dict(organs=["liver", "kidney_left"], write=False, points_per_side=8)
    options.update(pred_iou_thresh=0.0, stability_score_thresh=0.0, min_area=0.0, max_area=1.0)
    first = salip.segment(ct, **options, **{**tiny_models, "device": "cuda"})
    second = salip.segment(ct, **options, **{**tiny_models, "device": "cuda"})
    cache = second.report["models"]["scoring"]["text_cache"]
    assert cache["misses"] == 0 and cache["hits"] > 0  # loaded onto the GPU from disk
    for organ in ("liver", "kidney_left"):
        np.testing.assert_array_equal(first.masks[organ], second.masks[organ])
        assert first.masks[organ].shape == (122, 101, 30)
