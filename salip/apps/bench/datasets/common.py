"""What every dataset kind shares: the kinds and their keys, :class:`DatasetCase`, paths, a
table's settings, organ mapping and label tables."""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from salip.api.cases import find_cases
from salip.core.errors import BenchmarkError, InputError, OrganError, did_you_mean
from salip.core.label_sets import (
    TOTALSEG,
    LabelSet,
    get_label_sets,
    parse_label_names,
    totalseg_files,
)
from salip.core.organs import ORGANS, get_organ, with_pairs
from salip.io import NIFTI_SUFFIXES, file_stem, input_kind

__all__ = [
    "KINDS",
    "KIND_KEYS",
    "expand_pattern",
]

logger = logging.getLogger(__name__)

#: Dataset kinds understood by :func:`load_dataset`.
KINDS = ("nifti-multilabel", "nifti-per-organ", "msd", "image-mask-pairs")

#: Valid keys of a ``[[datasets]]`` table, per kind.
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "nifti-multilabel": (
        "name",
        "kind",
        "images",
        "labels",
        "label_names",
        "organs",
        "organ_map",
        "modality",
    ),
    "nifti-per-organ": ("name", "kind", "root", "image_name", "organs", "organ_map", "modality"),
    "msd": ("name", "kind", "root", "task", "channel", "organs", "modality"),
    "image-mask-pairs": (
        "name",
        "kind",
        "images",
        "masks",
        "target",
        "threshold",
        "fill_outline",
        "modality",
    ),
}


_SOURCE_HINT = {
    "nifti-multilabel": "check the dataset's `labels` pattern",
    "nifti-per-organ": "each case folder needs segmentations/<class>.nii.gz for scored organs",
    "msd": "check the 'label' entries of the task's dataset.json",
    "image-mask-pairs": "check the dataset's `masks` pattern",
}


# --------------------------------------------------------------------------- paths


def expand_pattern(pattern: str, image: Path, base_dir: Path) -> Path:
    """The path ``pattern`` gives for ``image``.

    ``{stem}`` is the image's file name without its extension (:func:`salip.io.file_stem`) and
    ``{dir}`` its folder; a pattern without placeholders is a literal path. A relative image
    and a relative result are taken relative to ``base_dir`` (the config file's folder).

    Raises:
        BenchmarkError: an unknown placeholder or an unmatched brace.
    """
    base_dir = Path(base_dir)
    image = Path(image)
    if not image.is_absolute():
        image = base_dir / image
    try:
        text = pattern.format(stem=file_stem(image), dir=str(image.parent))
    except (KeyError, IndexError, ValueError) as exc:
        raise BenchmarkError(
            f"pattern '{pattern}': bad placeholder ({type(exc).__name__}: {exc}); use only "
            "{stem} (image name without extension) and {dir} (image folder)."
        ) from exc
    path = Path(text)
    return Path(os.path.normpath(path if path.is_absolute() else base_dir / path))


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _glob_images(spec: _Spec, dicom: bool = False) -> list[Path]:
    """The cases the ``images`` glob names, found as ``salip segment`` finds its inputs
    (:func:`~salip.api.cases.find_cases`), in order; with ``dicom``, DICOM series (folders
    and zips) too. A folder holding several series is one case (its reading fails with
    the list of series: a dataset's case is one image)."""
    pattern = spec.text("images")
    full = (
        pattern
        if Path(pattern).is_absolute()
        else str(Path(glob.escape(str(spec.base_dir))) / pattern)
    )
    try:
        found = find_cases([full])
    except InputError:
        found = []
    paths: list[Path] = []
    for case in found:
        path = case.path
        if input_kind(path) == "dicom" and not dicom:
            logger.warning("%s: skip %s: not a NIfTI or 2D image file", spec.name, path)
        elif path not in paths:
            paths.append(path)
    if not paths:
        spec.fail(
            f"no image file matches images = '{pattern}' (relative to {spec.base_dir}); "
            "fix the glob or the config's location."
        )
    return paths


def _case_ids(paths: Sequence[Path], base_dir: Path) -> list[str]:
    """Image stems, or paths relative to ``base_dir`` without extension when stems repeat."""
    stems = [file_stem(p) for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    ids = []
    for path, stem in zip(paths, stems):
        try:
            rel = path.parent.relative_to(Path(base_dir).resolve()) / stem
        except ValueError:
            rel = path.parent / stem
        ids.append(rel.as_posix())
    return ids


# --------------------------------------------------------------------------- spec access


class _Spec:
    """Typed access to one ``[[datasets]]`` table, with errors naming the dataset."""

    def __init__(self, name: str, kind: str, table: Mapping[str, Any], base_dir: Path):
        self.name, self.kind, self.table, self.base_dir = name, kind, table, base_dir

    def fail(self, message: str) -> NoReturn:
        raise BenchmarkError(f"dataset '{self.name}' ({self.kind}): {message}")

    def _get(self, key: str, types: tuple[type, ...], what: str, required: bool) -> Any:
        if key not in self.table:
            if required:
                self.fail(f"missing key `{key}` ({what}).")
            return None
        value = self.table[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            self.fail(f"`{key}` must be {what}, not {value!r}.")
        return value

    def text(self, key: str, required: bool = True, default: str | None = None) -> Any:
        value = self._get(key, (str,), "a string", required)
        if value is not None and not value.strip():
            self.fail(f"`{key}` is empty.")
        return default if value is None else value

    def path(self, key: str) -> Path:
        path = Path(self.text(key))
        return Path(os.path.normpath(path if path.is_absolute() else self.base_dir / path))

    def number(self, key: str) -> float | None:
        value = self._get(key, (int, float), "a number", False)
        return None if value is None else float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, (bool,), "true or false", False)
        return default if value is None else value

    def whole(self, key: str, default: int) -> int:
        value = self._get(key, (int,), "a whole number", False)
        if value is not None and value < 0:
            self.fail(f"`{key}` must be >= 0, not {value}.")
        return default if value is None else value

    def organ(self, key: str) -> str:
        name = self.text(key)
        try:
            return get_organ(name).name
        except OrganError as exc:
            raise BenchmarkError(f"dataset '{self.name}': `{key}`: {exc}") from exc

    def organs(self) -> list[str] | None:
        """Requested organs (canonical names, deduplicated), or None when not given."""
        value = self._get("organs", (list, tuple), "a list of organ names", False)
        if value is None:
            return None
        if not value or not all(isinstance(v, str) for v in value):
            self.fail("`organs` must be a non-empty list of organ names, e.g. ['liver'].")
        names = []
        for item in value:
            try:
                names.append(get_organ(item).name)
            except OrganError as exc:
                raise BenchmarkError(f"dataset '{self.name}': `organs`: {exc}") from exc
        return list(dict.fromkeys(names))

    def organ_map(self) -> dict[str, str]:
        """``organ_map``: dataset class name -> canonical vocabulary name."""
        value = self._get("organ_map", (dict,), 'a table {"dataset name" = "organ"}', False)
        result: dict[str, str] = {}
        for key, target in (value or {}).items():
            if not isinstance(target, str):
                self.fail(f"organ_map['{key}'] must be an organ name, not {target!r}.")
            try:
                result[str(key)] = get_organ(target).name
            except OrganError as exc:
                raise BenchmarkError(
                    f"dataset '{self.name}': organ_map['{key}'] = '{target}': {exc}"
                ) from exc
        return result


# --------------------------------------------------------------------------- organ mapping


def _map_names(
    names: Sequence[str], organ_map: Mapping[str, str]
) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """Vocabulary organ -> dataset class names whose union is it, and approximate organs.

    A name maps through ``organ_map`` first (several names may map to one organ: their
    union), else by :func:`get_organ`; names that map to nothing are skipped. Organs not
    mapped so are then built from TotalSegmentator classes (:func:`~salip.core.label_sets.totalseg_files`) when all
    of them are present, and pairs from their two sides.
    """
    mapped: dict[str, list[str]] = {}
    skipped = []
    for name in names:
        target = organ_map.get(name)
        if target is None:
            try:
                target = get_organ(name).name
            except OrganError:
                skipped.append(name)
                continue
        mapped.setdefault(target, []).append(name)
    present = set(names)
    approximate: dict[str, str] = {}
    for organ, classes in totalseg_files().items():
        if organ not in mapped and all(c in present for c in classes):
            mapped[organ] = list(classes)
            if organ in TOTALSEG.approximate:
                approximate[organ] = TOTALSEG.approximate[organ]
    with_both = with_pairs({o: tuple(classes) for o, classes in mapped.items()})
    for name in [n for n in with_both if n not in mapped]:  # the pairs just added
        reasons = [approximate[p] for p in ORGANS[name].parts if p in approximate]
        if reasons:
            approximate[name] = "; ".join(reasons)
    mapped = {o: list(classes) for o, classes in with_both.items()}
    if skipped:
        logger.debug("classes not in the vocabulary: %s", ", ".join(skipped))
    ordered = {o: tuple(dict.fromkeys(mapped[o])) for o in ORGANS if o in mapped}
    return ordered, approximate


def _check_organ_map(spec: _Spec, organ_map: Mapping[str, str], names: Iterable[str]) -> None:
    known = list(dict.fromkeys(names))
    for key in organ_map:
        if key not in known:
            hint = did_you_mean(key, known, n=3)
            spec.fail(
                f"organ_map key '{key}' is not a class of this dataset.{hint} "
                f"Its classes: {', '.join(known)}."
            )


def _select_organs(spec: _Spec, available: Sequence[str], hint: str = "") -> tuple[str, ...]:
    """The organs to score: ``organs`` when given (each must be available), else all.

    Given organs keep their order; defaulted ones follow the vocabulary's.
    """
    requested = spec.organs()
    available = [organ for organ in ORGANS if organ in available]
    if not available:
        spec.fail(f"no class of this dataset maps to a vocabulary organ.{hint}")
    if requested is None:
        return tuple(available)
    missing = [o for o in requested if o not in available]
    if missing:
        spec.fail(
            f"no reference for {', '.join(missing)} in this dataset; it has: "
            f"{', '.join(available)}. Remove it from `organs`.{hint}"
        )
    return tuple(requested)


_MAP_HINT = " Add an organ_map entry to map a class name to a vocabulary organ."


# --------------------------------------------------------------------------- label tables


def _read_json(spec: _Spec, path: Path, what: str) -> Any:
    if not path.is_file():
        spec.fail(f"{what} {path} not found.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        spec.fail(f"cannot read {what} {path} ({exc}).")


def _name_table(spec: _Spec, path: Path) -> dict[str, tuple[int, ...]]:
    """Class name -> label values from a JSON name table (:func:`parse_label_names`)."""
    data = _read_json(spec, path, "label name table")
    try:
        names = parse_label_names(data)
    except ValueError as exc:
        spec.fail(f"{path}: {exc}.")
    if not names:
        spec.fail(f'{path}: no label names found; expected {{"1": "spleen", ...}}.')
    table: dict[str, list[int]] = {}
    for value, name in names.items():
        table.setdefault(name, []).append(value)
    return {name: tuple(sorted(values)) for name, values in table.items()}


def _label_set(spec: _Spec, name: str) -> LabelSet:
    try:
        sets = get_label_sets(name)
    except OrganError as exc:
        raise BenchmarkError(
            f"dataset '{spec.name}': label_names = '{name}' is neither a JSON file nor a "
            f"label set: {exc}"
        ) from exc
    if len(sets) > 1:
        spec.fail(
            f"label_names = '{name}' names several label sets; pick one of: "
            f"{', '.join(s.name for s in sets)}."
        )
    return sets[0]


def _set_names(label_set: LabelSet) -> dict[int, str]:
    """Label value -> organ name of a label set; a value in several organs (a pair and its
    sides) takes the organ with the fewest values, the most specific."""
    names: dict[int, str] = {}
    by_size = sorted(label_set.labels.items(), key=lambda item: -len(item[1]))
    for organ, values in by_size:
        for value in values:
            names[int(value)] = organ
    return names
