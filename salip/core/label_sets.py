"""Label values of vocabulary organs in public label sets: pure data, no torch import.

A mapping gives, per organ, the label values whose union is that organ in the dataset's
reference masks: TotalSegmentator splits the lungs into lobes, so "lung_left" is 10 + 11
there; MSD's liver task labels the tumour separately, so "liver" is 1 + 2 (the organ
includes its lesions). Mappings marked approximate cover a related but not identical
structure (AMOS's label 15 is "prostate/uterus"); the benchmark reports them as such.

Values are written out here, not read from the datasets at run time, and the tests check
them against TotalSegmentator's own name tables.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from salip.core.errors import OrganError, did_you_mean
from salip.core.organs import with_pairs
from salip.core.prompts import packaged_dir

__all__ = [
    "ALIASES",
    "AMOS",
    "BTCV",
    "LABEL_SETS",
    "MSD",
    "TOTALSEG",
    "TOTALSEG_MR",
    "get_label_sets",
    "label_values",
    "LabelSet",
    "parse_label_names",
    "totalseg_files",
]


@dataclass(frozen=True)
class LabelSet:
    """Organ -> label values of one dataset's reference masks.

    Attributes:
        name: salip's name of the label set (``--labels NAME``).
        title: the dataset and version it describes.
        modality: modality of the dataset's images.
        table: organ name -> label values whose union is the organ, as written out (pairs
            may be left to :attr:`labels`).
        approximate: organs whose labels cover a related but not identical structure, with
            the reason.
        source: where the label table comes from.
    """

    name: str
    title: str
    modality: str
    table: dict[str, tuple[int, ...]]
    approximate: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @functools.cached_property
    def labels(self) -> dict[str, tuple[int, ...]]:
        """``table`` with the built-in pair organs ("kidneys") added from their two sides
        (:func:`salip.core.organs.with_pairs`), values sorted. Made on first use: the pairs
        come from the packaged vocabulary, which is not read at import."""
        pairs = with_pairs(self.table, packaged_dir())
        return {o: tuple(sorted(v)) for o, v in pairs.items()}


_TOTALSEG_SOURCE = "TotalSegmentator v2 class map (wasserth/TotalSegmentator, map_to_binary.py)"

# TotalSegmentator "total" task, 117 classes. Lungs come as five lobes.
TOTALSEG = LabelSet(
    name="totalseg",
    title="TotalSegmentator v2, task 'total' (CT, 117 classes)",
    modality="ct",
    table={
        "spleen": (1,),
        "kidney_right": (2,),
        "kidney_left": (3,),
        "gallbladder": (4,),
        "liver": (5,),
        "stomach": (6,),
        "pancreas": (7,),
        "adrenal_gland_right": (8,),
        "adrenal_gland_left": (9,),
        "lung_left": (10, 11),
        "lung_right": (12, 13, 14),
        "esophagus": (15,),
        "small_bowel": (18,),
        "duodenum": (19,),
        "colon": (20,),
        "urinary_bladder": (21,),
        "prostate": (22,),
        "heart": (51,),
        "aorta": (52,),
        "inferior_vena_cava": (63,),
        "portal_vein_and_splenic_vein": (64,),
        "femoral_head_left": (75,),
        "femoral_head_right": (76,),
        "brain": (90,),
        "skull": (91,),
    },
    approximate={
        "femoral_head_left": "label is the whole proximal femur (femur_left), not the head only",
        "femoral_head_right": "label is the whole proximal femur (femur_right), not the head only",
        "femoral_heads": "labels are the whole proximal femurs, not the heads only",
    },
    source=_TOTALSEG_SOURCE,
)

#: One-sided organ -> TotalSegmentator "total" class names whose union is the organ; the
#: pairs are added by :func:`totalseg_files`.
_TOTALSEG_FILE_SIDES: dict[str, tuple[str, ...]] = {
    "spleen": ("spleen",),
    "kidney_right": ("kidney_right",),
    "kidney_left": ("kidney_left",),
    "gallbladder": ("gallbladder",),
    "liver": ("liver",),
    "stomach": ("stomach",),
    "pancreas": ("pancreas",),
    "adrenal_gland_right": ("adrenal_gland_right",),
    "adrenal_gland_left": ("adrenal_gland_left",),
    "lung_left": ("lung_upper_lobe_left", "lung_lower_lobe_left"),
    "lung_right": ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
    "esophagus": ("esophagus",),
    "small_bowel": ("small_bowel",),
    "duodenum": ("duodenum",),
    "colon": ("colon",),
    "urinary_bladder": ("urinary_bladder",),
    "prostate": ("prostate",),
    "heart": ("heart",),
    "aorta": ("aorta",),
    "inferior_vena_cava": ("inferior_vena_cava",),
    "portal_vein_and_splenic_vein": ("portal_vein_and_splenic_vein",),
    "femoral_head_left": ("femur_left",),
    "femoral_head_right": ("femur_right",),
    "brain": ("brain",),
    "skull": ("skull",),
}


@functools.cache
def totalseg_files() -> dict[str, tuple[str, ...]]:
    """Vocabulary organ -> TotalSegmentator "total" class names whose union is the organ:
    the file stems of a TotalSegmentator case's ``segmentations/`` folder. Same organs and
    same classes as :data:`TOTALSEG` (lungs from lobes; femoral heads approximated by the
    femurs). Pairs come from the built-in vocabulary, read on first use (not at import,
    and whatever user prompt set is active)."""
    return with_pairs(_TOTALSEG_FILE_SIDES, packaged_dir())


# TotalSegmentator "total_mr" task, 50 classes.
TOTALSEG_MR = LabelSet(
    name="totalseg_mr",
    title="TotalSegmentator v2, task 'total_mr' (MR, 50 classes)",
    modality="mr",
    table={
        "spleen": (1,),
        "kidney_right": (2,),
        "kidney_left": (3,),
        "gallbladder": (4,),
        "liver": (5,),
        "stomach": (6,),
        "pancreas": (7,),
        "adrenal_gland_right": (8,),
        "adrenal_gland_left": (9,),
        "lung_left": (10,),
        "lung_right": (11,),
        "esophagus": (12,),
        "small_bowel": (13,),
        "duodenum": (14,),
        "colon": (15,),
        "urinary_bladder": (16,),
        "prostate": (17,),
        "heart": (22,),
        "aorta": (23,),
        "inferior_vena_cava": (24,),
        "portal_vein_and_splenic_vein": (25,),
        "femoral_head_left": (36,),
        "femoral_head_right": (37,),
        "brain": (50,),
    },
    approximate=dict(TOTALSEG.approximate),
    source=_TOTALSEG_SOURCE,
)

# Multi-Atlas Labeling Beyond the Cranial Vault (Synapse), abdomen, 13 organs.
BTCV = LabelSet(
    name="btcv",
    title="BTCV / Synapse multi-organ abdominal CT (13 organs)",
    modality="ct",
    table={
        "spleen": (1,),
        "kidney_right": (2,),
        "kidney_left": (3,),
        "gallbladder": (4,),
        "esophagus": (5,),
        "liver": (6,),
        "stomach": (7,),
        "aorta": (8,),
        "inferior_vena_cava": (9,),
        "portal_vein_and_splenic_vein": (10,),
        "pancreas": (11,),
        "adrenal_gland_right": (12,),
        "adrenal_gland_left": (13,),
    },
    source="Synapse 'Multi-Atlas Labeling Beyond the Cranial Vault' challenge label table",
)

# AMOS 2022, 15 organs (same table for its CT and MR parts).
AMOS = LabelSet(
    name="amos",
    title="AMOS 2022 abdominal CT/MR (15 organs)",
    modality="ct",
    table={
        "spleen": (1,),
        "kidney_right": (2,),
        "kidney_left": (3,),
        "gallbladder": (4,),
        "esophagus": (5,),
        "liver": (6,),
        "stomach": (7,),
        "aorta": (8,),
        "inferior_vena_cava": (9,),
        "pancreas": (10,),
        "adrenal_gland_right": (11,),
        "adrenal_gland_left": (12,),
        "duodenum": (13,),
        "urinary_bladder": (14,),
        "prostate": (15,),
    },
    approximate={"prostate": "label 15 is 'prostate/uterus': the uterus in female patients"},
    source="AMOS 2022 dataset.json",
)

_MSD_SOURCE = "Medical Segmentation Decathlon dataset.json of the task"

# Decathlon tasks that carry an organ in the vocabulary. An organ's lesions are part of it.
MSD = (
    LabelSet(
        "msd_liver",
        "MSD Task03_Liver (CT; 1 liver, 2 cancer)",
        "ct",
        {"liver": (1, 2)},
        source=_MSD_SOURCE,
    ),
    LabelSet(
        "msd_prostate",
        "MSD Task05_Prostate (MR; 1 peripheral zone, 2 transition zone)",
        "mr",
        {"prostate": (1, 2)},
        source=_MSD_SOURCE,
    ),
    LabelSet(
        "msd_pancreas",
        "MSD Task07_Pancreas (CT; 1 pancreas, 2 tumour)",
        "ct",
        {"pancreas": (1, 2)},
        source=_MSD_SOURCE,
    ),
    LabelSet(
        "msd_hepatic_vessel",
        "MSD Task08_HepaticVessel (CT; 1 vessel, 2 tumour)",
        "ct",
        {"hepatic_vessel": (1,)},
        source=_MSD_SOURCE,
    ),
    LabelSet(
        "msd_spleen",
        "MSD Task09_Spleen (CT; 1 spleen)",
        "ct",
        {"spleen": (1,)},
        source=_MSD_SOURCE,
    ),
)

LABEL_SETS: dict[str, LabelSet] = {s.name: s for s in (TOTALSEG, TOTALSEG_MR, BTCV, AMOS, *MSD)}

#: Other accepted names; "msd" selects every Decathlon set.
ALIASES: dict[str, tuple[str, ...]] = {
    "total": ("totalseg",),
    "totalsegmentator": ("totalseg",),
    "total_mr": ("totalseg_mr",),
    "synapse": ("btcv",),
    "msd": tuple(s.name for s in MSD),
}


def get_label_sets(name: str) -> list[LabelSet]:
    """Label sets called ``name`` (a set's name or an alias such as ``msd``).

    Raises:
        OrganError: for an unknown name; the message lists the valid names.
    """
    key = name.strip().lower().replace("-", "_")
    if key in LABEL_SETS:
        return [LABEL_SETS[key]]
    if key in ALIASES:
        return [LABEL_SETS[n] for n in ALIASES[key]]
    valid = [*LABEL_SETS, *ALIASES]
    hint = did_you_mean(key, valid, n=3)
    raise OrganError(f"unknown label set '{name}'.{hint} Valid: {', '.join(valid)}.")


def label_values(label_set: str | LabelSet, organ: str) -> tuple[int, ...]:
    """Label values of ``organ`` in ``label_set``.

    Raises:
        OrganError: the set has no label for the organ (the message lists those it has).
    """
    ls = label_set if isinstance(label_set, LabelSet) else get_label_sets(label_set)[0]
    if organ not in ls.labels:
        raise OrganError(
            f"label set '{ls.name}' has no label for '{organ}'; it maps: {', '.join(ls.labels)}."
        )
    return ls.labels[organ]


def parse_label_names(table: Any) -> dict[int, str]:
    """Label value -> class name from a label-name table, as datasets ship them: value ->
    name (``{"1": "spleen"}``, TotalSegmentator, or with int keys), name -> value
    (``{"spleen": 1}``), or an MSD / nnU-Net ``dataset.json`` (its ``labels``). Value 0
    (background) is dropped; names are stripped.

    Raises:
        ValueError: not a table, an entry that is neither value -> name nor name -> value,
            or an empty name; the message says which and what to write.
    """
    if isinstance(table, Mapping) and isinstance(table.get("labels"), Mapping):
        table = table["labels"]  # MSD / nnU-Net dataset.json
    if not isinstance(table, Mapping):
        raise ValueError('label names must be a table like {"1": "spleen", "2": "kidney_right"}')
    names: dict[int, str] = {}
    for key, value in table.items():
        pair = _value_name(key, value)
        if pair is None:
            raise ValueError(
                f"entry {key!r}: {value!r} is neither value -> name nor name -> value; use a "
                'table like {"1": "spleen", "2": "kidney_right"}'
            )
        number, name = pair
        if not name.strip():
            raise ValueError(f"label {number} has name {name!r}; give a non-empty class name")
        if number > 0:
            names[number] = name.strip()
    return names


def _value_name(key: Any, value: Any) -> tuple[int, str] | None:
    """(value, name) of one entry of a label-name table, whichever way round it is."""
    if isinstance(value, str):
        if isinstance(key, int) and not isinstance(key, bool):
            return key, value
        if isinstance(key, str) and re.fullmatch(r"\d+", key.strip()):
            return int(key), value
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(key, str):
        return value, key
    return None
