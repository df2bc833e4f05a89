"""Patient left and right in display images, for one-sided organs.

CLIP cannot tell a left kidney from a right one in a crop, so sides are decided by
geometry. Axial and coronal slices are shown in the radiological convention
(:func:`salip.io.slicing.to_display`): the patient's left is on the image right, whatever the
orientation of the input file, because volumes are reoriented to RAS+ on the way in. 2D
images (radiographs, PNG slices) are assumed to follow the same convention, which is the
standard way they are stored. Sagittal slices have no left-right axis in plane.

The dividing line is the body's midline, estimated per slice as the centroid column of the
pixels brighter than Otsu's threshold (the body against the air around it); the image's
centre column is the fallback for a blank slice.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "IN_PLANE_AXES",
    "body_midline",
    "patient_sides",
]

#: Slicing axes whose display images have the patient's left-right axis along columns.
IN_PLANE_AXES = ("axial", "coronal")


def body_midline(image: np.ndarray) -> float:
    """Column (pixels, may be fractional) of the body's midline in an HxW(x3) uint8 image."""
    from skimage.filters import threshold_otsu

    grey = image if image.ndim == 2 else image[..., 0]
    w = grey.shape[1]
    if grey.min() == grey.max():
        return (w - 1) / 2.0
    body = grey > threshold_otsu(grey)
    cols = np.nonzero(body)[1]
    return float(cols.mean()) if cols.size else (w - 1) / 2.0


def patient_sides(boxes: torch.Tensor, midline: float) -> list[str]:
    """Patient side ("left"/"right") of each box centre in a radiological display image.

    Args:
        boxes: Nx4 boxes, XYXY in pixels of the display image.
        midline: column of the body's midline (:func:`body_midline`).
    """
    centres = ((boxes[:, 0] + boxes[:, 2]) / 2).cpu().tolist()
    return ["left" if c > midline else "right" for c in centres]
