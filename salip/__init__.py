"""salip: zero-shot organ segmentation for medical images with a SAM + CLIP cascade (SaLIP).

Public API::

    import salip
    result = salip.segment("scan.nii.gz", organs=["liver"], output="liver.nii.gz")

Importing salip is cheap: torch, open_clip and segment-anything load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from salip.version import __version__

__all__ = [
    "Client",
    "segment",
    "segment_many",
    "SegmentConfig",
    "SegmentationResult",
    "SalipError",
    "__version__",
]

if TYPE_CHECKING:
    from salip.api.client import Client
    from salip.api.many import segment_many
    from salip.api.pipeline import SegmentationResult, segment
    from salip.core.config import SegmentConfig
    from salip.core.errors import SalipError


def __getattr__(name: str) -> Any:
    if name in ("segment", "SegmentationResult"):
        from salip.api import pipeline

        return getattr(pipeline, name)
    if name == "Client":
        from salip.api.client import Client

        return Client
    if name == "segment_many":
        from salip.api.many import segment_many

        return segment_many
    if name == "SegmentConfig":
        from salip.core.config import SegmentConfig

        return SegmentConfig
    if name == "SalipError":
        from salip.core.errors import SalipError

        return SalipError
    raise AttributeError(f"module 'salip' has no attribute {name!r}")
