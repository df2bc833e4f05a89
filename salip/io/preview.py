"""Overlay previews: mask colours on the slices that hold the most organ."""

from __future__ import annotations

import numpy as np

#: RGB colours per label value 1, 2, ... (cycled).
COLOURS = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230]],
    dtype=np.float32,
)  # fmt: skip


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend an HxW uint8 label map (0 = none) onto an HxWx3 uint8 RGB image."""
    out = image.astype(np.float32).copy()
    for value in np.unique(labels[labels > 0]):
        colour = COLOURS[(int(value) - 1) % len(COLOURS)]
        sel = labels == value
        out[sel] = (1 - alpha) * out[sel] + alpha * colour
    return np.clip(out, 0, 255).astype(np.uint8)


def preview_strip(
    images: list[np.ndarray], label_slices: list[np.ndarray], height: int = 384
) -> np.ndarray:
    """Side-by-side overlays of several slices, each scaled to ``height`` pixels."""
    import cv2

    tiles = []
    for image, labels in zip(images, label_slices):
        tile = overlay(image, labels)
        scale = height / tile.shape[0]
        width = max(1, round(tile.shape[1] * scale))
        tiles.append(cv2.resize(tile, (width, height), interpolation=cv2.INTER_NEAREST))
    return np.concatenate(tiles, axis=1)
