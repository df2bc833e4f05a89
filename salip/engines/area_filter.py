"""Stage 3b, area filter: drop background-sized and speck-sized proposals."""

from __future__ import annotations

import torch

from salip.core.config import AreaFilterConfig
from salip.engines.proposals import Proposals


def area_filter(proposals: Proposals, config: AreaFilterConfig) -> Proposals:
    """Keep proposals whose area is within [min_area, max_area] of the slice's pixels.

    Both bounds are fractions of the field of view (H*W of the slice).
    """
    if len(proposals) == 0:
        return proposals
    h, w = proposals.masks.shape[-2:]
    fraction = proposals.areas.float() / float(h * w)
    keep = (fraction >= config.min_area) & (fraction <= config.max_area)
    return proposals.select(torch.nonzero(keep).flatten())
