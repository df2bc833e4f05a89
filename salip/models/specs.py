"""Model specs as users write them: official SAM names, checkpoint paths, and CLIP's
``local-dir:``/``hf-hub:`` schemas. Pure string and path handling: no torch import, so
config files can be read before any model is needed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from salip.core.config import ModelConfig
from salip.core.errors import SalipError
from salip.core.toml_files import check_keys
from salip.models.registry import SAM_CHECKPOINTS

__all__ = [
    "LOCAL_DIR",
    "local_dir",
    "resolve_model_paths",
]

#: open_clip's schema for a local folder (``open_clip.factory.LOCAL_DIR_PREFIX``). Parsed
#: here rather than with ``open_clip.factory.parse_model_name`` because importing open_clip
#: imports torch, and config files are read before any model is loaded.
LOCAL_DIR = "local-dir:"


def local_dir(spec: str) -> Path | None:
    """The folder of a ``local-dir:PATH`` CLIP spec (``~`` expanded), else None."""
    if not spec.startswith(LOCAL_DIR):
        return None
    return Path(spec[len(LOCAL_DIR) :]).expanduser()


def resolve_model_paths(
    table: Mapping[str, Any], base_dir: Path, error: type[SalipError]
) -> dict[str, Any]:
    """A config file's ``[models]`` table with relative paths made absolute.

    Relative ``sam_checkpoint`` files (not official names), ``local-dir:`` folders and
    ``clip_pretrained`` files that exist are resolved against ``base_dir`` (the config
    file's folder), so a config runs the same from any working folder.

    Raises:
        error: a key that is not a :class:`~salip.core.config.ModelConfig` field.
    """
    valid = [f.name for f in dataclasses.fields(ModelConfig)]
    check_keys("[models]", list(table), valid, error)
    models = dict(table)
    sam = models.get("sam_checkpoint")
    if isinstance(sam, str) and sam not in SAM_CHECKPOINTS and not Path(sam).is_absolute():
        models["sam_checkpoint"] = os.path.normpath(base_dir / sam)
    clip = models.get("clip_model")
    folder = local_dir(clip) if isinstance(clip, str) else None
    if folder is not None and not folder.is_absolute():
        models["clip_model"] = f"{LOCAL_DIR}{os.path.normpath(base_dir / folder)}"
    pretrained = models.get("clip_pretrained")
    if isinstance(pretrained, str) and (base_dir / pretrained).is_file():
        models["clip_pretrained"] = os.path.normpath(base_dir / pretrained)
    return models
