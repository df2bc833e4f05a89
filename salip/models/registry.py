"""Official SAM checkpoints and salip's cache directory. Pure data, no torch import."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "OFFICIAL_BASE_URL",
    "SAM_CHECKPOINTS",
    "cached_checkpoint",
    "checkpoint_dir",
    "CheckpointInfo",
    "salip_home",
]

#: Base URL of Meta's official SAM checkpoints.
OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass(frozen=True)
class CheckpointInfo:
    """A downloadable checkpoint.

    Attributes:
        name: short name used on the command line (e.g. "vit_b").
        filename: file name in the cache directory and at the base URL.
        sha256: hex SHA-256 of the file; a download must match it.
        size: size in bytes when known (used only for the progress bar).
    """

    name: str
    filename: str
    sha256: str
    size: int | None = None

    def url(self, base_url: str = OFFICIAL_BASE_URL) -> str:
        """Download URL under ``base_url`` (a mirror may replace the official one)."""
        return base_url.rstrip("/") + "/" + self.filename


SAM_CHECKPOINTS: dict[str, CheckpointInfo] = {
    "vit_b": CheckpointInfo(
        "vit_b",
        "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        375_042_383,
    ),
    "vit_l": CheckpointInfo(
        "vit_l",
        "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_h": CheckpointInfo(
        "vit_h",
        "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
}


def salip_home() -> Path:
    """salip's cache root: ``$SALIP_HOME``, else the platform's user cache dir."""
    env = os.environ.get("SALIP_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("salip"))


def checkpoint_dir() -> Path:
    """Folder holding downloaded SAM checkpoints (``<home>/checkpoints``)."""
    return salip_home() / "checkpoints"


def cached_checkpoint(name: str) -> Path | None:
    """Path of the cached official checkpoint ``name``, or None if it is not there."""
    info = SAM_CHECKPOINTS[name]
    path = checkpoint_dir() / info.filename
    return path if path.is_file() else None
