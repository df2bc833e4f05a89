"""What a mask's sidecar records of how it was made, and the check that lets a rerun skip it.

The sidecar beside every label map (``liver.nii.gz`` -> ``liver.json``) holds the label
values, the source (its path, the SHA-256 of its content and the DICOM series), a
fingerprint of the settings that shape the result, the volumes of the label map as
written and each organ's confidence; no time, so that the same inputs and settings give the same bytes. A rerun into the same folder skips a case only when all of these
still describe the case; anything else is a one-line failure for that case, never a silent
reuse of another scan's mask.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from salip.core.config import SegmentConfig
from salip.core.hashing import file_sha256, fingerprint

__all__ = [
    "SPEED_ONLY",
    "mismatch",
    "read_sidecar",
    "settings_fingerprint",
    "sidecar_payload",
    "source_record",
]

#: Settings that change how fast a result comes, not the result: left out of the fingerprint.
SPEED_ONLY = ("device", "compile", "points_per_batch", "encoder_batch_size")


def settings_fingerprint(config: SegmentConfig) -> str:
    """Hex SHA-256 of the settings that shape a result: all but :data:`SPEED_ONLY`, and
    ``clip_pretrained`` when the CLIP model ignores it (``hf-hub:``, ``local-dir:``)."""
    flat = {
        f"{stage}.{name}": value
        for stage, values in dataclasses.asdict(config).items()
        for name, value in values.items()
        if name not in SPEED_ONLY
    }
    if config.models.clip_model.startswith(("hf-hub:", "local-dir:")):
        del flat["models.clip_pretrained"]
    return fingerprint(flat)


def source_record(path: Path, series: str | None) -> dict[str, Any]:
    """The input as a sidecar records it: resolved path, content SHA-256 (of every file, for
    a folder; None when the path names no file), and the DICOM series read (None for
    other inputs)."""
    path = Path(path)
    try:
        digest: str | None = file_sha256(path)
    except OSError:  # a Volume made in memory names no file: nothing to fingerprint
        digest = None
    return {"path": str(path.resolve()), "sha256": digest, "series": series}


def sidecar_payload(
    label_values: Mapping[str, int],
    source: Mapping[str, Any],
    config: SegmentConfig,
    volume_ml: Mapping[str, float | None],
    confidence: Mapping[str, float | None] | None = None,
) -> dict[str, Any]:
    """The JSON object written beside a label map (``confidence``: each organ's, None
    where the strategy gave none; left out when not given)."""
    payload = {
        "labels": dict(label_values),
        "source": dict(source),
        "settings": settings_fingerprint(config),
        "volume_ml": dict(volume_ml),
    }
    if confidence is not None:
        payload["confidence"] = dict(confidence)
    return payload


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar at ``path`` as a dict, or None if it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def mismatch(
    sidecar: Mapping[str, Any] | None,
    source: Path,
    series: str | None,
    organs: Sequence[str],
    config: SegmentConfig,
) -> str | None:
    """Why the outputs described by ``sidecar`` are not this case's result (one clause), or
    None when they are: same input path and content, same series, same organs in the same
    order, same settings."""
    if sidecar is None:
        return "its sidecar is missing or unreadable"
    recorded = sidecar.get("source")
    if not isinstance(recorded, dict):
        return "its sidecar does not record its source (written by an older salip)"
    if recorded.get("path") != str(Path(source).resolve()):
        return f"they were made from {recorded.get('path')}"
    if series is not None and recorded.get("series") != series:
        return f"they were made from series {recorded.get('series')}"
    if recorded.get("sha256") != file_sha256(Path(source)):
        return "the input has changed since they were made (its content differs)"
    if list(sidecar.get("labels") or {}) != list(organs):
        made = ", ".join(sidecar.get("labels") or {}) or "nothing"
        return f"they hold {made}, not {', '.join(organs)}"
    if sidecar.get("settings") != settings_fingerprint(config):
        return "they were made with other settings"
    return None
