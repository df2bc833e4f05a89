"""CLIP crops and scores: equal to open_clip's own preprocess + encode_image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from salip.core.config import CropConfig
from salip.engines.crops import expand_box, make_crops, pad_to_square
from salip.engines.everything_mode import Proposals
from salip.engines.scoring import ClipScorer, cosine_scores, select_top_k
from salip.models.clip import load_clip


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    return load_clip(f"local-dir:{tiny_clip_dir}")


def test_crop_embedding_equals_open_clip(clip, tiny_clip_dir):
    import open_clip

    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in (20, 64, 133)]
    ours = ClipScorer(clip, "cpu", batch_size=2).image_embeddings(crops)

    # Reference: a fresh model from open_clip's factory, its own transform, one crop at a time.
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_clip_dir}")
    model.eval()
    with torch.no_grad():
        ref = torch.cat([model.encode_image(preprocess(Image.fromarray(c))[None]) for c in crops])
    ref = ref / ref.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_text_embedding_is_normalised_mean_and_cached(clip):
    scorer = ClipScorer(clip, "cpu")
    texts = ["a large homogeneous organ", "a bean-shaped organ", "an air-filled field"]
    emb = scorer.text_embedding(texts)
    with torch.no_grad():
        each = clip.model.encode_text(clip.tokenizer(texts)).float()
    each = each / each.norm(dim=-1, keepdim=True)
    expected = each.mean(0) / each.mean(0).norm()
    torch.testing.assert_close(emb, expected)
    assert scorer.text_embedding(texts) is emb  # computed once


def test_top_k_order_ties_and_eligibility():
    scores = torch.tensor([0.2, 0.5, 0.5, 0.1])
    assert select_top_k(scores, 2) == [1, 2]
    assert select_top_k(scores, 1) == [1]
    assert select_top_k(scores, 10, scores >= 0.2) == [1, 2, 0]
    assert select_top_k(scores, 3, scores >= 0.9) == []
    assert select_top_k(scores, 2, torch.tensor([True, False, True, True])) == [2, 0]
    emb = torch.eye(3)
    assert cosine_scores(emb, torch.tensor([0.0, 1.0, 0.0])).tolist() == [0.0, 1.0, 0.0]


def test_pad_to_square_keeps_elongated_content_centred():
    strip = np.full((10, 40, 3), 200, dtype=np.uint8)
    square = pad_to_square(strip)
    assert square.shape == (40, 40, 3)
    assert (square[15:25] == 200).all() and square[:15].max() == 0 and square[25:].max() == 0


def test_masked_and_box_crops():
    image = np.full((50, 60, 3), 100, dtype=np.uint8)
    mask = torch.zeros((1, 50, 60), dtype=torch.bool)
    mask[0, 10:20, 20:40] = True
    mask[0, 10, 20] = False  # a masked-out pixel inside the box
    props = Proposals(
        mask,
        torch.tensor([[20.0, 10.0, 39.0, 19.0]]),
        torch.ones(1),
        torch.ones(1),
        torch.zeros((1, 2)),
    )
    (masked,) = make_crops(image, props, CropConfig(crop_mode="masked", crop_margin=0.0))
    assert masked.shape == (20, 20, 3)  # 20 wide, 10 high -> padded to 20x20
    assert masked[5, 0].max() == 0  # the blacked-out pixel (row 10 -> padded row 5)
    assert masked[6, 5].min() == 100
    (box,) = make_crops(image, props, CropConfig(crop_mode="box", crop_margin=0.5))
    # box grows by 10 px in x and 5 px in y on each side: 40 x 20 -> padded 40 x 40
    assert box.shape == (40, 40, 3)
    assert expand_box(np.array([20, 10, 39, 19]), 0.5, 50, 60) == (10, 5, 50, 25)
