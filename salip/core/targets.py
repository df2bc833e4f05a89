"""Segmentation targets as data: the :class:`Organ` record and its definition's rules.

A target is defined in its prompt file (``prompts/<name>.json``, beside its descriptions)
under ``"definition"``::

    "definition": {
      "synonyms": ["thyroid", "thyroid lobe"],     # other accepted names (optional)
      "modalities": ["ct", "mr", "us"],            # where it is imaged and described
      "regions": ["head"],                         # body regions whose slices show it
      "laterality": "none",                        # "none", "left" or "right" (patient's)
      "parts": ["x_left", "x_right"],              # a both-sides target's members
      "top_k": 1,                                  # crops kept per slice (2 for a pair)
      "window": "abdomen",                         # CT preset, or "WIDTH,LEVEL"
      "source": "hand-written" | "generated", "date": "...", ...   # provenance
    }

:func:`organ_from_definition` checks a definition against the allowed values and makes
the :class:`Organ`; the vocabulary of a prompt set is assembled in
:mod:`salip.core.organs`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from salip.core.errors import ConfigError, OrganError
from salip.core.windows import WINDOWS, parse_window

__all__ = [
    "DEFINITION_FIELDS",
    "LATERALITIES",
    "MAX_NAME",
    "MODALITIES",
    "PROVENANCE_FIELDS",
    "REGIONS",
    "REQUIRED_FIELDS",
    "definition_fields",
    "name_key",
    "Organ",
    "organ_from_definition",
    "target_name",
]

MODALITIES = ("ct", "mr", "xray", "us")
REGIONS = ("head", "thorax", "abdomen", "pelvis", "fetal")
LATERALITIES = ("none", "left", "right")

#: Fields of a definition that describe the target (the rest is provenance).
DEFINITION_FIELDS = ("synonyms", "modalities", "regions", "laterality", "parts", "top_k", "window")
#: Fields every definition must give.
REQUIRED_FIELDS = ("modalities", "regions", "laterality", "window")
#: Provenance keys a definition may carry.
PROVENANCE_FIELDS = (
    "source",
    "date",
    "author",
    "generator",
    "served_model",
    "endpoint",
    "template_version",
    "template_sha256",
    "sampling",
    "overrides",
)
#: The longest target name: DICOM SEG's SegmentLabel (a LO value) holds 64 characters.
MAX_NAME = 64


@dataclass(frozen=True)
class Organ:
    """One segmentation target.

    Attributes:
        name: canonical snake_case name, used in file names and label tables.
        synonyms: other accepted spellings (matched case- and separator-insensitively).
        top_k: how many CLIP-ranked crops become box prompts per slice (2 for a pair shown
            as one target, such as "lungs").
        window: default CT window: a preset of ``salip.core.windows.WINDOWS`` or
            "WIDTH,LEVEL" in HU.
        modalities: modalities the organ is imaged and described in (``MODALITIES``).
        regions: body regions whose slices can show it (``REGIONS``); organs sharing a
            region compete with each other in contrast scoring.
        laterality: "left", "right" or "none", in patient coordinates.
        parts: for a pair target, its one-sided members (e.g. kidney_left, kidney_right).
    """

    name: str
    synonyms: tuple[str, ...] = ()
    top_k: int = 1
    window: str = "abdomen"
    modalities: tuple[str, ...] = ("ct", "mr")
    regions: tuple[str, ...] = ("abdomen",)
    laterality: str = "none"
    parts: tuple[str, ...] = ()


def name_key(text: str) -> str:
    """``text`` as salip compares and files target names: Unicode NFKC, case-folded, each
    run of characters other than letters and digits (of any script) as one "_"
    ("Thyroid gland" -> "thyroid_gland", "Schilddrüse" -> "schilddrüse")."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"[\W_]+", "_", folded).strip("_")


def _valid_name(name: str) -> bool:
    return bool(name) and name[0].isalpha() and name == name_key(name) and len(name) <= MAX_NAME


def target_name(text: str) -> str:
    """The file name of a target called ``text`` (:func:`name_key`: "Thyroid gland" ->
    "thyroid_gland", "甲状腺" -> "甲状腺", "名前 (left)" -> "名前_left").

    Raises:
        OrganError: a name that does not start with a letter, or is longer than
            :data:`MAX_NAME` characters.
    """
    name = name_key(text)
    if not name or not name[0].isalpha():
        raise OrganError(
            f"'{text}' cannot name a target; start with a letter (of any script), then "
            "letters, digits and spaces."
        )
    if len(name) > MAX_NAME:
        raise OrganError(
            f"'{text[:40]}...' is {len(name)} characters as a target name; use at most "
            f"{MAX_NAME} (a DICOM SEG segment label holds 64)."
        )
    return name


def _string_list(value: Any, field: str, allowed: tuple[str, ...] | None) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{field} must be a list of strings")
    items = tuple(dict.fromkeys(v.strip().lower() if allowed else v.strip() for v in value))
    if allowed is not None:
        bad = [v for v in items if v not in allowed]
        if bad:
            raise ValueError(f"{field}: {', '.join(bad)} not allowed; use {', '.join(allowed)}")
        if not items:
            raise ValueError(f"{field} must name at least one of {', '.join(allowed)}")
    return tuple(v for v in items if v)


def _window(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        value = f"{value[0]},{value[1]}"
    if not isinstance(value, str):
        raise ValueError(f"window must be a preset ({', '.join(WINDOWS)}) or WIDTH,LEVEL")
    try:
        parse_window(value)
    except ConfigError:
        raise ValueError(
            f"window {value!r} is not a preset ({', '.join(WINDOWS)}) or WIDTH,LEVEL with a "
            "positive width"
        ) from None
    return value.strip().lower()


def _checked_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The definition's target fields, checked; ValueError naming the field."""
    missing = [f for f in REQUIRED_FIELDS if f not in data or data[f] in (None, "", [])]
    if missing:
        raise ValueError(f"{missing[0]} is missing")
    unknown = sorted(set(data) - set(DEFINITION_FIELDS) - set(PROVENANCE_FIELDS))
    if unknown:
        raise ValueError(f"{unknown[0]} is not a definition field")
    laterality = str(data["laterality"]).strip().lower()
    if laterality not in LATERALITIES:
        raise ValueError(
            f"laterality {data['laterality']!r} not allowed; use {', '.join(LATERALITIES)}"
        )
    parts = tuple(target_name(p) for p in _string_list(data.get("parts", []), "parts", None))
    if parts and (len(parts) != 2 or laterality != "none"):
        raise ValueError("parts must name the two one-sided members of a both-sides target")
    top_k = data.get("top_k", 2 if parts else 1)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 10:
        raise ValueError("top_k must be a whole number from 1 to 10")
    return {
        "synonyms": _string_list(data.get("synonyms", []), "synonyms", None),
        "modalities": _string_list(data["modalities"], "modalities", MODALITIES),
        "regions": _string_list(data["regions"], "regions", REGIONS),
        "laterality": laterality,
        "parts": parts,
        "top_k": top_k,
        "window": _window(data["window"]),
    }


def organ_from_definition(name: str, data: Any, where: str) -> Organ:
    """The :class:`Organ` a definition describes.

    Args:
        name: the target's name (its file's stem).
        data: the parsed ``"definition"`` object.
        where: the file, for messages.

    Raises:
        OrganError: one line naming ``where`` and the field that is wrong.
    """
    if not _valid_name(name):
        raise OrganError(
            f"{where}: target name {name!r} must be lower case letters, digits and _, "
            f"starting with a letter, at most {MAX_NAME} characters (e.g. thyroid_gland)."
        )
    if not isinstance(data, Mapping):
        raise OrganError(f"{where}: definition must be a JSON object.")
    try:
        fields = _checked_fields(data)
    except (ValueError, OrganError) as exc:
        raise OrganError(f"{where}: definition.{exc}.") from None
    return Organ(name, **fields)


def definition_fields(organ: Organ) -> dict[str, Any]:
    """The definition fields of ``organ`` as JSON-ready data (the inverse of
    :func:`organ_from_definition`, provenance aside)."""
    fields: dict[str, Any] = {
        "synonyms": list(organ.synonyms),
        "modalities": list(organ.modalities),
        "regions": list(organ.regions),
        "laterality": organ.laterality,
        "top_k": organ.top_k,
        "window": organ.window,
    }
    if organ.parts:
        fields["parts"] = list(organ.parts)
    return fields
