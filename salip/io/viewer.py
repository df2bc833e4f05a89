"""A self-contained HTML viewer of one segmentation (``--viewer PATH.html``).

:func:`viewer_html` turns a :class:`ViewerData` (display slices, label map, organs, chosen
boxes, the volume strategy's score profiles) into one HTML document that needs nothing but a
browser: the JavaScript, the CSS and the data are inline, there is no font, script or image
to fetch, and a Content-Security-Policy (``default-src 'none'``) forbids any request. The
page template is ``viewer_template.html`` beside this module (package data).

Encoding (all of it decoded in the browser with plain JavaScript and the browser's own
``DecompressionStream("deflate")``, and in Python by :func:`decode_viewer`):

- Intensities are stored in the input's units (HU for CT) as a 16-bit code ``q`` per pixel,
  ``value = offset + step * q`` (rounded to the nearest code). CT is clipped to
  [-1024, 3071] HU; other modalities use a base step of 1 for whole-number data whose range
  fits 16 bits, else ``(max - min) / 65535``. With a base step of 1 the offset is a multiple
  of the step (below the minimum), so 0 and round values stay exact. Each image row is
  delta-coded (``q`` minus its left neighbour, modulo 2**16, zig-zag mapped so that small
  differences of either sign become small codes), each slice is written as its high-byte
  plane then its low-byte plane (2 x H x W bytes; the high plane is nearly all zeros), and
  every run of 8 slices is one zlib stream (level 6; compressed on several threads,
  inflated in parallel by the browser). The streams are concatenated and base64-encoded
  into a ``<script type="application/octet-stream">``; their lengths are in the metadata.
- The step is the base step (exact to 1 HU for CT) when the file fits in ``max_bytes``
  (25 MB by default); otherwise it is the finest of :data:`STEP_FACTORS` x the base step
  that fits (leaving at least :data:`MIN_LEVELS` levels), chosen by binary search on a
  sample of up to 16 slices and confirmed on the whole stack. CT noise makes 1-HU data of
  a 512x512x200 scan about 44-52 MB this way, so such a scan is stored in coarser steps:
  the test's real CT (17 HU noise) gets 10 HU steps (error at most 5 HU) in 24.3 MB, 6.5 s
  on one CPU. The page states the step.
- Labels are the NxHxW uint8 map, zlib level 6, base64.
- Everything else (title, organs, boxes, profiles, window presets, the codes' offset and
  step) is one JSON object in a ``<script type="application/json">``, with ``<``, ``>``
  and ``&`` escaped so no text can end the script element.

The page: a canvas with the slice and each organ's colour overlay, organ toggles, opacity
and outline controls, a slice slider, mouse wheel and arrow keys, CT window presets (soft
tissue, liver, lung, bone, brain, full range) or a p1-p99 window for other modalities,
editable width/level and right-drag windowing, a pixel readout, the chosen boxes with their
CLIP probability and margin (hover or click one for its competitors' probabilities), and
for the volume strategy a score-profile plot per organ and side with the extent, seeds,
where each walk stopped and why, and a marker at the current slice.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from numbers import Integral, Real
from typing import Any

import numpy as np

from salip.core.errors import OutputError
from salip.io.slicing import display_slice

logger = logging.getLogger(__name__)

#: Default size limit of a viewer file in bytes (25 MB).
MAX_BYTES = 25_000_000

#: CT intensities are clipped to this HU range (12 bits) before encoding.
CT_RANGE = (-1024.0, 3071.0)

#: CT window presets: (id, label, width HU, level HU). "auto" (full range) is added.
CT_WINDOWS = (
    ("soft", "Soft tissue", 400.0, 40.0),
    ("liver", "Liver", 150.0, 30.0),
    ("lung", "Lung", 1500.0, -600.0),
    ("bone", "Bone", 1800.0, 400.0),
    ("brain", "Brain", 80.0, 40.0),
)

#: Multiples of the base step tried, finest first, until the file fits ``max_bytes``.
STEP_FACTORS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024)

#: Fewest grey levels over the data's range a step may leave (coarser ones are not tried).
MIN_LEVELS = 64

MODALITIES = ("ct", "mr", "xray", "us")

_SAMPLE_SLICES = 16
_CHUNK_SLICES = 8
_TEMPLATE = "viewer_template.html"
_PLACEHOLDER = re.compile(r"__SALIP_(TITLE|META|IMAGE|LABELS)__")


@dataclass(frozen=True)
class ViewerData:
    """Everything the viewer shows, in display orientation.

    image: NxHxW array of the input's intensities (float32; HU for CT), N display slices
        (N = 1 for a 2D image), each HxW as displayed (row 0 at the top).
    labels: NxHxW uint8 label map, same layout; 0 = background, value v = organs[v-1].
    organs: tuple of (name, label value, (r, g, b)) in label order.
    slice_numbers: the input file's slice index of each display slice (length N), shown to
        the user.
    pixel_spacing: (row_mm, col_mm) of a display pixel, for the aspect ratio ((1,1) for 2D
        images).
    modality: "ct", "mr", "xray", "us" or None; CT gets window presets.
    boxes: per display slice index -> list of dicts {"organ", "bbox": [x, y, w, h] in display
        pixels (segment-anything's XYWH: the box covers columns x..x+w and rows y..y+h),
        "probability" (float or None), "margin" (float or None), "clip_score" (float or
        None), "side" (str or None), "competitors": {class name: probability} (may be
        empty)}.
    profiles: organ name -> list (one per side) of dicts {"side": str|None,
        "profile": [[display slice, score], ...], "extent": [first, last] display slices or
        None, "seeds": [display slices], "stops": [{"seed": slice, "direction": +1/-1,
        "stopped_at": slice, "reason": str}]}; empty for the slices strategy.
    title: a line shown at the top (input name, organs).
    orientation: the patient's direction at the (top, bottom, left, right) edge of a display
        slice, e.g. ("A", "P", "R", "L") for axial slices; None for 2D images.
    answers: organ name -> {"confidence": float in [0, 1] or None, "found": bool,
        "reason": str or None}, the run's answer shown in the organ's legend entry (its
        confidence, or "not found" and why); None or a missing organ: nothing shown.
    """

    image: np.ndarray
    labels: np.ndarray
    organs: tuple[tuple[str, int, tuple[int, int, int]], ...]
    slice_numbers: tuple[int, ...]
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    modality: str | None = None
    boxes: dict[int, list[dict[str, Any]]] | None = None
    profiles: dict[str, list[dict[str, Any]]] | None = None
    title: str = ""
    orientation: tuple[str, str, str, str] | None = None
    answers: dict[str, dict[str, Any]] | None = None


def display_stack(array: np.ndarray, is_2d: bool, axis: str = "axial") -> np.ndarray:
    """A canonical array as its stack of display slices (the layout :class:`ViewerData` takes).

    Args:
        array: XxYxZ canonical volume or label map (as ``Volume.data``), or for a 2D image
            HxW or HxWxC (C = 1, or 3/4: grey if the colour channels agree, else their
            luma).
        is_2d: whether ``array`` is a 2D image.
        axis: "axial", "coronal" or "sagittal" (ignored for 2D images).

    Returns:
        NxHxW array in the radiological display orientation of
        :func:`salip.io.slicing.display_slice`, slice k being canonical index k along
        ``axis``; 1xHxW for a 2D image. Same dtype, except that colour images become float32.
    """
    if is_2d:
        image = np.asarray(array)
        if image.ndim == 3 and (image.shape[2] == 1 or (image[..., 1:3] == image[..., :1]).all()):
            image = image[..., 0]  # grey, perhaps stored as RGB
        elif image.ndim == 3:
            luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
            image = image[..., :3].astype(np.float32) @ luma
        return image[None]
    from salip.io.orientation import AXES

    if axis not in AXES:
        raise OutputError(f"viewer: unknown axis {axis!r}; use one of {', '.join(AXES)}.")
    count = array.shape[AXES[axis]]
    return np.stack([display_slice(array, False, axis, k) for k in range(count)])


def viewer_html(data: ViewerData, *, max_bytes: int = MAX_BYTES) -> str:
    """One self-contained HTML document (UTF-8 text) showing ``data``.

    Args:
        data: the slices, labels and scores to show (validated here).
        max_bytes: the most UTF-8 bytes the document may take; intensities are stored in
            coarser steps when the exact ones would not fit (see the module docstring).

    Raises:
        OutputError: ``data`` is malformed (the message says which field and what to pass),
            or the document cannot fit in ``max_bytes`` even with coarse steps.
    """
    image, labels = _checked_arrays(data)
    meta = _checked_meta(data, image.shape)
    facts, meta["start"] = _organ_facts(labels, len(data.organs))
    for organ, fact in zip(meta["organs"], facts):
        organ.update(fact)
    meta["windows"], meta["defaultWindow"] = _windows(image, data.modality)
    labels_b64 = _b64(zlib.compress(np.ascontiguousarray(labels), 6))
    offset, base, low, high = _quantiser(image, data.modality)
    meta["image"] = {"offset": offset, "step": base, "factor": 1, "units": meta["units"]}
    template = _template()
    title = _html_text(data.title or "salip viewer")
    fixed = len(template.encode()) + len(labels_b64) + len(title.encode())
    # Room for the metadata with any step written into it (a float's repr is short).
    budget = max_bytes - fixed - len(_script_json(meta).encode()) - 256
    # The stream lengths in the metadata: a few characters per 8 slices.
    budget -= 8 * (len(image) // _CHUNK_SLICES + 1)
    streams, factor = _encode_image(image, (offset, base, low, high), budget, max_bytes)
    step = base * factor
    meta["image"] = {
        "offset": _step_offset(offset, base, factor),
        "step": step,
        "factor": factor,
        "units": meta["units"],
        "clipped": list(CT_RANGE) if data.modality == "ct" else None,
        "chunkSlices": _CHUNK_SLICES,
        "chunks": [len(z) for z in streams],
    }
    parts = {
        "TITLE": title,
        "META": _script_json(meta),
        "IMAGE": _b64(b"".join(streams)),
        "LABELS": labels_b64,
    }
    html = _PLACEHOLDER.sub(lambda m: parts[m.group(1)], template)
    if len(html.encode()) > max_bytes:
        raise OutputError(
            f"unexpected: the viewer takes {len(html.encode())} bytes, over its budget of "
            f"{max_bytes}; please report this with the input's shape."
        )
    if factor > 1:
        logger.info("viewer: intensities stored in steps of %g to fit %d bytes", step, max_bytes)
    return html


def decode_viewer(html: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read back what :func:`viewer_html` embedded (the browser's decoding, in numpy).

    Returns:
        (image, labels, meta): NxHxW float64 intensities as the viewer shows them
        (``offset + step * q``), NxHxW uint8 labels, and the page's metadata dict.

    Raises:
        OutputError: ``html`` is not a salip viewer.
    """
    meta = json.loads(_script_text(html, "salip-meta"))
    n, h, w = meta["n"], meta["h"], meta["w"]
    packed, at = base64.b64decode(_script_text(html, "salip-image")), 0
    streams = []
    for length in meta["image"]["chunks"]:
        streams.append(zlib.decompress(packed[at : at + length]))
        at += length
    planes = b"".join(streams)
    labels = zlib.decompress(base64.b64decode(_script_text(html, "salip-labels")))
    codes = np.frombuffer(planes, np.uint8).reshape(n, 2, h, w)
    zigzag = (codes[:, 0].astype(np.int32) << 8) | codes[:, 1]
    deltas = (zigzag >> 1) ^ -(zigzag & 1)
    q = np.cumsum(deltas, axis=2, dtype=np.int64) & 0xFFFF
    image = meta["image"]["offset"] + meta["image"]["step"] * q
    return image, np.frombuffer(labels, np.uint8).reshape(n, h, w).copy(), meta


def _script_text(html: str, element_id: str) -> str:
    match = re.search(rf'<script type="[^"]+" id="{element_id}">(.*?)</script>', html, re.DOTALL)
    if match is None:
        raise OutputError(f"not a salip viewer: no {element_id} element; write it with salip.")
    return match.group(1).strip()


def _template() -> str:
    return resources.files("salip.io").joinpath(_TEMPLATE).read_text(encoding="utf-8")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _html_text(text: str) -> str:
    import html

    return html.escape(str(text), quote=True)


def _script_json(obj: Any) -> str:
    """JSON safe inside a <script> element: no "<", ">", "&", U+2028 or U+2029 left raw."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(raw, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


# --- validation ---------------------------------------------------------------------------


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


# --- facts and windows --------------------------------------------------------------------


def _organ_facts(labels: np.ndarray, n: int) -> tuple[list[dict[str, Any]], int]:
    """Per organ value 1..n: pixel count, first/last/fullest display slice; the start slice
    (the one with the most labelled pixels, else the middle one)."""
    counts = np.stack([np.bincount(s.ravel(), minlength=n + 1)[: n + 1] for s in labels])
    facts = []
    for value in range(1, n + 1):
        present = np.nonzero(counts[:, value])[0]
        facts.append(
            {
                "voxels": int(counts[:, value].sum()),
                "first": int(present[0]) if present.size else None,
                "last": int(present[-1]) if present.size else None,
                "best": int(np.argmax(counts[:, value])) if present.size else None,
            }
        )
    labelled = counts[:, 1:].sum(axis=1)
    start = int(np.argmax(labelled)) if labelled.any() else len(labels) // 2
    return facts, start


def _sample(image: np.ndarray, limit: int = 2_000_000) -> np.ndarray:
    flat = image.reshape(-1)
    return flat[:: max(1, flat.size // limit)]


def _windows(image: np.ndarray, modality: str | None) -> tuple[list[dict[str, Any]], str]:
    """The window presets ([{id, label, width, level}]) and the default preset's id."""

    def window(wid: str, label: str, low: float, high: float) -> dict[str, Any]:
        width = max(high - low, 1e-6)
        return {"id": wid, "label": label, "width": width, "level": (low + high) / 2}

    if modality == "ct":
        low, high = (float(np.clip(f(image), *CT_RANGE)) for f in (np.min, np.max))
        presets = [
            {"id": i, "label": f"{name} (W{w:g} L{lvl:g})", "width": w, "level": lvl}
            for i, name, w, lvl in CT_WINDOWS
        ]
        return [*presets, window("auto", "Full range (auto)", low, high)], "soft"
    p1, p99 = (float(v) for v in np.percentile(_sample(image), [1, 99]))
    low, high = float(image.min()), float(image.max())
    auto = window("auto", "Auto (p1-p99)", p1, p99 if p99 > p1 else high)
    return [auto, window("full", "Full range", low, high)], "auto"


# --- encoding -----------------------------------------------------------------------------


def _quantiser(image: np.ndarray, modality: str | None) -> tuple[float, float, float, float]:
    """(offset, base step, low clip, high clip) so that ``value = offset + step * q``."""
    if modality == "ct":
        return CT_RANGE[0], 1.0, CT_RANGE[0], CT_RANGE[1]
    low, high = float(image.min()), float(image.max())
    span = high - low
    whole = np.issubdtype(image.dtype, np.integer) or bool(np.all(image == np.round(image)))
    if whole and span <= 65535:
        return low, 1.0, low, high
    return low, (span / 65535 if span > 0 else 1.0), low, high


def _step_offset(offset: float, base: float, factor: int) -> float:
    """The codes' offset for ``factor`` x the base step: for whole-number data (base step 1)
    a multiple of the step, so that 0 and round values stay on the grid (0, 10, 20 HU)."""
    step = base * factor
    return math.floor(offset / step) * step if base == 1.0 else offset


def _pack(chunk: np.ndarray, quant: tuple[float, float, float, float], factor: int) -> bytes:
    """KxHxW intensities -> K x (high plane, low plane) of zig-zag row deltas of the codes."""
    offset, base, low, high = quant
    offset = _step_offset(offset, base, factor)
    q = np.rint((np.clip(chunk, low, high).astype(np.float64) - offset) / (base * factor))
    q = np.clip(q, 0, 65535).astype(np.int32)
    delta = np.diff(q, axis=2, prepend=0)
    delta = ((delta + 32768) & 0xFFFF) - 32768  # modulo 2**16, as int16
    zigzag = ((delta << 1) ^ (delta >> 15)) & 0xFFFF
    planes = np.empty((len(chunk), 2) + chunk.shape[1:], np.uint8)
    planes[:, 0] = zigzag >> 8
    planes[:, 1] = zigzag & 0xFF
    return planes.tobytes()


def _compress(
    image: np.ndarray, quant: tuple[float, float, float, float], factor: int
) -> list[bytes]:
    """One zlib stream per run of ``_CHUNK_SLICES`` slices, compressed on several threads
    (zlib and numpy release the GIL); the browser inflates them in parallel too."""

    def one(start: int) -> bytes:
        return zlib.compress(_pack(image[start : start + _CHUNK_SLICES], quant, factor), 6)

    starts = range(0, len(image), _CHUNK_SLICES)
    workers = max(1, min(8, os.cpu_count() or 1, len(starts)))
    if workers == 1:
        return [one(start) for start in starts]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, starts))


def _b64_size(n: int) -> int:
    return 4 * ((n + 2) // 3)


def _encode_image(
    image: np.ndarray, quant: tuple[float, float, float, float], budget: int, max_bytes: int
) -> tuple[list[bytes], int]:
    """The zlib streams of the finest step whose base64 fits ``budget`` bytes, and its factor.

    Sizes are estimated on up to 16 evenly spaced slices (binary search over the factors,
    larger steps compress better), then confirmed on the whole stack.
    """
    offset, base, low, high = quant
    levels = (high - low) / base
    factors = [f for f in STEP_FACTORS if f == 1 or levels / f >= MIN_LEVELS]
    n = len(image)
    picks = np.unique(np.linspace(0, n - 1, min(n, _SAMPLE_SLICES)).round().astype(int))
    first = 0
    if len(picks) < n:
        sample = image[picks]
        lo, hi = 0, len(factors)
        while lo < hi:
            mid = (lo + hi) // 2
            packed = sum(len(z) for z in _compress(sample, quant, factors[mid]))
            size = _b64_size(packed * n // len(picks))
            lo, hi = (lo, mid) if size <= budget else (mid + 1, hi)
        first = min(lo, len(factors) - 1)
    for factor in factors[first:]:
        streams = _compress(image, quant, factor)
        if _b64_size(sum(len(z) for z in streams)) <= budget:
            return streams, factor
    shape = "x".join(str(s) for s in image.shape)
    raise OutputError(
        f"viewer: {shape} slices do not fit in {max_bytes} bytes even with {MIN_LEVELS} grey "
        "levels; view fewer slices (e.g. crop the volume) or allow a larger viewer file."
    )
