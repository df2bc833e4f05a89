"""Area filter: drop background-sized and speck-sized proposals."""

from __future__ import annotations

import torch

from salip.core.config import AreaFilterConfig
from salip.engines.everything_mode import Proposals

__all__ = [
    "area_filter",
    "speck_pixels",
]


def speck_pixels(
    config: AreaFilterConfig, shape: tuple[int, int], pixel_mm: tuple[float, float] | None
) -> float:
    """The smallest proposal area kept, in pixels of a slice of ``shape`` (H, W).

    With ``pixel_mm`` ((row, column) size in mm of a pixel: a volume's slice) the floor
    is ``min_area_mm2``, so that a structure keeps or loses its proposals by its physical
    size whatever the scan's resolution. Without it (a 2D image, whose pixel size is not
    known) it is ``min_area``, a fraction of the slice, as in the SaLIP paper.
    """
    if pixel_mm is None:
        return config.min_area * shape[0] * shape[1]
    return config.min_area_mm2 / (float(pixel_mm[0]) * float(pixel_mm[1]))


def area_filter(
    proposals: Proposals,
    config: AreaFilterConfig,
    pixel_mm: tuple[float, float] | None = None,
) -> Proposals:
    """Keep proposals from the speck floor (:func:`speck_pixels`) up to ``max_area`` of
    the slice's pixels (H*W, the field of view).

    Args:
        proposals: one slice's proposals (masks NxHxW).
        config: the bounds.
        pixel_mm: (row, column) size in mm of the slice's pixels; None for a 2D image.
    """
    if len(proposals) == 0:
        return proposals
    h, w = proposals.masks.shape[-2:]
    areas = proposals.areas.float()
    keep = (areas >= speck_pixels(config, (h, w), pixel_mm)) & (
        areas / float(h * w) <= config.max_area
    )
    return proposals.select(torch.nonzero(keep).flatten())
