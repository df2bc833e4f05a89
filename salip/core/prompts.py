"""The description-prompt cache: visual descriptions of each organ, per modality.

Cache format (``prompts/<organ>.json``, shipped inside the package as ``salip.prompts_data``)::

    {
      "format_version": 1,
      "organ": "liver",
      "entries": {
        "ct": {
          "descriptions": ["...", ...],
          "source": "hand-written" | "generated",
          "date": "YYYY-MM-DD",
          "author": "...",                       # hand-written entries
          "generator": null | "model name",      # generated entries: the model asked,
          "served_model": "...",                 #   the model that answered,
          "endpoint": "...",                     #   the API base URL,
          "template_version": null | "...",      #   the request templates,
          "template_sha256": null | "...",
          "sampling": null | {"temperature": ..., ...}
        }
      }
    }

``background.json`` has the same format and holds descriptions of what is *not* an organ
(fat, muscle, bone, air, artefacts); contrast scoring uses it as a competing class.

A target's file also holds its definition (``"definition"``, see :mod:`salip.core.targets`).

A user prompt set (an explicit folder, ``--prompts-dir``, else ``$SALIP_PROMPTS_DIR``) lies
over the packaged one: a file there adds a target or replaces the packaged file of the same
name, and every other file comes from the package (:func:`prompt_path`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from salip.core.errors import ConfigError, OrganError
from salip.core.targets import MODALITIES, Organ, organ_from_definition

__all__ = [
    "BACKGROUND",
    "FALLBACK_ORDER",
    "FORMAT_VERSION",
    "MAX_DESCRIPTION_CHARS",
    "SOURCES",
    "description_problems",
    "descriptions_sha256",
    "list_entries",
    "load_prompt_file",
    "load_prompts",
    "packaged_dir",
    "prompt_path",
    "prompts_dir",
    "PromptSet",
    "read_prompt_file",
    "user_dir",
    "validate_prompt_data",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: Modalities tried, in order, when an organ has no entry for the requested one.
FALLBACK_ORDER = MODALITIES
#: Name of the prompt file of the background class.
BACKGROUND = "background"
SOURCES = ("hand-written", "generated")
#: Longest description accepted. CLIP reads at most 77 tokens (about 300 characters).
MAX_DESCRIPTION_CHARS = 300


@dataclass(frozen=True)
class PromptSet:
    """The descriptions used to score one organ (or the background), with their origin."""

    organ: str
    modality: str
    requested_modality: str
    descriptions: tuple[str, ...]
    provenance: dict[str, Any]

    def sha256(self) -> str:
        """Hash of the descriptions, in order: the prompt set's identity for caches."""
        return descriptions_sha256(self.descriptions)


def descriptions_sha256(descriptions: tuple[str, ...] | list[str]) -> str:
    """SHA-256 of a list of descriptions (JSON-encoded, order kept)."""
    return hashlib.sha256(json.dumps(list(descriptions)).encode("utf-8")).hexdigest()


def packaged_dir() -> Path:
    """The prompt set shipped with salip."""
    return Path(str(resources.files("salip.prompts_data")))


def prompts_dir(folder: str | Path | None = None) -> Path:
    """Folder of the prompt cache: ``folder``, else ``$SALIP_PROMPTS_DIR``, else the packaged copy."""
    if folder:
        return Path(folder)
    env = os.environ.get("SALIP_PROMPTS_DIR")
    if env:
        return Path(env)
    return packaged_dir()


def user_dir(folder: str | Path | None = None) -> Path | None:
    """The user prompt set lying over the packaged one (:func:`prompts_dir`), or None."""
    chosen = prompts_dir(folder)
    packaged = packaged_dir()
    if chosen.resolve() == packaged.resolve():
        return None
    return chosen


def prompt_path(name: str, folder: str | Path | None = None) -> Path:
    """The file of ``name``'s prompts: the user set's when it has one, else the packaged
    one (which may not exist)."""
    user = user_dir(folder)
    if user is not None and (user / f"{name}.json").is_file():
        return user / f"{name}.json"
    return packaged_dir() / f"{name}.json"


def validate_prompt_data(data: Any, name: str | None = None) -> list[str]:
    """Problems with a parsed prompt file (empty list: valid).

    Args:
        data: the parsed JSON.
        name: the file's organ name (its stem), checked against ``data["organ"]``.
    """
    if not isinstance(data, dict):
        return ["the file is not a JSON object"]
    problems = []
    if data.get("format_version") != FORMAT_VERSION:
        problems.append(f"format_version is {data.get('format_version')!r}, not {FORMAT_VERSION}")
    if name is not None and data.get("organ") != name:
        problems.append(f"organ is {data.get('organ')!r} but the file is named {name}.json")
    if "definition" in data:
        try:
            organ_from_definition(str(data.get("organ")), data["definition"], "the file")
        except OrganError as exc:  # reported as one of the problems
            problems.append(str(exc).removeprefix("the file: ").rstrip("."))
    entries = data.get("entries")
    if not isinstance(entries, dict) or not entries:
        return [*problems, "entries must be a non-empty object keyed by modality"]
    for modality, entry in entries.items():
        where = f"entry {modality!r}"
        if modality not in MODALITIES:
            problems.append(f"{where}: modality must be one of {', '.join(MODALITIES)}")
        if not isinstance(entry, dict):
            problems.append(f"{where}: not an object")
            continue
        descriptions = entry.get("descriptions")
        if not isinstance(descriptions, list) or not descriptions:
            problems.append(f"{where}: descriptions must be a non-empty list")
        else:
            problems += [
                f"{where}: {p}" for p in description_problems(descriptions, MAX_DESCRIPTION_CHARS)
            ]
        if entry.get("source") not in SOURCES:
            problems.append(f"{where}: source must be one of {', '.join(SOURCES)}")
        if not entry.get("date"):
            problems.append(f"{where}: date is missing")
        if entry.get("source") == "generated":
            for key in ("generator", "template_version", "template_sha256", "sampling"):
                if not entry.get(key):
                    problems.append(f"{where}: a generated entry needs {key}")
        if entry.get("source") == "hand-written" and entry.get("generator"):
            problems.append(f"{where}: a hand-written entry cannot name a generator")
    return problems


def description_problems(descriptions: list[Any], max_chars: int) -> list[str]:
    """Problems with a list of descriptions: non-strings, empty, too long, duplicates."""
    problems = []
    seen: set[str] = set()
    for i, text in enumerate(descriptions):
        if not isinstance(text, str) or not text.strip():
            problems.append(f"description {i + 1} is empty or not a string")
            continue
        if len(text) > max_chars:
            problems.append(f"description {i + 1} has {len(text)} characters (max {max_chars})")
        key = " ".join(text.lower().split())
        if key in seen:
            problems.append(f"description {i + 1} repeats an earlier one")
        seen.add(key)
    return problems


def read_prompt_file(path: Path) -> dict[str, Any]:
    """Parse and validate one prompt file; ConfigError listing the problems."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable prompt file ({exc}).") from exc
    problems = validate_prompt_data(data, path.stem)
    if problems:
        raise ConfigError(
            f"{path}: not a valid salip prompt file (format {FORMAT_VERSION}): "
            + "; ".join(problems)
            + "."
        )
    return data


def load_prompt_file(organ: str, folder: str | Path | None = None) -> dict[str, Any]:
    """Parsed ``<organ>.json`` of the prompt set (:func:`prompt_path`); ConfigError if
    missing or malformed."""
    path = prompt_path(organ, folder)
    if not path.is_file():
        where = prompts_dir(folder)
        raise ConfigError(
            f"no description prompts for '{organ}' in {where}; write them with "
            f"`salip prompts generate --organ {organ} --prompts-dir {where}`."
        )
    return read_prompt_file(path)


def load_prompts(
    organ: Organ | str,
    modality: str,
    folder: str | Path | None = None,
    *,
    fallback_level: int = logging.WARNING,
) -> PromptSet:
    """Descriptions of ``organ`` (an Organ, or "background") for ``modality``.

    If there is no entry for ``modality``, the first available of ``FALLBACK_ORDER`` is
    used and logged at ``fallback_level``; the returned set records both modalities.
    """
    name = organ if isinstance(organ, str) else organ.name
    entries = load_prompt_file(name, folder)["entries"]
    chosen = modality if modality in entries else None
    if chosen is None:
        chosen = next(m for m in FALLBACK_ORDER if m in entries)
        logger.log(
            fallback_level, "no %s descriptions for %s; using its %s ones", modality, name, chosen
        )
    entry = entries[chosen]
    provenance = {k: v for k, v in entry.items() if k != "descriptions"}
    return PromptSet(name, chosen, modality, tuple(entry["descriptions"]), provenance)


def list_entries(folder: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per (file, modality) of a prompt folder, sorted by name and modality.

    Rows: ``organ``, ``modality``, ``count``, ``source``, ``origin`` (author or generator),
    ``date``, ``path``. Invalid files are reported as rows with ``error`` set.
    """
    names = {p.stem for p in packaged_dir().glob("*.json")}
    user = user_dir(folder)
    if user is not None:
        names |= {p.stem for p in user.glob("*.json")}
    rows: list[dict[str, Any]] = []
    for path in (prompt_path(name, folder) for name in sorted(names)):
        try:
            data = read_prompt_file(path)
        except ConfigError as exc:
            rows.append({"organ": path.stem, "path": str(path), "error": str(exc)})
            continue
        for modality in sorted(data["entries"], key=MODALITIES.index):
            entry = data["entries"][modality]
            rows.append(
                {
                    "organ": path.stem,
                    "modality": modality,
                    "count": len(entry["descriptions"]),
                    "source": entry["source"],
                    "origin": entry.get("generator") or entry.get("author") or "-",
                    "date": entry["date"],
                    "path": str(path),
                }
            )
    return rows
