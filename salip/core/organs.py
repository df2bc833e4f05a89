"""The target vocabulary of a prompt set: built-in targets plus a user set's, as data.

Every target is defined by its prompt file (see :mod:`salip.core.targets`); the built-in
ones ship in the packaged prompt set, in the order of its ``vocabulary.txt``. A user set
(``--prompts-dir``, ``$SALIP_PROMPTS_DIR``) can add targets, and override built-in ones (a
logged notice says so). :func:`vocabulary` assembles and caches the set; the functions
below take the set's ``folder`` (None: ``$SALIP_PROMPTS_DIR``, else the packaged set).

Free text resolves case- and separator-insensitively, through synonyms, with articles and
common qualifiers dropped, and with a side given before, after or in brackets ("left
kidney", "kidney (left)"). Label values of public label sets live in
:mod:`salip.core.label_sets`.

Laterality is always the patient's: "kidney_left" is the patient's left kidney, which the
radiological display convention shows on the image right.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from salip.core.errors import ConfigError, OrganError, did_you_mean
from salip.core.prompts import (
    BACKGROUND,
    PromptSet,
    load_prompts,
    packaged_dir,
    prompts_dir,
    read_prompt_file,
    user_dir,
)
from salip.core.targets import (  # noqa: F401 - MODALITIES, REGIONS re-exported
    DEFINITION_FIELDS,
    MODALITIES,
    REGIONS,
    Organ,
    name_key,
    organ_from_definition,
)

__all__ = [
    "ORGANS",
    "VOCABULARY_FILE",
    "competitors",
    "family",
    "get_organ",
    "load_competitors",
    "names_only_a_side",
    "pair_of",
    "parse_organs",
    "Vocabulary",
    "vocabulary",
    "with_pairs",
]

logger = logging.getLogger(__name__)

#: The packaged set's list of built-in targets, in vocabulary order.
VOCABULARY_FILE = "vocabulary.txt"
#: Words dropped from free text before it is looked up.
_DROPPED = {"the", "a", "an", "whole", "entire", "structure", "of"}
_SIDES = ("left", "right")


def names_only_a_side(name: str) -> bool:
    """Whether a target name is nothing but side and filler words ("left", "the_right"),
    which free text could never tell from a side of another target."""
    words = [w for w in name.split("_") if w and w not in _DROPPED]
    return all(w in _SIDES for w in words)


@dataclass(frozen=True)
class Vocabulary:
    """The targets of one prompt set.

    Attributes:
        organs: name -> target, built-in ones first in vocabulary order, then the user's.
        sources: name -> "built-in", or the user prompt file defining it.
        provenance: name -> the definition's provenance (source, date, author or
            generator, ...).
        overridden: built-in targets the user set redefines.
    """

    organs: dict[str, Organ]
    sources: dict[str, str]
    provenance: dict[str, dict[str, Any]]
    overridden: tuple[str, ...] = ()
    lookup: dict[str, str] = field(default_factory=dict, repr=False)

    def get(self, text: str) -> Organ:
        """The target ``text`` names (see the module docstring).

        Raises:
            OrganError: an unknown term, with the closest targets and how to create one.
        """
        name = self.resolve(text)
        if name is not None:
            return self.organs[name]
        key = _key(text)
        hint = did_you_mean(key, self.lookup, n=4, show=self.lookup.__getitem__)
        raise OrganError(
            f"unknown organ '{text}'.{hint} `salip organs` lists the {len(self.organs)} "
            f'known targets; `salip prompts generate --organ "{text.strip()}" --new` '
            "creates a new one."
        )

    def resolve(self, text: str) -> str | None:
        """The name of the target ``text`` names, or None."""
        key = _key(text)
        words = [w for w in key.split("_") if w and w not in _DROPPED]
        side = next((w for w in words if w in _SIDES), None)
        base = [w for w in words if w not in _SIDES]
        candidates = ["_".join(words), key]
        if side is not None and base:
            stem = "_".join(base)
            candidates += [f"{side}_{stem}", f"{stem}_{side}", f"{stem.removesuffix('s')}_{side}"]
        for candidate in candidates:
            for form in (candidate, f"{candidate}s", candidate.removesuffix("s")):
                if form in self.lookup:
                    return self.lookup[form]
        return None


def _key(name: str) -> str:
    return name_key(name)


def _builtin_names() -> list[str]:
    text = (packaged_dir() / VOCABULARY_FILE).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _definition(path: Path) -> tuple[Organ | None, dict[str, Any]]:
    """(target or None when the file defines none, provenance) of one prompt file."""
    data = read_prompt_file(path)  # validates the definition too: file and field named
    definition = data.get("definition")
    if definition is None:
        return None, {}
    organ = organ_from_definition(path.stem, definition, str(path))
    provenance = {k: v for k, v in definition.items() if k not in DEFINITION_FIELDS}
    return organ, provenance


@functools.lru_cache(maxsize=8)
def _assemble(user: str | None, stamp: tuple[Any, ...]) -> Vocabulary:
    """The vocabulary of the packaged set with ``user`` over it (``stamp``: the user
    files' names, sizes and times, so an edited set is read again)."""
    organs: dict[str, Organ] = {}
    sources: dict[str, str] = {}
    provenance: dict[str, dict[str, Any]] = {}
    for name in _builtin_names():
        organ, prov = _definition(packaged_dir() / f"{name}.json")
        if organ is None:
            raise ConfigError(f"the packaged prompt file of {name} has no definition.")
        organs[name], sources[name], provenance[name] = organ, "built-in", prov
    overridden = []
    for path in sorted(Path(user).glob("*.json")) if user else []:
        if path.stem == BACKGROUND:
            continue
        organ, prov = _definition(path)
        if organ is None:
            continue  # descriptions only: the built-in definition stands
        if path.stem in organs:
            logger.info("user target %s (%s) overrides the built-in one", path.stem, path)
            overridden.append(path.stem)
        organs[path.stem], sources[path.stem], provenance[path.stem] = organ, str(path), prov
    _check_parts(organs, sources)
    return Vocabulary(organs, sources, provenance, tuple(overridden), _lookup(organs))


def _check_parts(organs: Mapping[str, Organ], sources: Mapping[str, str]) -> None:
    for organ in organs.values():
        sides = [organs.get(p) for p in organ.parts]
        if organ.parts and (
            None in sides or [s.laterality for s in sides] != ["left", "right"]  # type: ignore[union-attr]
        ):
            raise OrganError(
                f"{sources[organ.name]}: definition.parts: {', '.join(organ.parts)} must be "
                "the left then the right member, each a target of this prompt set."
            )


def _lookup(organs: Mapping[str, Organ]) -> dict[str, str]:
    """Key -> name: names first, then synonyms (the first target to claim one keeps it)."""
    lookup = {_key(name): name for name in organs}
    for organ in organs.values():
        for synonym in organ.synonyms:
            lookup.setdefault(_key(synonym), organ.name)
    return lookup


def vocabulary(folder: str | Path | None = None) -> Vocabulary:
    """The targets of the prompt set ``folder`` (None: ``$SALIP_PROMPTS_DIR``, else the
    packaged set).

    Raises:
        ConfigError, OrganError: an invalid prompt file or definition (file and field named).
    """
    user = user_dir(folder)
    stamp: tuple[Any, ...] = ()
    if user is not None:
        if not user.is_dir():
            raise ConfigError(f"prompt folder {user} does not exist; create it or fix the path.")
        stamp = tuple(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(user.glob("*.json"))
        )
    return _assemble(None if user is None else str(user.resolve()), stamp)


class _CurrentOrgans(Mapping[str, Organ]):
    """``ORGANS``: the targets of the current prompt set (:func:`vocabulary` of None), read
    on use, never at import."""

    def __getitem__(self, name: str) -> Organ:
        return vocabulary().organs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(vocabulary().organs)

    def __len__(self) -> int:
        return len(vocabulary().organs)


#: The targets of the current prompt set, by name, in vocabulary order.
ORGANS: Mapping[str, Organ] = _CurrentOrgans()


def get_organ(name: str, folder: str | Path | None = None) -> Organ:
    """Return the target ``name`` names in the prompt set ``folder`` (see
    :meth:`Vocabulary.get`).

    Raises:
        OrganError: for an unknown name; the message lists the closest known names.
    """
    return vocabulary(folder).get(name)


def parse_organs(values: str | Iterable[str], folder: str | Path | None = None) -> list[Organ]:
    """Parse organ names given as repeated values and/or comma-separated lists, in the
    prompt set ``folder`` (see :func:`vocabulary`).

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
    known = vocabulary(folder)
    for name in names:
        organ = known.get(name)
        if organ not in organs:
            organs.append(organ)
    return organs


_T = TypeVar("_T")


def with_pairs(
    members: Mapping[str, tuple[_T, ...]], folder: str | Path | None = None
) -> dict[str, tuple[_T, ...]]:
    """``members`` (organ -> label values, class names, ...) plus every pair organ it lacks
    whose two sides it has, as the union of the sides' items (left's first, no repeats).

    One rule for every table that lists organs by their parts: a pair is its two sides.
    """
    out = dict(members)
    for organ in vocabulary(folder).organs.values():
        if organ.parts and organ.name not in out and all(p in out for p in organ.parts):
            out[organ.name] = tuple(dict.fromkeys(v for p in organ.parts for v in out[p]))
    return out


def pair_of(organ: Organ, folder: str | Path | None = None) -> Organ | None:
    """The both-sides target ``organ`` is a member of (kidney_left -> kidneys), or None."""
    return next((o for o in vocabulary(folder).organs.values() if organ.name in o.parts), None)


def family(organ: Organ, folder: str | Path | None = None) -> set[str]:
    """Names of ``organ``, its pair, the pair's members and its own parts.

    These never compete with each other in contrast scoring: CLIP cannot tell a left kidney
    from a right one, and "kidneys" contains both; sides are told apart by laterality.
    """
    names = {organ.name, *organ.parts}
    pair = pair_of(organ, folder)
    if pair is not None:
        names |= {pair.name, *pair.parts}
    return names


def competitors(organ: Organ, modality: str, folder: str | Path | None = None) -> list[Organ]:
    """Vocabulary organs that plausibly appear next to ``organ`` in ``modality`` images.

    They share a body region with ``organ``, are defined for ``modality`` and are not of its
    family (:func:`family`). Order follows the vocabulary, so results are reproducible.
    """
    own = family(organ, folder)
    regions = set(organ.regions)
    return [
        other
        for other in vocabulary(folder).organs.values()
        if other.name not in own
        and modality in other.modalities
        and regions.intersection(other.regions)
        # A pair competes through its one-sided members, which describe a single organ
        # as a single proposal shows it.
        and not other.parts
    ]


def load_competitors(
    organ: Organ,
    modality: str,
    requested: list[Organ],
    folder: str | Path | None = None,
) -> list[PromptSet]:
    """Competing classes of ``organ`` for contrast scoring, as prompt sets.

    They are the vocabulary's targets plausible beside it in ``modality``
    (:func:`competitors`: user targets compete with built-in ones and they with them), the
    other organs requested in the same run unless of the target's family, and the
    background. Classes without a prompt file are left out with a warning.
    """
    own = family(organ, folder)
    names = [o.name for o in competitors(organ, modality, folder)]
    names += [o.name for o in requested if o.name not in own and o.name not in names]
    names.append(BACKGROUND)
    sets, missing = [], []
    for name in names:
        try:
            sets.append(load_prompts(name, modality, folder, fallback_level=logging.DEBUG))
        except ConfigError:
            missing.append(name)
    if missing:
        logger.warning(
            "contrast scoring of %s: no prompts for %s in %s; they do not compete",
            organ.name,
            ", ".join(missing),
            prompts_dir(folder),
        )
    return sets
