"""The organ vocabulary: pure data, no torch import.

Each :class:`Organ` carries what the cascade needs to segment it without labels: its
canonical name and synonyms, how many crops to keep (``top_k``), the default CT window, the
modalities and body regions it is found in, its laterality and, for paired organs, how the
pair relates to its sides ("kidneys" = "kidney_left" + "kidney_right"). Label values in the
public label sets live in :mod:`salip.core.label_sets`.

Laterality is always the patient's: "kidney_left" is the patient's left kidney, which the
radiological display convention shows on the image right.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from salip.core.errors import OrganError, did_you_mean

MODALITIES = ("ct", "mr", "xray", "us")
REGIONS = ("head", "thorax", "abdomen", "pelvis", "fetal")


@dataclass(frozen=True)
class Organ:
    """One segmentation target.

    Attributes:
        name: canonical snake_case name, used in file names and label tables.
        synonyms: other accepted spellings (matched case- and separator-insensitively).
        top_k: how many CLIP-ranked crops become box prompts per slice (2 for a pair shown
            as one target, such as "lungs").
        window: default CT window preset (a key of ``salip.io.slicing.WINDOWS``).
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


_ABDO_US = ("ct", "mr", "us")
_THORAX = ("thorax",)
_UPPER = ("thorax", "abdomen")
_LOWER = ("abdomen", "pelvis")
_PELVIS = ("pelvis",)
_HEAD = ("head",)


def _pair(
    base: str,
    plural: str,
    synonyms: tuple[str, ...],
    left_synonyms: tuple[str, ...],
    right_synonyms: tuple[str, ...],
    both_modalities: tuple[str, ...] | None = None,
    **shared: object,
) -> tuple[Organ, Organ, Organ]:
    """A paired organ: the both-sides target (top-k 2) and its left and right members."""
    left, right = f"{base}_left", f"{base}_right"
    both = dict(shared, modalities=both_modalities) if both_modalities else shared
    return (
        Organ(plural, synonyms, top_k=2, parts=(left, right), **both),  # type: ignore[arg-type]
        Organ(left, left_synonyms, laterality="left", **shared),  # type: ignore[arg-type]
        Organ(right, right_synonyms, laterality="right", **shared),  # type: ignore[arg-type]
    )


_ORGAN_LIST: tuple[Organ, ...] = (
    # The 25 organs of the CLIP-Driven Universal Model, under TotalSegmentator-style names.
    Organ("spleen", ("lien",), modalities=_ABDO_US),
    *_pair(
        "kidney",
        "kidneys",
        ("both kidneys",),
        ("left kidney", "l kidney"),
        ("right kidney", "r kidney"),
        modalities=_ABDO_US,
    ),
    Organ("gallbladder", ("gall bladder",), modalities=_ABDO_US),
    Organ("esophagus", ("oesophagus",), regions=_UPPER),
    Organ("liver", ("hepar",), window="liver", modalities=_ABDO_US, regions=_UPPER),
    Organ("stomach", ("gaster",)),
    Organ("aorta", ("abdominal aorta", "thoracic aorta"), regions=_UPPER),
    Organ("inferior_vena_cava", ("postcava", "ivc", "vena cava inferior"), regions=_UPPER),
    Organ(
        "portal_vein_and_splenic_vein",
        ("portal vein", "splenic vein", "portal and splenic vein", "portal splenic vein"),
    ),
    Organ("pancreas"),
    *_pair(
        "adrenal_gland",
        "adrenal_glands",
        ("adrenals", "both adrenal glands", "suprarenal glands"),
        ("left adrenal gland", "left adrenal"),
        ("right adrenal gland", "right adrenal"),
    ),
    Organ("duodenum"),
    Organ("hepatic_vessel", ("hepatic vessels", "liver vessels"), window="liver"),
    *_pair(
        "lung",
        "lungs",
        ("lung", "both lungs"),
        ("left lung",),
        ("right lung",),
        window="lung",
        modalities=("ct", "xray"),
        regions=_UPPER,
    ),
    Organ("colon", ("large bowel", "large intestine"), regions=_LOWER),
    Organ("small_bowel", ("intestine", "small intestine", "bowel"), regions=_LOWER),
    Organ("rectum", regions=_PELVIS),
    Organ("urinary_bladder", ("bladder",), modalities=_ABDO_US, regions=_PELVIS),
    Organ("prostate", regions=_PELVIS),
    *_pair(
        "femoral_head",
        "femoral_heads",
        ("heads of femur", "both femoral heads"),
        ("left femoral head", "left head of femur"),
        ("right femoral head", "right head of femur"),
        both_modalities=("ct", "mr", "xray"),  # both heads show on pelvis radiographs
        window="bone",
        regions=_PELVIS,
    ),
    Organ("celiac_trunk", ("celiac truck", "coeliac trunk", "celiac artery"), modalities=("ct",)),
    # Beyond the Universal Model's list.
    Organ("heart", window="mediastinum", modalities=("ct", "mr", "xray"), regions=_THORAX),
    Organ("brain", window="brain", modalities=("mr", "ct"), regions=_HEAD),
    Organ("skull", ("cranium",), window="bone", modalities=("ct", "xray"), regions=_HEAD),
    Organ(
        "fetal_head",
        ("fetal skull", "foetal head"),
        modalities=("us", "mr", "ct"),  # CT: seen when a pregnant patient is scanned
        regions=("fetal",),
    ),
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
    hint = did_you_mean(key, _LOOKUP, n=4, show=_LOOKUP.__getitem__)  # synonyms -> names
    raise OrganError(
        f"unknown organ '{name}'.{hint} `salip organs` lists all {len(ORGANS)} known organs."
    )


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


_T = TypeVar("_T")


def with_pairs(members: Mapping[str, tuple[_T, ...]]) -> dict[str, tuple[_T, ...]]:
    """``members`` (organ -> label values, class names, ...) plus every pair organ it lacks
    whose two sides it has, as the union of the sides' items (left's first, no repeats).

    One rule for every table that lists organs by their parts: a pair is its two sides.
    """
    out = dict(members)
    for organ in ORGANS.values():
        if organ.parts and organ.name not in out and all(p in out for p in organ.parts):
            out[organ.name] = tuple(dict.fromkeys(v for p in organ.parts for v in out[p]))
    return out


def pair_of(organ: Organ) -> Organ | None:
    """The both-sides target ``organ`` is a member of (kidney_left -> kidneys), or None."""
    return next((o for o in ORGANS.values() if organ.name in o.parts), None)


def family(organ: Organ) -> set[str]:
    """Names of ``organ``, its pair, the pair's members and its own parts.

    These never compete with each other in contrast scoring: CLIP cannot tell a left kidney
    from a right one, and "kidneys" contains both; sides are told apart by laterality.
    """
    names = {organ.name, *organ.parts}
    pair = pair_of(organ)
    if pair is not None:
        names |= {pair.name, *pair.parts}
    return names


def competitors(organ: Organ, modality: str) -> list[Organ]:
    """Vocabulary organs that plausibly appear next to ``organ`` in ``modality`` images.

    They share a body region with ``organ``, are defined for ``modality`` and are not of its
    family (:func:`family`). Order follows the vocabulary, so results are reproducible.
    """
    own = family(organ)
    regions = set(organ.regions)
    return [
        other
        for other in ORGANS.values()
        if other.name not in own
        and modality in other.modalities
        and regions.intersection(other.regions)
        # A pair competes through its one-sided members, which describe a single organ
        # as a single proposal shows it.
        and not other.parts
    ]
