"""The description-prompt cache: visual descriptions of each organ, per modality.

Cache format (``prompts/<organ>.json``, shipped inside the package as ``salip.prompts_data``)::

    {
      "format_version": 1,
      "organ": "liver",
      "entries": {
        "ct": {
          "descriptions": ["...", ...],
          "source": "hand-written" | "generated",
          "author": "...",              # hand-written entries
          "date": "YYYY-MM-DD",
          "generator": null | "model name",   # generated entries
          "template_version": null | "...",
          "template_sha256": null | "...",
          "sampling": null | {"temperature": ..., ...}
        }
      }
    }

``$SALIP_PROMPTS_DIR`` points salip at another folder of the same layout.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from salip.errors import ConfigError
from salip.organs import Organ

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: Modalities tried, in order, when an organ has no entry for the requested one.
FALLBACK_ORDER = ("ct", "mr", "xray", "us")


@dataclass(frozen=True)
class PromptSet:
    """The descriptions used to score one organ, with where they came from."""

    organ: str
    modality: str
    requested_modality: str
    descriptions: tuple[str, ...]
    provenance: dict[str, Any]


def prompts_dir() -> Path:
    """Folder of the prompt cache: ``$SALIP_PROMPTS_DIR`` or the packaged copy."""
    env = os.environ.get("SALIP_PROMPTS_DIR")
    if env:
        return Path(env)
    return Path(str(resources.files("salip.prompts_data")))


def load_prompt_file(organ: str, folder: Path | None = None) -> dict[str, Any]:
    """Parsed ``<organ>.json`` from the cache; ConfigError if missing or malformed."""
    path = (folder or prompts_dir()) / f"{organ}.json"
    if not path.is_file():
        raise ConfigError(f"no description prompts for '{organ}' in {path.parent}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable prompt file ({exc}).") from exc
    if data.get("format_version") != FORMAT_VERSION or not isinstance(data.get("entries"), dict):
        raise ConfigError(f"{path}: not a salip prompt file of format {FORMAT_VERSION}.")
    return data


def load_prompts(organ: Organ, modality: str, folder: Path | None = None) -> PromptSet:
    """Descriptions of ``organ`` for ``modality``.

    If the organ has no entry for ``modality``, the first available of ``FALLBACK_ORDER``
    is used and a warning is logged; the returned set records both modalities.
    """
    data = load_prompt_file(organ.name, folder)
    entries = data["entries"]
    chosen = modality if modality in entries else None
    if chosen is None:
        chosen = next((m for m in FALLBACK_ORDER if m in entries), None)
        if chosen is None:
            raise ConfigError(f"the prompt file of '{organ.name}' has no entries.")
        logger.warning(
            "no %s descriptions for %s; using its %s descriptions", modality, organ.name, chosen
        )
    entry = entries[chosen]
    descriptions = tuple(d for d in entry.get("descriptions", []) if str(d).strip())
    if not descriptions:
        raise ConfigError(f"the {chosen} entry of '{organ.name}' has no descriptions.")
    provenance = {k: v for k, v in entry.items() if k != "descriptions"}
    return PromptSet(organ.name, chosen, modality, descriptions, provenance)
