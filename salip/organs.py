"""The organ vocabulary: pure data, no torch import.

Each :class:`Organ` carries what the cascade needs to segment it without labels: its
canonical name and synonyms, how many crops to keep (``top_k``), the default CT window, and
the modalities it is defined for. The registry is a plain dict so that other modules and
later label-set mappings can read it without importing any model code.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from salip.errors import OrganError


@dataclass(frozen=True)
class Organ:
    """One segmentation target.

    Attributes:
        name: canonical snake_case name, used in file names and label tables.
        synonyms: other accepted spellings (matched case- and separator-insensitively).
        top_k: how many CLIP-ranked crops become box prompts per slice (2 for paired
            structures shown as one target, such as "lungs").
        window: default CT window preset (a key of ``salip.slicing.WINDOWS``).
        modalities: modalities the organ is defined for ("ct", "mr", "xray", "us").
        laterality: "left", "right" or "none", in patient coordinates.
    """

    name: str
    synonyms: tuple[str, ...] = ()
    top_k: int = 1
    window: str = "abdomen"
    modalities: tuple[str, ...] = ("ct", "mr")
    laterality: str = "none"


_ORGAN_LIST: tuple[Organ, ...] = (
    Organ("liver", ("hepar",), window="liver"),
    Organ("spleen", ("lien",)),
    Organ("kidney_left", ("left kidney", "l kidney"), laterality="left"),
    Organ("kidney_right", ("right kidney", "r kidney"), laterality="right"),
    Organ("pancreas"),
    Organ("stomach"),
    Organ("gallbladder", ("gall bladder",)),
    Organ("aorta", ("abdominal aorta",)),
    Organ(
        "inferior_vena_cava",
        ("postcava", "ivc", "vena cava inferior"),
    ),
    Organ("lungs", ("lung", "both lungs"), top_k=2, window="lung", modalities=("ct", "xray")),
    Organ(
        "lung_left",
        ("left lung",),
        window="lung",
        modalities=("ct", "xray"),
        laterality="left",
    ),
    Organ(
        "lung_right",
        ("right lung",),
        window="lung",
        modalities=("ct", "xray"),
        laterality="right",
    ),
    Organ("heart", window="abdomen", modalities=("ct", "mr", "xray")),
    Organ("urinary_bladder", ("bladder",)),
    Organ("brain", window="brain", modalities=("mr", "ct")),
    Organ("fetal_head", ("fetal skull", "foetal head"), modalities=("us",)),
)

ORGANS: dict[str, Organ] = {organ.name: organ for organ in _ORGAN_LIST}


def _key(name: str) -> str:
    return re.sub(r"[\s\-_]+", "_", name.strip().lower())


_LOOKUP: dict[str, str] = {}
for _organ in _ORGAN_LIST:
    _LOOKUP[_key(_organ.name)] = _organ.name
    for _syn in _organ.synonyms:
        _LOOKUP[_key(_syn)] = _organ.name


def get_organ(name: str) -> Organ:
    """Return the organ called ``name`` (canonical name or synonym).

    Raises:
        OrganError: for an unknown name; the message lists the closest known names.
    """
    key = _key(name)
    if key in _LOOKUP:
        return ORGANS[_LOOKUP[key]]
    close = difflib.get_close_matches(key, list(_LOOKUP), n=4, cutoff=0.5)
    suggestions = list(dict.fromkeys(_LOOKUP[c] for c in close))  # best match first
    hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
    raise OrganError(f"unknown organ '{name}'.{hint} Known organs: {', '.join(sorted(ORGANS))}.")


def parse_organs(values: str | Iterable[str]) -> list[Organ]:
    """Parse organ names given as repeated values and/or comma-separated lists.

    Duplicates are dropped, order is kept (it decides the label values: 1, 2, ...).
    """
    if isinstance(values, str):
        values = [values]
    names: list[str] = []
    for value in values:
        names.extend(part for part in value.split(",") if part.strip())
    if not names:
        raise OrganError("no organ given: name at least one, e.g. --organ liver.")
    organs: list[Organ] = []
    for name in names:
        organ = get_organ(name)
        if organ not in organs:
            organs.append(organ)
    return organs


def organ_names(organs: Sequence[Organ]) -> list[str]:
    """Canonical names of ``organs``, in order."""
    return [organ.name for organ in organs]
