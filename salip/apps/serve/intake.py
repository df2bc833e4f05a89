"""What a client sends, checked before a job is queued: the request JSON and the uploaded
scan. Everything here is untrusted; each problem is an :class:`ApiError` with the HTTP
status and a one-line reason, and no client string ever becomes a path (the server names
the files it keeps).
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from salip.api.service import OUTPUT_KINDS, job_settings
from salip.core.config import SegmentConfig
from salip.core.errors import SalipError, one_line
from salip.core.organs import parse_organs
from salip.io import IMAGE_SUFFIXES, NIFTI_SUFFIXES, read_input
from salip.io.dicom_seg import source_references

__all__ = [
    "ApiError",
    "JobRequest",
    "check_input",
    "input_name",
    "job_config",
    "parse_request",
]

#: Keys of the request JSON.
REQUEST_KEYS = ("organs", "outputs", "settings")


class ApiError(Exception):
    """A request the server refuses: ``status`` (4xx/5xx) and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, one_line(message, limit=500)


@dataclass(frozen=True)
class JobRequest:
    """A checked request.

    Attributes:
        organs: target names as the server's vocabulary resolves them, in order.
        outputs: the output kinds asked for (``labels`` added with ``mask``).
        settings: the job's own settings (flat field names), JSON data.
    """

    organs: tuple[str, ...]
    outputs: tuple[str, ...]
    settings: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """As stored with the job."""
        return dataclasses.asdict(self)


def parse_request(text: str, defaults: SegmentConfig) -> tuple[JobRequest, SegmentConfig]:
    """The request JSON of a job and the job's settings (the server's, with the job's own).

    Raises:
        ApiError: 400 for JSON that is not a request object; 422 for unknown organs, output
            kinds or settings, or invalid setting values.
    """
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
        raise ApiError(400, f"the request field is not JSON: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request field must be a JSON object with organs and outputs.")
    unknown = sorted(set(data) - set(REQUEST_KEYS))
    if unknown:
        raise ApiError(
            400, f"unknown request key(s) {', '.join(unknown)}; use {', '.join(REQUEST_KEYS)}."
        )
    organs, outputs = data.get("organs"), data.get("outputs", ["mask"])
    settings = data.get("settings") or {}
    if isinstance(organs, str):
        organs = [organs]
    if not _strings(organs) or not organs:
        raise ApiError(400, 'organs must be a list of names or free text, e.g. ["liver"].')
    if not _strings(outputs) or not isinstance(settings, dict):
        raise ApiError(400, "outputs must be a list of output kinds and settings an object.")
    try:
        names = tuple(o.name for o in parse_organs(organs, defaults.scoring.prompts_dir))
    except SalipError as exc:
        raise ApiError(422, one_line(exc, limit=500)) from None
    return JobRequest(names, _outputs(outputs), settings), _settings(settings, defaults)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and len(v) < 200 for v in value)


def _outputs(kinds: list[str]) -> tuple[str, ...]:
    unknown = sorted(set(kinds) - set(OUTPUT_KINDS))
    if unknown:
        raise ApiError(
            422, f"unknown output(s) {', '.join(unknown)}; choose from {', '.join(OUTPUT_KINDS)}."
        )
    chosen = set(kinds) | ({"labels"} if "mask" in kinds else set())
    if {"mask", "seg"} <= chosen:
        raise ApiError(
            422, "a job writes its masks as NIfTI (mask) or as a DICOM SEG (seg), not both; "
            "submit two jobs."
        )  # fmt: skip
    return tuple(k for k in OUTPUT_KINDS if k in chosen or k == "report")


def _settings(settings: dict[str, Any], defaults: SegmentConfig) -> SegmentConfig:
    allowed = job_settings()
    refused = sorted(set(settings) - set(allowed))
    if refused:
        raise ApiError(
            422, f"setting(s) {', '.join(refused)} are the server's (models, devices, paths, "
            "limits) or unknown; a job may set: " + ", ".join(allowed) + ".",
        )  # fmt: skip
    try:
        return job_config(defaults, settings)
    except (SalipError, TypeError, ValueError) as exc:
        raise ApiError(422, f"invalid settings: {one_line(exc)}") from None


def job_config(defaults: SegmentConfig, settings: dict[str, Any]) -> SegmentConfig:
    """The server's settings with a job's own (JSON lists read as the tuples they are)."""
    return defaults.replace(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    )


def input_name(upload_name: str) -> str:
    """The name the server gives an upload: ``input`` and the suffix of the client's name.

    Raises:
        ApiError: 415 for a file type salip does not read.
    """
    lower = upload_name.lower()
    for suffix in (*NIFTI_SUFFIXES, ".zip", *IMAGE_SUFFIXES):
        if lower.endswith(suffix):
            return "input" + suffix
    raise ApiError(
        415, f"{upload_name[:100]!r} is not a file type salip reads; upload NIfTI (.nii, "
        f".nii.gz), a DICOM series as a .zip, or a 2D image ({', '.join(IMAGE_SUFFIXES)}).",
    )  # fmt: skip


def check_input(path: Path, config: SegmentConfig, outputs: tuple[str, ...]) -> bool:
    """Read the uploaded scan with :func:`salip.segment`'s checks (header size claims, a
    zip's unpacked size, the voxel limit, a DICOM series' gaps) and refuse what no job
    could segment; returns whether it is a 2D image.

    Raises:
        ApiError: 422 with the reader's reason; 400 for a zip with unsafe member names.
    """
    if path.name.endswith(".zip"):
        _check_zip_names(path)
    try:
        volume = read_input(path, **dataclasses.asdict(config.input))
    except SalipError as exc:
        raise ApiError(422, _without_path(one_line(exc, limit=500), path)) from None
    except OSError as exc:
        raise ApiError(422, f"the upload cannot be read: {one_line(exc)}") from None
    if "seg" in outputs and volume.geometry.kind != "dicom":
        raise ApiError(
            422, "a DICOM SEG (seg) references a DICOM series; this upload is not one: ask "
            "for mask instead.",
        )  # fmt: skip
    if "seg" in outputs:
        try:  # refused here as salip segment refuses it before any model runs
            source_references(volume.sources, "the upload")
        except SalipError as exc:
            raise ApiError(
                422, one_line(exc, limit=500).replace("-o NAME.nii.gz", "mask")
            ) from None
    return volume.is_2d


def _check_zip_names(path: Path) -> None:
    """Refuse a zip with absolute member names or ``..`` parts: salip reads members in
    place and never unpacks them, but such an archive is a crafted one."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ApiError(422, f"the upload is not a valid zip file: {one_line(exc)}") from None
    for name in names:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise ApiError(
                400, f"the zip holds an unsafe member name {name[:100]!r} (absolute or with "
                "'..'); zip the series folder itself.",
            )  # fmt: skip


def _without_path(message: str, path: Path) -> str:
    """A reader's message with the server's path of the upload replaced by ``upload``."""
    return message.replace(str(path), "upload")
