"""What ``salip serve`` and its client agree on: the output kinds a job can ask for, their
media types and file names, the settings a job may set, and where the token lives.

The server (:mod:`salip.apps.serve`) and the client (:mod:`salip.api.client`) both read
this module, so the two cannot drift apart.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from salip.core.config import flat_fields
from salip.core.errors import ConfigError

__all__ = [
    "API_PREFIX",
    "FINAL_STATES",
    "JOB_STATES",
    "OUTPUT_KINDS",
    "SERVER_SETTINGS",
    "OutputKind",
    "default_token_file",
    "job_settings",
    "output_name",
    "read_token",
]

#: Every route of the API but the health checks starts with this.
API_PREFIX = "/v1"

#: The states of a job, and those after which it never changes.
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")


@dataclass(frozen=True)
class OutputKind:
    """One kind of output file of a job.

    Attributes:
        name: the kind's name in requests and URLs.
        media_type: the ``Content-Type`` it is served with (the mask's depends on the input:
            NIfTI or PNG).
        stem: its file name in the job's folder, before the suffix.
        help: what it is.
    """

    name: str
    media_type: str
    stem: str
    help: str


#: The outputs a job can ask for (``"outputs": [...]``); ``labels`` comes with ``mask``.
OUTPUT_KINDS: dict[str, OutputKind] = {
    k.name: k
    for k in (
        OutputKind("mask", "application/gzip", "mask", "the label map (NIfTI; PNG for 2D)"),
        OutputKind("labels", "application/json", "mask", "the mask's label-value sidecar"),
        OutputKind("seg", "application/dicom", "seg", "a DICOM SEG (DICOM-series inputs)"),
        OutputKind("statistics", "application/json", "statistics", "organ statistics"),
        OutputKind("report", "application/json", "report", "the run report"),
        OutputKind("preview", "image/png", "preview", "an overlay of the largest slices"),
        OutputKind("viewer", "text/html; charset=utf-8", "viewer", "the HTML viewer"),
    )
}

#: Settings only the server's operator sets (``salip serve`` flags): models, devices, paths
#: and resource limits. A job may set every other settings field.
SERVER_SETTINGS = frozenset(
    {
        "sam_checkpoint", "sam_model_type", "sam_preprocess", "clip_model", "clip_pretrained",
        "clip_quick_gelu", "device", "precision", "compile", "runtime", "method", "head",
        "prompts_dir", "max_voxels", "encoder_batch_size", "points_per_batch",
    }
)  # fmt: skip


def job_settings() -> tuple[str, ...]:
    """The settings fields a job may set (flat names, as :func:`salip.segment` takes them)."""
    return tuple(name for name in flat_fields() if name not in SERVER_SETTINGS)


def output_name(kind: str, is_2d: bool) -> str:
    """The file name of output ``kind`` in a job's folder (``mask.png`` for a 2D input's
    mask, ``mask.json`` for its labels, ``seg.dcm``, ``viewer.html``, ...)."""
    suffix = {
        "mask": ".png" if is_2d else ".nii.gz",
        "labels": ".json",
        "seg": ".dcm",
        "preview": ".png",
        "viewer": ".html",
    }.get(kind, ".json")
    return OUTPUT_KINDS[kind].stem + suffix


def default_token_file() -> Path:
    """``$SALIP_HOME/serve/token``: where ``salip serve`` keeps its token by default."""
    from salip.models.registry import salip_home

    return salip_home() / "serve" / "token"


def read_token(path: str | Path | None = None, *, create: bool = False) -> str:
    """The bearer token in ``path`` (default: :func:`default_token_file`).

    Args:
        path: the token file: one line, the token.
        create: make the file (mode 0600, 32 random bytes as URL-safe text) if it is absent.

    Raises:
        ConfigError: no such file (and not ``create``), an empty one, or one that others
            than its owner may read (``chmod 600 FILE``).
    """
    path = Path(path) if path is not None else default_token_file()
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        # O_EXCL: never reuse a file that appeared meanwhile; 0600 from the start.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return read_token(path)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
        return token
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the token file {path} ({exc.strerror or exc}); give --token-file, or "
            "set SALIP_TOKEN."
        ) from exc
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"token file {path} may be read by others; run chmod 600 {path}.")
    if not text:
        raise ConfigError(f"token file {path} is empty; delete it to have a new one made.")
    return text
