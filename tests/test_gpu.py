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


def test_cuda_auto_batches_are_measured_and_give_the_same_masks(tmp_path, tiny_models):
    """On CUDA, auto batch sizes come from a measured probe; masks equal fixed sizes."""
    from salip.core.config import ProposalConfig
    from salip.engines.encoder import encoder_batch
    from salip.engines.everything_mode import decoder_batch, generate_proposals_batch
    from salip.models.sam import load_sam
    from salip.models.sam_runtime import encode_images

    model = load_sam(tiny_models["sam_checkpoint"], device="cuda").model
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(6)]
    enc = encoder_batch(0, "cuda")
    assert enc.calibrating and enc.value == 1
    embeddings = encode_images(model, images, enc)
    assert not enc.calibrating and enc.value >= 1
    config = ProposalConfig(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    dec = decoder_batch(config, "cuda")
    auto = generate_proposals_batch(model, embeddings, config, dec)
    assert not dec.calibrating and dec.value >= 64
    fixed = generate_proposals_batch(model, embeddings, config, decoder_batch(config, "cpu"))
    for a, b in zip(auto, fixed, strict=True):
        assert torch.equal(a.masks, b.masks)


def test_cuda_fused_attention_encoder_matches_stock(tiny_models):
    from salip.models.sam import load_sam
    from salip.models.sam_runtime import fast_encoder

    model = load_sam(tiny_models["sam_checkpoint"], device="cuda").model
    x = torch.randn(2, 3, 256, 256, device="cuda")
    with torch.no_grad():
        stock = model.image_encoder(x)
        torch.testing.assert_close(fast_encoder(model)(x), stock, rtol=1e-3, atol=1e-3)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fused = fast_encoder(model)(x).float()
    assert torch.nn.functional.cosine_similarity(fused.flatten(), stock.flatten(), 0) > 0.99
