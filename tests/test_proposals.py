"""Everything-mode proposals match segment-anything's SamAutomaticMaskGenerator."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from salip.core.config import AreaFilterConfig, ProposalConfig
from salip.engines.everything_mode import generate_proposals
from salip.models.sam import load_sam
from salip.models.sam_runtime import encode_images
from tests.conftest import SLICES, require_data

# A random-weight SAM gives image-wide masks that box NMS collapses, so the settings that
# leave many proposals disable NMS (IoU never exceeds 1.0); the filters are exercised by
# the other cases.
CASES = {
    "no-filters": dict(
        points_per_side=12, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    ),
    "iou-filter": dict(
        points_per_side=12, pred_iou_thresh=0.05, stability_score_thresh=0.0, box_nms_thresh=1.0
    ),
    "small-regions": dict(
        points_per_side=6,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        min_mask_region_area=50,
    ),
    "defaults": dict(points_per_side=16),
}


def _paired_iou(ref: list[dict], ours: list[dict]) -> np.ndarray:
    """IoU of each reference mask with our mask at the same rank (a stricter match than
    best-of-all, since the order must agree too)."""
    ious = []
    for r, o in zip(ref, ours):
        a = mask_utils.decode(r["segmentation"]).astype(bool)
        b = mask_utils.decode(o["segmentation"]).astype(bool)
        ious.append((a & b).sum() / max(1, (a | b).sum()))
    return np.array(ious)


@pytest.fixture(scope="module")
def sam(tiny_sam_path):
    return load_sam(str(tiny_sam_path))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("image_name", ["amos_0004_75", "amos_0006_90"])
def test_proposals_match_reference_generator(sam, case, image_name):
    from segment_anything import SamAutomaticMaskGenerator

    path = require_data(SLICES / "images" / f"{image_name}.png")
    image = np.asarray(Image.open(path).convert("RGB"))
    settings = CASES[case]
    reference = SamAutomaticMaskGenerator(sam.model, output_mode="coco_rle", **settings).generate(
        image
    )
    (embedding,) = encode_images(sam.model, [image], batch_size=1)
    ours = generate_proposals(sam.model, embedding, ProposalConfig(**settings)).to_records()

    assert len(ours) == len(reference)
    n_masks = 3 * settings["points_per_side"] ** 2
    if case == "no-filters":
        assert len(ours) == n_masks
    if case == "iou-filter":
        assert 0 < len(ours) < n_masks, "the filter must keep some and drop some"
    if not reference:
        return
    assert set(ours[0]) == set(reference[0])
    ious = _paired_iou(reference, ours)
    assert ious.mean() >= 0.99 and ious.min() >= 0.95
    # Same order, same scores and points.
    np.testing.assert_allclose(
        [r["predicted_iou"] for r in ours], [r["predicted_iou"] for r in reference], atol=1e-5
    )
    np.testing.assert_allclose(
        [r["stability_score"] for r in ours], [r["stability_score"] for r in reference], atol=1e-5
    )
    np.testing.assert_allclose(
        [r["point_coords"] for r in ours], [r["point_coords"] for r in reference]
    )
    np.testing.assert_allclose([r["bbox"] for r in ours], [r["bbox"] for r in reference])


def test_batched_encoder_matches_single_images(sam):
    """Encoding slices in a batch gives the embeddings of encoding them one by one."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(3)]
    batched = encode_images(sam.model, images, batch_size=3)
    single = [encode_images(sam.model, [im], batch_size=1)[0] for im in images]
    for b, s in zip(batched, single):
        assert b.original_size == s.original_size == (96, 128)
        assert b.input_size == s.input_size == (192, 256)
        np.testing.assert_allclose(b.features.numpy(), s.features.numpy(), atol=1e-5)


def _real_slices():
    images = [
        np.asarray(Image.open(require_data(SLICES / "images" / f"{name}.png")).convert("RGB"))
        for name in ("amos_0004_75", "amos_0006_90")
    ]
    # A third slice: the first one flipped, so the batch holds three different images.
    return [*images, np.ascontiguousarray(images[0][:, ::-1])]


def test_cross_slice_decoding_matches_one_slice_at_a_time(sam):
    """Point prompts decoded in batches that span slices give each slice's own logits."""
    import torch

    from salip.models.sam_runtime import decode, decode_points_across

    embeddings = encode_images(sam.model, _real_slices(), batch_size=3)
    features = torch.cat([e.features for e in embeddings])
    points = torch.tensor([[[10.0, 20.0]], [[100.0, 50.0]], [[60.0, 60.0]], [[5.0, 200.0]]])
    owner = torch.tensor([2, 0, 1, 0])
    first = embeddings[0]
    logits, iou = decode_points_across(
        sam.model, features, owner, points, first.input_size, first.original_size
    )
    for j, i in enumerate(owner.tolist()):
        ref_logits, ref_iou = decode(sam.model, embeddings[i], points=points[j : j + 1])
        torch.testing.assert_close(logits[j : j + 1], ref_logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(iou[j : j + 1], ref_iou, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("nms", [1.0, 0.7])
def test_batched_proposals_equal_per_slice_proposals(sam, nms):
    """Proposals of a batch of slices (decoder calls spanning slices, NMS per slice) equal
    the proposals of each slice generated alone, mask for mask and in order."""
    from salip.engines.everything_mode import generate_proposals_batch

    embeddings = encode_images(sam.model, _real_slices(), batch_size=3)
    # 64 prompts per slice in calls of 40: every call but the first mixes two slices.
    config = ProposalConfig(
        points_per_side=8,
        points_per_batch=40,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=nms,
    )
    batched = generate_proposals_batch(sam.model, embeddings, config)
    assert len(batched) == 3
    for emb, got in zip(embeddings, batched, strict=True):
        alone = generate_proposals(
            sam.model, emb, ProposalConfig(**{**config.__dict__, "points_per_batch": 64})
        )
        assert len(got) == len(alone) > 0
        np.testing.assert_array_equal(got.masks.numpy(), alone.masks.numpy())
        np.testing.assert_allclose(got.iou_preds.numpy(), alone.iou_preds.numpy(), atol=1e-5)
        np.testing.assert_array_equal(got.points.numpy(), alone.points.numpy())
    if nms == 1.0:  # no suppression: every grid point gives its three masks
        assert [len(p) for p in batched] == [3 * 64] * 3


def test_area_filter_bounds(sam):
    import torch

    from salip.engines.area_filter import area_filter
    from salip.engines.everything_mode import Proposals

    masks = torch.zeros((3, 10, 10), dtype=torch.bool)
    masks[0, :1, :1] = True  # 1% of the slice
    masks[1, :5, :4] = True  # 20%
    masks[2] = True  # 100%
    props = Proposals(masks, torch.zeros((3, 4)), torch.ones(3), torch.ones(3), torch.zeros((3, 2)))
    kept = area_filter(props, AreaFilterConfig(min_area=0.05, max_area=0.5))
    assert len(kept) == 1 and int(kept.areas[0]) == 20
    kept = area_filter(props, AreaFilterConfig(min_area=0.01, max_area=1.0))
    assert len(kept) == 3


def test_area_filter_floor_in_mm2_for_volumes():
    """A volume's slices keep a structure by its size in mm², whatever their resolution;
    a 2D image, whose pixel size is unknown, keeps the fraction of the image."""
    import torch

    from salip.engines.area_filter import area_filter, speck_pixels
    from salip.engines.everything_mode import Proposals

    config = AreaFilterConfig(min_area=0.001, min_area_mm2=20.0, max_area=0.5)

    def disc(size: int, radius: float) -> Proposals:
        yy, xx = np.mgrid[:size, :size]
        mask = torch.from_numpy((yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2)
        return Proposals(mask[None], torch.zeros((1, 4)), torch.ones(1), torch.ones(1),
                         torch.zeros((1, 2)))  # fmt: skip

    # A 6 mm disc (28 mm²) on a 512² slice of 0.5 mm pixels (113 px, under 0.1% = 262 px)
    # and on a 100² slice of 2 mm pixels (7 px) is kept on both; a 3 mm disc (7 mm²) on
    # neither.
    for size, pixel in ((512, 0.5), (100, 2.0)):
        assert len(area_filter(disc(size, 3.0 / pixel), config, (pixel, pixel))) == 1
        assert len(area_filter(disc(size, 1.5 / pixel), config, (pixel, pixel))) == 0
    assert speck_pixels(config, (512, 512), (0.5, 2.0)) == pytest.approx(20.0)
    # 2D image: 0.1% of 512² is 262 px, so the 113-px disc goes and a 300-px one stays.
    assert speck_pixels(config, (512, 512), None) == pytest.approx(262.144)
    assert len(area_filter(disc(512, 6.0), config, None)) == 0
    assert len(area_filter(disc(512, 10.0), config, None)) == 1


def test_a_region_decodes_only_its_grid_points_as_the_reference_would(sam):
    """Proposals restricted to a region equal segment-anything's generator run on the grid
    points inside it (its ``point_grids``), and a slice whose region is empty has none."""
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.utils.amg import build_all_layer_point_grids

    from salip.engines.everything_mode import generate_proposals_batch, grid_points

    image = _real_slices()[0]
    h, w = image.shape[:2]
    region = np.zeros((h, w), dtype=bool)
    region[h // 4 : 3 * h // 4, : w // 2] = True  # a block on the left
    points = grid_points(8, (h, w), region).numpy()
    full = build_all_layer_point_grids(8, 0, 1)[0] * np.array([[w, h]])
    inside = region[full[:, 1].astype(int), full[:, 0].astype(int)]
    assert 0 < len(points) == inside.sum() < 64
    np.testing.assert_allclose(points, full[inside])  # the grid's own points, in order
    np.testing.assert_allclose(grid_points(8, (h, w)).numpy(), full)

    settings = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    reference = SamAutomaticMaskGenerator(
        sam.model,
        points_per_side=None,
        point_grids=[points / np.array([[w, h]])],
        output_mode="coco_rle",
        **settings,
    ).generate(image)
    (embedding,) = encode_images(sam.model, [image], batch_size=1)
    config = ProposalConfig(points_per_side=8, **settings)
    ours, none = generate_proposals_batch(
        sam.model, [embedding, embedding], config, regions=[region, np.zeros_like(region)]
    )
    assert len(ours) == len(reference) == 3 * len(points) and len(none) == 0
    ours_records = ours.to_records()
    np.testing.assert_allclose(
        [r["point_coords"] for r in ours_records], [r["point_coords"] for r in reference]
    )
    ious = _paired_iou(reference, ours_records)
    assert ious.mean() >= 0.99 and ious.min() >= 0.95
    with pytest.raises(ValueError, match="region has shape"):
        grid_points(8, (h, w), region[:-1])
