"""Validation of a :class:`~salip.outputs.viewer.schema.ViewerData` before it is encoded:
every error names the field and what to give."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np

from salip.core.errors import OutputError
from salip.outputs.viewer.schema import MODALITIES, ViewerData


def _checked_arrays(data: ViewerData) -> tuple[np.ndarray, np.ndarray]:
    """The image (NxHxW float) and labels (NxHxW uint8) of ``data``, checked."""
    image = np.asarray(data.image)
    if image.ndim != 3 or min(image.shape) < 1:
        raise OutputError(
            f"viewer: image must be an NxHxW array of N >= 1 display slices, got shape "
            f"{image.shape}; pass a 2D image as shape (1, H, W)."
        )
    if not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer)):
        raise OutputError(f"viewer: image dtype {image.dtype} is not numeric; pass float32.")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise OutputError(
            "viewer: image holds NaN or infinite values; replace them (salip's readers use "
            "the lowest finite value) before building the viewer."
        )
    labels = np.asarray(data.labels)
    if labels.shape != image.shape:
        raise OutputError(
            f"viewer: labels shape {labels.shape} differs from image shape {image.shape}; "
            "pass the label map in the same display layout."
        )
    if labels.dtype != np.uint8:
        raise OutputError(f"viewer: labels dtype is {labels.dtype}; pass a uint8 label map.")
    top = int(labels.max())
    if top > len(data.organs):
        raise OutputError(
            f"viewer: labels hold value {top} but only {len(data.organs)} organs are given; "
            "pass one organ per label value (value v = organs[v-1])."
        )
    return image, labels


def _checked_organs(data: ViewerData) -> list[dict[str, Any]]:
    organs = []
    for index, organ in enumerate(data.organs):
        try:
            name, value, colour = organ
            rgb = [int(c) for c in colour]
        except (TypeError, ValueError):
            raise OutputError(
                f"viewer: organ {organ!r} must be (name, label value, (r, g, b))."
            ) from None
        if not isinstance(name, str) or not name:
            raise OutputError(f"viewer: organ {index + 1} has no name; give each organ a name.")
        if _as_int(value) != index + 1:
            raise OutputError(
                f"viewer: organ {name!r} has label value {value!r} but is number {index + 1}; "
                "list the organs in label order 1, 2, ..."
            )
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise OutputError(f"viewer: colour of {name!r} must be three 0-255 integers.")
        organs.append({"name": name, "value": index + 1, "colour": rgb})
        organs[-1].update(_checked_answer((data.answers or {}).get(name), name))
    if len({o["name"] for o in organs}) != len(organs):
        raise OutputError("viewer: organ names repeat; give each label value its own name.")
    return organs


def _checked_answer(given: Any, name: str) -> dict[str, Any]:
    """An organ's ``confidence`` (None or in [0, 1]), ``found`` and ``reason`` for its
    legend entry; none given: no confidence, found."""
    given = {} if given is None else given
    if not isinstance(given, dict):
        raise OutputError(
            f"viewer: the answer for {name!r} must be a dict (confidence, found, reason)."
        )
    raw, reason = given.get("confidence"), given.get("reason")
    confidence = None if raw is None else _as_float(raw)
    if raw is not None and (confidence is None or not 0 <= confidence <= 1):
        raise OutputError(
            f"viewer: the confidence of {name!r} is {raw!r}; give None or a number in [0, 1]."
        )
    return {
        "confidence": confidence,
        "found": bool(given.get("found", True)),
        "reason": None if reason is None else str(reason),
    }


def _checked_meta(data: ViewerData, shape: tuple[int, ...]) -> dict[str, Any]:
    """The page's metadata for everything but the arrays, checked."""
    n, h, w = shape
    numbers = [_as_int(s) for s in data.slice_numbers]
    if len(numbers) != n or None in numbers:
        raise OutputError(
            f"viewer: slice_numbers must give {n} whole numbers (the input index of each "
            f"display slice), got {len(numbers)}."
        )
    spacing = [_as_float(s) for s in data.pixel_spacing]
    if len(spacing) != 2 or not all(s is not None and s > 0 for s in spacing):
        raise OutputError(
            f"viewer: pixel_spacing {data.pixel_spacing!r} must be two positive numbers "
            "(row_mm, col_mm); use (1, 1) for 2D images."
        )
    if data.modality is not None and data.modality not in MODALITIES:
        raise OutputError(
            f"viewer: modality {data.modality!r} is not one of {', '.join(MODALITIES)} or None."
        )
    organs = _checked_organs(data)
    names = {o["name"] for o in organs}
    return {
        "version": 1,
        "title": str(data.title),
        "n": n,
        "h": h,
        "w": w,
        "sliceNumbers": numbers,
        "spacing": spacing,
        "modality": data.modality,
        "units": "HU" if data.modality == "ct" else "",
        "orientation": _checked_orientation(data.orientation),
        # A volume's slices are made of voxels; a 2D image of pixels.
        "pixelUnit": "px" if data.orientation is None else "voxels",
        "organs": organs,
        "boxes": _checked_boxes(data.boxes or {}, names, n),
        "profiles": _checked_profiles(data.profiles or {}, names, n),
    }


def _checked_orientation(letters: Any) -> dict[str, str] | None:
    """(top, bottom, left, right) letters as the viewer's {edge: letter}, or None."""
    if letters is None:
        return None
    if len(letters) != 4 or not all(isinstance(x, str) and len(x) == 1 for x in letters):
        raise OutputError(
            f"viewer: orientation {letters!r} must be four letters (top, bottom, left, right)."
        )
    return dict(zip(("top", "bottom", "left", "right"), letters))


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, Integral):
        return None
    return int(value)


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        return None
    return float(value)


def _optional_float(value: Any, where: str) -> float | None:
    if value is None:
        return None
    number = _as_float(value)
    if number is None:
        raise OutputError(f"viewer: {where} is {value!r}; pass a finite number or None.")
    return number


def _slice_index(value: Any, n: int, where: str) -> int:
    index = _as_int(value)
    if index is None or not 0 <= index < n:
        raise OutputError(
            f"viewer: {where} is {value!r}; pass a display slice index from 0 to {n - 1}."
        )
    return index


def _checked_boxes(boxes: Any, names: set[str], n: int) -> dict[str, list[dict[str, Any]]]:
    """``ViewerData.boxes`` as JSON-ready {"slice": [box, ...]}, checked."""
    if not isinstance(boxes, dict):
        raise OutputError("viewer: boxes must be a dict {display slice: [box dict, ...]}.")
    out: dict[str, list[dict[str, Any]]] = {}
    for key, items in boxes.items():
        k = _slice_index(key, n, "a boxes key")
        checked = []
        for box in items:
            where = f"box on slice {k}"
            if not isinstance(box, dict):
                raise OutputError(f"viewer: {where} is {box!r}; pass a dict with organ and bbox.")
            if box.get("organ") not in names:
                raise OutputError(
                    f"viewer: {where} names organ {box.get('organ')!r}; use one of the organs "
                    f"given ({', '.join(sorted(names))})."
                )
            bbox = [_as_float(v) for v in box.get("bbox", ())]
            if len(bbox) != 4 or None in bbox or bbox[2] < 0 or bbox[3] < 0:
                raise OutputError(
                    f"viewer: {where} has bbox {box.get('bbox')!r}; pass [x, y, w, h] in "
                    "display pixels with w, h >= 0."
                )
            competitors = box.get("competitors") or {}
            if not isinstance(competitors, dict):
                raise OutputError(f"viewer: {where}: competitors must be a dict.")
            side = box.get("side")
            checked.append(
                {
                    "organ": box["organ"],
                    "bbox": bbox,
                    "probability": _optional_float(box.get("probability"), f"{where} probability"),
                    "margin": _optional_float(box.get("margin"), f"{where} margin"),
                    "clip_score": _optional_float(box.get("clip_score"), f"{where} clip_score"),
                    "side": None if side is None else str(side),
                    "hint": bool(box.get("hint", False)),
                    "competitors": {
                        str(c): _optional_float(p, f"{where} competitor {c!r}")
                        for c, p in competitors.items()
                    },
                }
            )
        if checked:
            out[str(k)] = checked
    return out


def _checked_profiles(profiles: Any, names: set[str], n: int) -> dict[str, list[dict[str, Any]]]:
    """``ViewerData.profiles`` as JSON-ready dicts, checked."""
    if not isinstance(profiles, dict):
        raise OutputError("viewer: profiles must be a dict {organ: [profile dict, ...]}.")
    out: dict[str, list[dict[str, Any]]] = {}
    for organ, sides in profiles.items():
        if organ not in names:
            raise OutputError(
                f"viewer: profiles name organ {organ!r}; use one of the organs given "
                f"({', '.join(sorted(names))})."
            )
        out[organ] = [_checked_profile(p, f"profile of {organ}", n) for p in sides]
    return out


def _checked_profile(profile: Any, where: str, n: int) -> dict[str, Any]:
    if not isinstance(profile, dict) or "profile" not in profile:
        raise OutputError(f"viewer: {where} must be a dict with a 'profile' list.")
    points = []
    for point in profile["profile"]:
        if len(point) != 2:
            raise OutputError(f"viewer: {where} point {point!r} must be [display slice, score].")
        score = _optional_float(point[1], f"{where} score")
        points.append([_slice_index(point[0], n, f"{where} slice"), score])
    extent = profile.get("extent")
    if extent is not None:
        if len(extent) != 2:
            raise OutputError(f"viewer: {where} extent must be [first, last] or None.")
        extent = [_slice_index(e, n, f"{where} extent") for e in extent]
    stops = []
    for stop in profile.get("stops") or []:
        direction = _as_int(stop.get("direction"))
        if direction not in (-1, 1):
            raise OutputError(f"viewer: {where} stop direction must be +1 or -1.")
        stopped = stop.get("stopped_at")
        stops.append(
            {
                "seed": _slice_index(stop.get("seed"), n, f"{where} stop seed"),
                "direction": direction,
                "stopped_at": None
                if stopped is None
                else _slice_index(stopped, n, f"{where} stopped_at"),
                "reason": str(stop.get("reason", "")),
            }
        )
    side = profile.get("side")
    return {
        "side": None if side is None else str(side),
        "profile": sorted(points),
        "extent": extent,
        "seeds": [_slice_index(s, n, f"{where} seed") for s in profile.get("seeds") or []],
        "stops": stops,
    }
