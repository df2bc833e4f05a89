"""The viewer page: :func:`viewer_html` encodes a :class:`~salip.outputs.viewer.schema.ViewerData`
into one self-contained HTML document, and :func:`decode_viewer` reads it back."""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import numpy as np

from salip.core.errors import OutputError
from salip.outputs.viewer.checks import _checked_arrays, _checked_meta
from salip.outputs.viewer.schema import (
    CT_RANGE,
    CT_WINDOWS,
    MAX_BYTES,
    MIN_LEVELS,
    STEP_FACTORS,
    ViewerData,
)

__all__ = [
    "decode_viewer",
    "viewer_html",
]

logger = logging.getLogger(__name__)

_SAMPLE_SLICES = 16
_CHUNK_SLICES = 8
_TEMPLATE = "viewer_template.html"
_PLACEHOLDER = re.compile(r"__SALIP_(TITLE|META|IMAGE|LABELS)__")


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
    return resources.files("salip.outputs.viewer").joinpath(_TEMPLATE).read_text(encoding="utf-8")


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
