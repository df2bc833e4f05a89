"""What a benchmark result depends on, for ``run.json`` and for the fingerprint that lets a
rerun reuse a saved result: the models' checkpoints (SHA-256), the package versions, the
hardware, and each case's files and settings."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from salip.apps.bench.config import BenchmarkConfig
from salip.apps.bench.datasets import DatasetCase
from salip.apps.bench.devtime import hardware
from salip.apps.bench.methods import Method
from salip.core.hashing import file_sha256, fingerprint
from salip.models.sam import resolve_sam_checkpoint
from salip.models.specs import local_dir
from salip.version import __version__

__all__ = ["device_info", "model_identity", "result_fingerprint", "versions"]

#: Packages whose versions run.json records.
_PACKAGES = (
    "torch",
    "torchvision",
    "segment-anything",
    "open_clip_torch",
    "numpy",
    "scipy",
    "nibabel",
    "pydicom",
    "scikit-image",
    "pandas",
    "matplotlib",
)


def model_identity(config: BenchmarkConfig, needs_sam: bool, needs_clip: bool) -> dict[str, Any]:
    """Model settings with checkpoint SHA-256s; fails early when a checkpoint is missing.
    {} when no method needs a model."""
    if not needs_sam:
        return {}
    m = config.methods[0].config.models
    sam_path = Path(resolve_sam_checkpoint(m.sam_checkpoint))
    identity: dict[str, Any] = {
        "sam": {
            "checkpoint": m.sam_checkpoint,
            "path": str(sam_path),
            "sha256": file_sha256(sam_path),
        }
    }
    if needs_clip:
        clip: dict[str, Any] = {"model": m.clip_model, "pretrained": m.clip_pretrained}
        weights: list[Path] = []
        folder = local_dir(m.clip_model)
        if folder is not None:
            weights = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
        elif m.clip_pretrained and Path(m.clip_pretrained).is_file():
            weights = [Path(m.clip_pretrained)]
        # A named open_clip tag pins its weights; the open_clip version is in run.json.
        clip["sha256"] = {p.name: file_sha256(p) for p in weights}
        identity["clip"] = clip
    return identity


def versions() -> dict[str, str]:
    versions = {"salip": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"device": device, "platform": platform.platform()}
    machine = hardware(device)
    if device.startswith("cuda"):
        info["gpu"] = machine["gpu"]
        info["cuda"] = torch.version.cuda
    else:
        info["cpu_threads"] = machine["cpu_threads"]
    return info


def _case_identity(case: DatasetCase) -> dict[str, Any]:
    return {
        "image": str(case.image),
        "organs": list(case.organs),
        "channel": case.channel,
        "label": str(case.label) if case.label else None,
        "values": {k: list(v) for k, v in case.values.items()},
        "files": {k: [str(p) for p in v] for k, v in case.files.items()},
        "threshold": case.threshold,
        "fill_outline": case.fill_outline,
    }


def _label_map_identity(case: DatasetCase) -> dict[str, Any]:
    """What the full label map of a case is read from (for methods that read it)."""
    return {
        "label_names": {str(k): v for k, v in sorted(case.label_names.items())},
        "label_dir": str(case.label_dir) if case.label_dir else None,
        "organ_map": dict(sorted(case.organ_map.items())),
    }


def result_fingerprint(
    method: Method, identity: dict[str, Any], case: DatasetCase, settings: dict[str, Any]
) -> str:
    """The key of one saved result: method, models (if it uses any), case files, metrics."""
    parts = [method.describe(), identity if method.needs_sam else {}, _case_identity(case)]
    if method.needs_label_map:
        parts.append(_label_map_identity(case))
    return fingerprint([*parts, settings])
