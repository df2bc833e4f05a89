"""Running a loaded SAM: batched image encoding and prompt decoding.

The encoder runs once per slice, over batches of slices; the resulting
:class:`ImageEmbedding` is kept and reused by both the everything-mode pass (stage 3) and
the box-prompt pass (stage 6), so no image is encoded twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ImageEmbedding:
    """SAM image embedding of one slice.

    Attributes:
        features: 1xCxhxw float tensor (C = prompt embed dim, h = w = image_size / 16).
        input_size: (H', W') of the slice after ResizeLongestSide, before padding.
        original_size: (H, W) of the slice as given.
    """

    features: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]


@torch.no_grad()
def encode_images(
    sam: torch.nn.Module, images: Sequence[np.ndarray], batch_size: int = 4
) -> list[ImageEmbedding]:
    """Encode HxWx3 uint8 RGB images with SAM's image encoder, ``batch_size`` at a time.

    Preprocessing is segment-anything's own (``ResizeLongestSide.apply_image`` then
    ``Sam.preprocess``), so embeddings equal ``SamPredictor.set_image``'s.
    """
    from segment_anything.utils.transforms import ResizeLongestSide

    transform = ResizeLongestSide(sam.image_encoder.img_size)
    device = sam.device
    out: list[ImageEmbedding] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        tensors, sizes = [], []
        for image in chunk:
            resized = transform.apply_image(image)
            tensor = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()
            sizes.append((tuple(tensor.shape[-2:]), tuple(image.shape[:2])))
            tensors.append(sam.preprocess(tensor[None].float())[0])
        features = sam.image_encoder(torch.stack(tensors))
        for i, (input_size, original_size) in enumerate(sizes):
            out.append(ImageEmbedding(features[i : i + 1], input_size, original_size))
    return out


@torch.no_grad()
def decode(
    sam: torch.nn.Module,
    embedding: ImageEmbedding,
    *,
    points: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    multimask_output: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode prompts against one embedding, as ``SamPredictor.predict_torch`` does.

    Args:
        points: Bx1x2 float XY point prompts in pixels of the *original* slice (labels are
            all foreground).
        boxes: Bx4 float XYXY box prompts in pixels of the original slice.
        multimask_output: three masks per prompt (True) or one (False).

    Returns:
        (logits BxCxHxW at the original size, predicted IoU BxC).
    """
    from segment_anything.utils.transforms import ResizeLongestSide

    transform = ResizeLongestSide(sam.image_encoder.img_size)
    point_arg = None
    if points is not None:
        coords = transform.apply_coords_torch(points, embedding.original_size)
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=coords.device)
        point_arg = (coords, labels)
    box_arg = None
    if boxes is not None:
        box_arg = transform.apply_boxes_torch(boxes, embedding.original_size)
    sparse, dense = sam.prompt_encoder(points=point_arg, boxes=box_arg, masks=None)
    low_res, iou = sam.mask_decoder(
        image_embeddings=embedding.features,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask_output,
    )
    logits = sam.postprocess_masks(low_res, embedding.input_size, embedding.original_size)
    return logits, iou
