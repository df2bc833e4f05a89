"""Overlay previews: mask colours on the slices that hold the most organ."""

from __future__ import annotations

import numpy as np

from salip.io import Volume
from salip.io.orientation import AXES, slices_with_most, source_slice_indices
from salip.io.slicing import iter_slices, to_display
from salip.strategies.assembly import to_label_map

__all__ = [
    "COLOURS",
    "overlay",
    "preview_image",
    "preview_strip",
]

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


def _legend(names: list[str], width: int) -> np.ndarray:
    """A bar ``width`` pixels wide: each organ's colour swatch and name, wrapping lines."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    pad, swatch, line = 6, 12, 18
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    places, x, y = [], pad, pad // 2  # where each item goes, wrapping at the right edge
    for name in names:
        size = swatch + 4 + int(probe.textlength(name, font=font))
        if x + size > width - pad and x > pad:
            x, y = pad, y + line
        places.append((name, x, y))
        x += size + 2 * pad
    bar = Image.new("RGB", (width, y + line + pad // 2), (16, 16, 16))
    draw = ImageDraw.Draw(bar)
    for value, (name, x, y) in enumerate(places, start=1):
        colour = tuple(int(c) for c in COLOURS[(value - 1) % len(COLOURS)])
        draw.rectangle([x, y + 2, x + swatch, y + 2 + swatch], fill=colour)
        draw.text((x + swatch + 4, y + 1), name, fill=(235, 235, 235), font=font)
    return np.asarray(bar)


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    """``tile`` with ``text`` on a dark box in its top-left corner."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(tile)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    width = int(draw.textlength(text, font=font))
    draw.rectangle([0, 0, width + 8, 16], fill=(16, 16, 16))
    draw.text((4, 2), text, fill=(235, 235, 235), font=font)
    return np.asarray(image)


def preview_strip(
    images: list[np.ndarray],
    label_slices: list[np.ndarray],
    height: int = 384,
    *,
    captions: list[str] | None = None,
    names: list[str] | None = None,
) -> np.ndarray:
    """Side-by-side overlays of several slices, each scaled to ``height`` pixels.

    Args:
        images: HxWx3 uint8 RGB display slices.
        label_slices: HxW uint8 label maps (value i+1: ``names[i]``'s colour).
        height: each tile's height in pixels.
        captions: a caption per tile (e.g. "slice 42"), drawn in its top-left corner.
        names: the organs in label order, drawn with their colours in a legend below.

    Returns:
        The strip, H'xW'x3 uint8.
    """
    import cv2

    tiles = []
    for i, (image, labels) in enumerate(zip(images, label_slices)):
        tile = overlay(image, labels)
        scale = height / tile.shape[0]
        width = max(1, round(tile.shape[1] * scale))
        tile = cv2.resize(tile, (width, height), interpolation=cv2.INTER_NEAREST)
        if captions is not None:
            tile = _caption(tile, captions[i])
        tiles.append(tile)
    strip = np.concatenate(tiles, axis=1)
    if names:
        strip = np.concatenate([strip, _legend(names, strip.shape[1])], axis=0)
    return strip


def preview_image(
    volume: Volume,
    volume8: np.ndarray,
    canonical: dict[str, np.ndarray],
    order: list[str],
    axis: str,
    max_slices: int = 3,
) -> np.ndarray:
    """HxWx3 uint8 overlay strip of the (up to) ``max_slices`` slices with the most organ,
    each captioned with its slice index in the input file (as the report counts them), and
    a legend of the organs' colours.

    Args:
        volume: the input (canonical layout).
        volume8: its uint8 version (same shape).
        canonical: organ -> bool mask in the canonical layout.
        order: the organs, in label order.
        axis: the slicing axis name.
        max_slices: how many slices to show.
    """
    label_map = to_label_map(canonical, order)
    if volume.is_2d:
        images, labels = [next(iter_slices(volume8, True, axis))[1]], [label_map]
        captions = None
    else:
        ax = AXES[axis]
        picks = slices_with_most(label_map, axis, max_slices)
        grey = [to_display(np.take(volume8, k, axis=ax)) for k in picks]
        images = [np.repeat(g[..., None], 3, axis=2) for g in grey]
        labels = [to_display(np.take(label_map, k, axis=ax)) for k in picks]
        input_axis, indices = source_slice_indices(volume, axis, picks)
        captions = [f"slice {i} (axis {input_axis})" for i in indices]
    return preview_strip(images, labels, captions=captions, names=order)
