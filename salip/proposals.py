"""Stage 3, proposals: SAM everything mode on precomputed slice embeddings.

Same algorithm and defaults as segment-anything's ``SamAutomaticMaskGenerator`` with one
crop layer (the whole slice): a point grid, predicted-IoU and stability filters, removal of
masks touching the slice border only where the crop is inner (never, for the whole slice),
box NMS, and optional small-region cleanup. The difference is that the image encoder has
already run over a batch of slices (:func:`salip.models.sam_runtime.encode_images`), and
the embedding is kept for the refinement stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from salip.config import ProposalConfig
from salip.models.sam_runtime import ImageEmbedding, decode


@dataclass
class Proposals:
    """Everything-mode proposals of one slice.

    Attributes:
        masks: NxHxW bool tensor at the slice's original size.
        boxes: Nx4 float tensor, XYXY in pixels of the slice (max coordinates inclusive).
        iou_preds: N float tensor, SAM's predicted IoU.
        stability: N float tensor, stability score.
        points: Nx2 float tensor, XY of the grid point that produced each mask, in pixels.
    """

    masks: torch.Tensor
    boxes: torch.Tensor
    iou_preds: torch.Tensor
    stability: torch.Tensor
    points: torch.Tensor

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def areas(self) -> torch.Tensor:
        """N int64 tensor of mask areas in pixels."""
        return self.masks.flatten(1).sum(1)

    def select(self, keep: torch.Tensor) -> Proposals:
        """Proposals at indices (or boolean mask) ``keep``, in that order.

        The fields may live on different devices (points stay on the CPU, as in
        segment-anything's MaskData); ``keep`` is moved to each one's.
        """
        fields = (self.masks, self.boxes, self.iou_preds, self.stability, self.points)
        return Proposals(*(f[keep.to(f.device)] for f in fields))

    def to_records(self) -> list[dict[str, Any]]:
        """Records as segment-anything's ``scripts/amg.py --convert-to-rle`` writes them.

        Keys: segmentation (COCO RLE), area, bbox (XYWH), predicted_iou, point_coords,
        stability_score, crop_box (XYWH, the whole slice).
        """
        from segment_anything.utils.amg import (
            area_from_rle,
            box_xyxy_to_xywh,
            coco_encode_rle,
            mask_to_rle_pytorch,
        )

        h, w = self.masks.shape[-2:]
        rles = mask_to_rle_pytorch(self.masks.cpu())
        return [
            {
                "segmentation": coco_encode_rle(rle),
                "area": area_from_rle(rle),
                "bbox": box_xyxy_to_xywh(self.boxes[i].cpu()).tolist(),
                "predicted_iou": float(self.iou_preds[i]),
                "point_coords": [self.points[i].cpu().tolist()],
                "stability_score": float(self.stability[i]),
                "crop_box": [0, 0, int(w), int(h)],
            }
            for i, rle in enumerate(rles)
        ]


@torch.no_grad()
def generate_proposals(
    sam: torch.nn.Module, embedding: ImageEmbedding, config: ProposalConfig
) -> Proposals:
    """Everything-mode proposals for one embedded slice.

    Returns proposals sorted by predicted IoU (NMS order), like the reference generator.
    """
    from segment_anything.utils.amg import (
        MaskData,
        batch_iterator,
        batched_mask_to_box,
        build_all_layer_point_grids,
        calculate_stability_score,
    )
    from torchvision.ops import batched_nms

    h, w = embedding.original_size
    grid = build_all_layer_point_grids(config.points_per_side, 0, 1)[0]
    points_px = grid * np.array([[w, h]])
    device = embedding.features.device
    data = MaskData()
    for (batch,) in batch_iterator(config.points_per_batch, points_px):
        pts = torch.as_tensor(batch, dtype=torch.float, device=device)
        logits, iou = decode(sam, embedding, points=pts[:, None, :], multimask_output=True)
        n_out = logits.shape[1]
        part = MaskData(
            masks=logits.flatten(0, 1),
            iou_preds=iou.flatten(0, 1),
            points=torch.as_tensor(batch.repeat(n_out, axis=0)),
        )
        if config.pred_iou_thresh > 0.0:
            part.filter(part["iou_preds"] > config.pred_iou_thresh)
        part["stability_score"] = calculate_stability_score(
            part["masks"], sam.mask_threshold, config.stability_score_offset
        )
        if config.stability_score_thresh > 0.0:
            part.filter(part["stability_score"] >= config.stability_score_thresh)
        part["masks"] = part["masks"] > sam.mask_threshold
        part["boxes"] = batched_mask_to_box(part["masks"])
        data.cat(part)

    if len(data["masks"]) == 0:
        empty = torch.zeros((0, h, w), dtype=torch.bool, device=device)
        z = torch.zeros(0, device=device)
        return Proposals(empty, torch.zeros((0, 4), device=device), z, z, torch.zeros((0, 2)))

    keep = batched_nms(
        data["boxes"].float(),
        data["iou_preds"],
        torch.zeros_like(data["iou_preds"]),
        iou_threshold=config.box_nms_thresh,
    )
    data.filter(keep)
    if config.min_mask_region_area > 0:
        data = _remove_small_regions(data, config)
    return Proposals(
        data["masks"],
        data["boxes"].float(),
        data["iou_preds"],
        data["stability_score"],
        data["points"].float(),
    )


def _remove_small_regions(data: Any, config: ProposalConfig) -> Any:
    """segment-anything's hole/island cleanup and re-NMS, via its own static method."""
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.utils.amg import mask_to_rle_pytorch, rle_to_mask

    masks = data["masks"]
    data["rles"] = mask_to_rle_pytorch(masks.cpu())
    del data["masks"]
    # The reference generator re-runs NMS at max(box_nms_thresh, crop_nms_thresh), with
    # crop_nms_thresh fixed at its default 0.7 for a single crop layer.
    data = SamAutomaticMaskGenerator.postprocess_small_regions(
        data, config.min_mask_region_area, max(config.box_nms_thresh, 0.7)
    )
    if len(data["rles"]):
        decoded = [torch.as_tensor(rle_to_mask(rle)) for rle in data["rles"]]
        data["masks"] = torch.stack(decoded).to(masks.device)
    else:
        data["masks"] = masks[:0]
    del data["rles"]
    return data
