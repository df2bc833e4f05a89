"""Everything mode: SAM's proposals on precomputed slice embeddings.

Same algorithm and defaults as segment-anything's ``SamAutomaticMaskGenerator`` with one
crop layer (the whole slice): a point grid, predicted-IoU and stability filters, removal of
masks touching the slice border only where the crop is inner (never, for the whole slice),
box NMS, and optional small-region cleanup. The difference is that the image encoder has
already run over a batch of slices (:func:`salip.models.sam_runtime.encode_images`), and
the embedding is kept for the refinement stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from salip.core.config import ProposalConfig
from salip.models.sam_runtime import BatchSize, ImageEmbedding, decode_points_across

__all__ = [
    "AUTO_PROMPTS",
    "AUTO_PROMPTS_CAP",
    "AUTO_PROMPTS_CPU",
    "AUTO_PROMPTS_ONNX",
    "decoder_batch",
    "generate_proposals",
    "generate_proposals_batch",
    "grid_points",
    "Proposals",
]

#: Auto ``points_per_batch`` on CUDA: prompts in the first, measured decoder call
#: (segment-anything's default).
AUTO_PROMPTS = 64
#: Auto ``points_per_batch`` off CUDA. Each prompt's decoder works over its own copy of
#: the 64x64x256 image embedding (4 MB a tensor, several tensors per prompt): a few
#: prompts at a time stay in the CPU's cache, 64 do not. Measured with a full-width
#: decoder on a 2-core AMD EPYC (32 MB L3), everything mode per prompt: 81 ms at 2, 75 at
#: 4, 102 at 8, 136 at 64 (benchmarks/RESULTS.md, "Everything mode on CPU").
AUTO_PROMPTS_CPU = 4
#: Auto ``points_per_batch`` for ONNX Runtime's decoder (``--runtime onnx``, CPU): its
#: graph does not copy the embedding per prompt, and the same decoder and CPU took 48.7 ms
#: per prompt at 4 per call, 45.7 at 8, 42.5 at 16 and 47.7 at 32 (RESULTS.md, "ONNX
#: Runtime against torch").
AUTO_PROMPTS_ONNX = 16
#: The most point prompts an auto-sized decoder call may take (GPU memory permitting).
AUTO_PROMPTS_CAP = 4096


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
    return generate_proposals_batch(sam, [embedding], config)[0]


@torch.no_grad()
def generate_proposals_batch(
    sam: torch.nn.Module,
    embeddings: Sequence[ImageEmbedding],
    config: ProposalConfig,
    batch: BatchSize | None = None,
    regions: Sequence[np.ndarray | None] | None = None,
    runtime: Any = None,
) -> list[Proposals]:
    """Everything-mode proposals for several embedded slices, decoded together.

    The point prompts of all slices of one size (and preprocessing) form one stream, cut into decoder calls of
    ``batch`` prompts that may span slices; IoU and stability filtering,
    mask-to-box and box NMS (per slice, through ``batched_nms``'s class index) run batched on
    the embeddings' device. Per slice, the result equals :func:`generate_proposals` on that
    slice alone.

    Args:
        sam: segment-anything ``Sam`` model.
        embeddings: the slices' embeddings (:func:`~salip.models.sam_runtime.encode_images`).
        config: everything-mode settings.
        batch: prompts per decoder call, kept across calls (halved on out-of-memory,
            calibrated on first use when auto); default: from ``config.points_per_batch``.
        regions: per embedding, an HxW bool array at the slice's original size: only the
            grid points inside it are decoded (:func:`grid_points`); None (for all, or
            for one slice): the whole grid, as the reference generator.
        runtime: the mask decoder's ONNX Runtime session (``LoadedSam.onnx``), or None
            for torch.

    Returns:
        One :class:`Proposals` per embedding, in order, each sorted by predicted IoU.
    """
    if regions is not None and len(regions) != len(embeddings):
        raise ValueError(f"{len(regions)} regions for {len(embeddings)} embeddings")
    groups: dict[tuple[Any, Any], list[int]] = {}
    for i, emb in enumerate(embeddings):
        groups.setdefault((emb.input_size, emb.original_size, emb.preprocess), []).append(i)
    if batch is None:
        device = embeddings[0].features.device if embeddings else torch.device("cpu")
        batch = decoder_batch(config, device, "torch" if runtime is None else "onnx")
    out: list[Proposals | None] = [None] * len(embeddings)
    for members in groups.values():
        for i, props in zip(
            members,
            _proposals_same_size(
                sam,
                [embeddings[i] for i in members],
                config,
                batch,
                [None if regions is None else regions[i] for i in members],
                runtime,
            ),
        ):
            out[i] = props
    return out  # type: ignore[return-value]


def decoder_batch(
    config: ProposalConfig, device: str | torch.device, runtime: str = "torch"
) -> BatchSize:
    """Prompts per decoder call from ``config.points_per_batch`` (0: auto, see
    :mod:`salip.models.memory`: off CUDA :data:`AUTO_PROMPTS_CPU`, or
    :data:`AUTO_PROMPTS_ONNX` when ``runtime`` is "onnx"; on CUDA measured)."""
    return BatchSize.from_setting(
        config.points_per_batch,
        device,
        default=AUTO_PROMPTS_ONNX if runtime == "onnx" else AUTO_PROMPTS_CPU,
        probe=AUTO_PROMPTS,
        cap=AUTO_PROMPTS_CAP,
    )


def grid_points(
    points_per_side: int, size: tuple[int, int], region: np.ndarray | None = None
) -> torch.Tensor:
    """The everything-mode point grid of a slice of ``size`` (H, W): Nx2 float XY in pixels,
    segment-anything's grid (``build_all_layer_point_grids``), row by row.

    Args:
        points_per_side: grid points per side.
        size: the slice's original (H, W).
        region: HxW bool; only the points whose pixel lies inside are kept (in grid
            order). None: every point.
    """
    from segment_anything.utils.amg import build_all_layer_point_grids

    h, w = size
    grid = build_all_layer_point_grids(points_per_side, 0, 1)[0]
    points = torch.as_tensor(grid * np.array([[w, h]]), dtype=torch.float)
    if region is None:
        return points
    if region.shape != (h, w):
        raise ValueError(f"region has shape {region.shape}, the slice {(h, w)}")
    cols = np.clip(np.floor(grid[:, 0] * w).astype(int), 0, w - 1)
    rows = np.clip(np.floor(grid[:, 1] * h).astype(int), 0, h - 1)
    return points[torch.as_tensor(region[rows, cols])]


def _proposals_same_size(
    sam: torch.nn.Module,
    embeddings: Sequence[ImageEmbedding],
    config: ProposalConfig,
    batch: BatchSize,
    regions: Sequence[np.ndarray | None],
    runtime: Any,
) -> list[Proposals]:
    from segment_anything.utils.amg import MaskData
    from torchvision.ops import batched_nms

    first = embeddings[0]
    h, w = first.original_size
    device = first.features.device
    features = torch.cat([e.features for e in embeddings])
    # The stream: each slice's grid points (inside its region), slice after slice.
    per_slice = [grid_points(config.points_per_side, (h, w), region) for region in regions]
    all_points = torch.cat(per_slice)
    all_owner = torch.arange(len(embeddings)).repeat_interleave(
        torch.as_tensor([len(p) for p in per_slice])
    )
    if len(all_points) == 0:  # every slice's region is empty: nothing to decode
        return [_empty(h, w, device) for _ in embeddings]
    parts = []
    start = 0
    while start < len(all_points):
        n = batch.value
        pts = all_points[start : start + n]
        owner = all_owner[start : start + n]
        part = batch.attempt(
            lambda: _decode_and_filter(sam, features, owner, pts, first, config, runtime),  # noqa: B023
            len(pts),
            device,
            "decoding",
            "prompts",
        )
        if part is None:
            continue
        parts.append(part)
        start += len(pts)
    # One concatenation at the end: MaskData.cat per call would copy the growing total
    # each time (quadratic in the number of decoder calls).
    keys = [key for key, _ in parts[0].items()]
    data = MaskData(**{key: torch.cat([p[key] for p in parts]) for key in keys})

    if len(data["masks"]) == 0:
        return [_empty(h, w, device) for _ in embeddings]
    # NMS within each slice: the owner is batched_nms's class index. Kept indices come back
    # sorted by predicted IoU, so each slice's subset is in the reference generator's order.
    keep = batched_nms(
        data["boxes"].float(), data["iou_preds"], data["owner"], config.box_nms_thresh
    )
    data.filter(keep)
    out = []
    for i in range(len(embeddings)):
        sel = data["owner"] == i
        mine = MaskData(**{k: v[sel.to(v.device)] for k, v in data.items()})
        if len(mine["masks"]) == 0:
            out.append(_empty(h, w, device))
            continue
        if config.min_mask_region_area > 0:
            mine = _remove_small_regions(mine, config)
        out.append(
            Proposals(
                mine["masks"],
                mine["boxes"].float(),
                mine["iou_preds"],
                mine["stability_score"],
                mine["points"].float(),
            )
        )
    return out


def _decode_and_filter(
    sam: torch.nn.Module,
    features: torch.Tensor,
    owner: torch.Tensor,
    pts: torch.Tensor,
    first: ImageEmbedding,
    config: ProposalConfig,
    runtime: Any = None,
) -> Any:
    """One decoder call's masks after the IoU and stability filters, as a ``MaskData``."""
    from segment_anything.utils.amg import MaskData, batched_mask_to_box, calculate_stability_score

    device = features.device
    logits, iou = decode_points_across(
        sam,
        features,
        owner,
        pts[:, None, :].to(device),
        first.input_size,
        first.original_size,
        first.preprocess,
        runtime,
    )
    n_out = logits.shape[1]
    part = MaskData(
        masks=logits.flatten(0, 1),
        iou_preds=iou.flatten(0, 1),
        points=pts.repeat_interleave(n_out, dim=0),
        owner=owner.repeat_interleave(n_out).to(device),
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
    return part


def _empty(h: int, w: int, device: torch.device) -> Proposals:
    z = torch.zeros(0, device=device)
    return Proposals(
        torch.zeros((0, h, w), dtype=torch.bool, device=device),
        torch.zeros((0, 4), device=device),
        z,
        z,
        torch.zeros((0, 2)),
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
