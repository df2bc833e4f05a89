"""The 2D image reader (PNG, JPEG, TIFF, BMP) through Pillow."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from salip.core.errors import InputError
from salip.io.checks import (
    SAM_LONG_SIDE_PX,
    _reason,
    _replace_nonfinite,
    check_plane_size,
    check_voxels,
)
from salip.io.volume import _MODALITY_WORDS, DEFAULT_MAX_VOXELS, SourceGeometry, Volume

__all__ = [
    "read_image",
]

# One logger for the whole package, as when it was one module (log lines and filters
# name "salip.io").
logger = logging.getLogger("salip.io")


def read_image(path: Path, *, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Read a 2D PNG/JPEG/TIFF/BMP image, grey or RGB, keeping its pixel values.

    ``data`` is HxWx1 (grey: uint8, 16-bit as uint16, 32-bit as int32 or float32) or HxWx3
    uint8 (RGB; RGBA, palette, CMYK, YCbCr, ... are converted to RGB). 1-bit images become
    0/255 uint8. The size is checked before the pixels are decoded (``max_voxels``,
    Pillow's decompression-bomb guard, :func:`check_plane_size`). A "Modality" PNG text
    chunk or TIFF info key, or "Modality=..." in a TIFF ImageDescription, sets ``modality``
    (``meta["modality_from"] = "image metadata"``). Only the first frame of multi-frame
    files is read.

    Raises:
        InputError: unreadable, too large, too small or too elongated, or an unsupported
            layout.
    """
    data, modality = _load_image(path, max_voxels)
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3 or data.shape[2] not in (1, 3):
        raise InputError(f"{path}: unsupported image layout {data.shape}; use grey or RGB.")
    geometry = SourceGeometry(kind="image", shape=tuple(data.shape[:2]), affine=np.eye(4))
    volume = Volume(
        data=np.ascontiguousarray(data),
        affine=np.eye(4),
        spacing=(1.0, 1.0, 1.0),
        geometry=geometry,
        modality=modality,
        path=path,
    )
    if modality:
        volume.meta["modality_from"] = "image metadata"
    _replace_nonfinite(volume)
    return volume


def _load_image(path: Path, max_voxels: int) -> tuple[np.ndarray, str | None]:
    """The pixels (see :func:`read_image`) and the modality named in the image's metadata."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                check_voxels(width * height, max_voxels, f"{path} ({height}x{width} px)")
                check_plane_size((height, width), str(path))
                img.load()
                if getattr(img, "n_frames", 1) > 1:
                    logger.warning("%s holds %d frames; reading the first", path, img.n_frames)
                return _image_array(img), _image_modality(img, path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(
            f"{path}: Pillow refuses it as a possible decompression bomb ({_reason(exc)}); "
            f"downscale it first (SAM works at {SAM_LONG_SIDE_PX} px anyway)."
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(
            f"{path}: cannot read image ({_reason(exc)}); re-export it as PNG or TIFF."
        ) from exc


def _image_array(img: Any) -> np.ndarray:
    """A loaded PIL image as a writable, native-endian array (HxW or HxWx3)."""
    if img.mode == "1":
        img = img.convert("L")  # numpy would give bool; 8-bit 0/255 like other masks
    elif img.mode not in ("L", "RGB", "I", "F") and not img.mode.startswith("I;16"):
        img = img.convert("RGB")  # RGBA, LA, P, PA, CMYK, YCbCr, LAB, HSV, ...
    data = np.array(img)
    if not data.dtype.isnative:  # e.g. I;16B (big-endian 16-bit)
        data = data.astype(data.dtype.newbyteorder("="))
    return data


def _image_modality(img: Any, path: Path) -> str | None:
    """salip's modality named by a "Modality" metadata key (PNG text chunk, TIFF/other info)
    or by "Modality=..." / "Modality: ..." in a TIFF ImageDescription; else None."""
    values = [v for k, v in img.info.items() if isinstance(k, str) and k.lower() == "modality"]
    tags = getattr(img, "tag_v2", None)  # TIFF only
    description = tags.get(270) if tags is not None else None
    if isinstance(description, str):
        found = re.search(r"modality\s*[:=]\s*([\w-]+)", description, flags=re.IGNORECASE)
        values += [found.group(1)] if found else []
    for value in values:
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        word = str(value).strip().lower()
        if word in _MODALITY_WORDS:
            return _MODALITY_WORDS[word]
        logger.debug("%s: metadata modality %r not known; ignored", path, value)
    return None
