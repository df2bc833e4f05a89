"""Benchmark baselines equal segment-anything's own SamPredictor on the same prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from salip.apps.bench.baselines import (
    component_boxes,
    everything_oracle,
    sam_gt_box,
    sam_unprompted,
)
from salip.engines.everything_mode import Proposals
from salip.models.sam import load_sam
from salip.models.sam_runtime import encode_images
from tests.conftest import SLICES, require_data


@pytest.fixture(scope="module")
def sam(tiny_sam_path):
    return load_sam(str(tiny_sam_path)).model


@pytest.fixture(scope="module")
def slice_and_predictor(sam):
    from segment_anything import SamPredictor

    path = require_data(SLICES / "images" / "amos_0006_90.png")
    image = np.asarray(Image.open(path).convert("RGB"))
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    (embedding,) = encode_images(sam, [image], 1)
    return image, embedding, predictor


def test_component_boxes_are_tight_xyxy():
    ref = np.zeros((20, 30), dtype=bool)
    ref[2:5, 3:9] = True  # rows 2-4, cols 3-8
    ref[10:18, 20:22] = True
    ref[5, 9] = True  # touches the first blob diagonally: same 8-connected component
    assert component_boxes(ref).tolist() == [[3.0, 2.0, 9.0, 5.0], [20.0, 10.0, 21.0, 17.0]]
    assert component_boxes(np.zeros((4, 4), dtype=bool)).shape == (0, 4)


def test_sam_gt_box_equals_sam_predictor(sam, slice_and_predictor):
    _, embedding, predictor = slice_and_predictor
    ref = np.asarray(Image.open(require_data(SLICES / "masks" / "amos_0006_90_liver.png")))
    ref = (ref[..., 0] if ref.ndim == 3 else ref) > 127
    (box,) = component_boxes(ref).numpy()
    expected, _, _ = predictor.predict(box=box, multimask_output=False)
    ours = sam_gt_box(sam, embedding, ref)
    np.testing.assert_array_equal(ours, expected[0])
    assert not sam_gt_box(sam, embedding, np.zeros_like(ref)).any()


def test_sam_unprompted_equals_sam_predictor(sam, slice_and_predictor):
    _, embedding, predictor = slice_and_predictor
    masks, iou, _ = predictor.predict(multimask_output=True)
    np.testing.assert_array_equal(sam_unprompted(sam, embedding), masks[int(np.argmax(iou))])


def test_everything_oracle_picks_the_best_iou():
    ref = np.zeros((10, 10), dtype=bool)
    ref[2:6, 2:6] = True
    masks = torch.zeros((3, 10, 10), dtype=torch.bool)
    masks[0, 0:10, 0:10] = True  # IoU 16/100
    masks[1, 2:6, 2:5] = True  # IoU 12/16
    masks[2, 7:9, 7:9] = True  # IoU 0
    props = Proposals(masks, torch.zeros((3, 4)), torch.ones(3), torch.ones(3), torch.zeros((3, 2)))
    mask, iou = everything_oracle(props, ref)
    assert iou == pytest.approx(0.75) and np.array_equal(mask, masks[1].numpy())
    empty, iou0 = everything_oracle(props, np.zeros_like(ref))
    assert iou0 == 0.0 and not empty.any()
