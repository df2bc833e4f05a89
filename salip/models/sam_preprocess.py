"""How a SAM checkpoint family wants its input: the encoder's image, and where prompts and
masks lie in it.

A fine-tune keeps SAM's architecture but not always SAM's input. Each family is a
:class:`SamPreprocess` profile, applied alike to the encoder input, to point and box prompts,
and to the masks coming back, so that the image, the prompts and the masks share one frame:

* ``sam`` (segment-anything): resize the longest side to S (``ResizeLongestSide``, PIL
  bilinear), normalise with SAM's pixel mean and std, pad right and bottom to SxS; prompts
  are scaled by S / max(H, W); masks go low-res -> SxS -> crop -> HxW (``Sam.postprocess_masks``).
* ``medsam`` (MedSAM, ``MedSAM_Inference.py``): resize to SxS without keeping the aspect
  ratio (scikit-image, cubic, anti-aliased, truncated to uint8), min-max normalise the whole image
  to [0, 1], no mean and std, no padding; prompts are scaled by S / W and S / H; masks are
  sigmoid probabilities of the low-res logits resized straight to HxW (bilinear), kept above
  0.5. salip returns them as logits (``log(p / (1 - p))``), so its threshold at 0 keeps the
  same pixels.

S is the encoder's image size (``sam.image_encoder.img_size``, 1024 for the released models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from salip.core.errors import ConfigError

__all__ = [
    "PREPROCESS_PROFILES",
    "SAM_PREPROCESS",
    "get_preprocess",
    "MedSamPreprocess",
    "SamPreprocess",
]


@dataclass(frozen=True)
class SamPreprocess:
    """A preprocessing profile (see the module docstring). Stateless; compare by name."""

    name: str = "sam"
    description: str = "segment-anything: longest side to S, pixel mean/std, padded"

    def input_size(self, original_size: tuple[int, int], image_size: int) -> tuple[int, int]:
        """(h, w) of an HxW image inside the SxS encoder input, before any padding."""
        from segment_anything.utils.transforms import ResizeLongestSide

        h, w = original_size
        return ResizeLongestSide.get_preprocess_shape(h, w, image_size)

    def resize(self, image: np.ndarray, image_size: int) -> np.ndarray:
        """HxWx3 uint8 RGB -> hxwx3 uint8 at :meth:`input_size` (CPU work, no model)."""
        from segment_anything.utils.transforms import ResizeLongestSide

        return ResizeLongestSide(image_size).apply_image(image)

    def normalise(self, sam: Any, resized: torch.Tensor) -> torch.Tensor:
        """1x3xhxw float (0-255) -> 1x3xSxS encoder input (``Sam.preprocess``)."""
        return sam.preprocess(resized)

    def coords(
        self, coords: torch.Tensor, original_size: tuple[int, int], image_size: int
    ) -> torch.Tensor:
        """...x2 float XY in pixels of the HxW image -> XY in pixels of the encoder input."""
        from segment_anything.utils.transforms import ResizeLongestSide

        return ResizeLongestSide(image_size).apply_coords_torch(coords, original_size)

    def boxes(
        self, boxes: torch.Tensor, original_size: tuple[int, int], image_size: int
    ) -> torch.Tensor:
        """Bx4 float XYXY in pixels of the HxW image -> XYXY in pixels of the encoder input."""
        return self.coords(boxes.reshape(-1, 2, 2), original_size, image_size).reshape(-1, 4)

    def masks(
        self,
        sam: Any,
        low_res: torch.Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> torch.Tensor:
        """BxCx(S/4)x(S/4) mask logits -> BxCxHxW logits at the image's size."""
        return sam.postprocess_masks(low_res, input_size, original_size)


@dataclass(frozen=True)
class MedSamPreprocess(SamPreprocess):
    """MedSAM's own input (see the module docstring)."""

    name: str = "medsam"
    description: str = "MedSAM: stretched to SxS (cubic), min-max to [0, 1], no mean/std"

    def input_size(self, original_size: tuple[int, int], image_size: int) -> tuple[int, int]:
        return (image_size, image_size)

    def resize(self, image: np.ndarray, image_size: int) -> np.ndarray:
        from skimage.transform import resize

        # One channel at a time: a 3-channel call also runs the cubic spline across the
        # channel axis, which gives the same values (a spline meets its knots) about 20x
        # slower. Grey display slices (three equal channels) are resized once.
        channels = [image[..., 0]] if _grey(image) else [image[..., c] for c in range(3)]
        out = [
            resize(c, (image_size, image_size), order=3, preserve_range=True, anti_aliasing=True)
            for c in channels
        ]
        # scikit-image clips the result to the input's range (its ``clip=True``), so the
        # cast to uint8, as MedSAM's script does, only truncates.
        return np.stack(out * 3 if len(out) == 1 else out, axis=-1).astype(np.uint8)

    def normalise(self, sam: Any, resized: torch.Tensor) -> torch.Tensor:
        flat = resized.flatten(1)
        low = flat.amin(dim=1).view(-1, 1, 1, 1)
        span = (flat.amax(dim=1).view(-1, 1, 1, 1) - low).clamp(min=1e-8)
        return (resized - low) / span

    def coords(
        self, coords: torch.Tensor, original_size: tuple[int, int], image_size: int
    ) -> torch.Tensor:
        h, w = original_size
        scale = torch.tensor([image_size / w, image_size / h], dtype=coords.dtype)
        return coords * scale.to(coords.device)

    def masks(
        self,
        sam: Any,
        low_res: torch.Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> torch.Tensor:
        probs = torch.sigmoid(low_res.float())
        probs = F.interpolate(probs, size=original_size, mode="bilinear", align_corners=False)
        return torch.logit(probs, eps=1e-6)


def _grey(image: np.ndarray) -> bool:
    return bool((image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all())


SAM_PREPROCESS = SamPreprocess()

#: The profiles by name; a new family adds its subclass here.
PREPROCESS_PROFILES: dict[str, SamPreprocess] = {
    p.name: p for p in (SAM_PREPROCESS, MedSamPreprocess())
}


def get_preprocess(name: str) -> SamPreprocess:
    """The profile called ``name``.

    Raises:
        ConfigError: an unknown name (the message lists the valid ones).
    """
    try:
        return PREPROCESS_PROFILES[name]
    except KeyError:
        raise ConfigError(
            f"unknown SAM preprocessing '{name}'; use one of "
            f"{', '.join(PREPROCESS_PROFILES)} (or auto: chosen from the checkpoint)."
        ) from None
