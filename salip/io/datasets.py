"""Benchmark datasets: list a dataset's cases and load their reference masks.

A dataset is one ``[[datasets]]`` table of a benchmark config (see :func:`load_dataset`).
Four kinds of layout are understood (:data:`KINDS`, keys per kind in :data:`KIND_KEYS`):

``nifti-multilabel``
    ``images`` (a glob), ``labels`` (a pattern giving each image's multi-label volume) and
    ``label_names``: a JSON name table (``{"1": "spleen", ...}``, also ``{"spleen": 1}`` or a
    dataset.json holding a ``"labels"`` table) or the name of a salip label set ("totalseg",
    "btcv", "amos", "msd_liver", ...). An organ's reference is the union of its label values.
    ``images`` may also match DICOM series (a folder of DICOM files, or a .zip); their label
    volume is a NIfTI file in the grid dcm2niix (and so TotalSegmentator) writes for the
    series, the grid salip's DICOM reader reproduces.
``nifti-per-organ``
    TotalSegmentator's layout: ``<root>/<case>/ct.nii.gz`` (``image_name``) with one binary
    volume per class in ``<root>/<case>/segmentations/<class>.nii.gz``.
``msd``
    A Medical Segmentation Decathlon task folder: ``<root>/dataset.json`` lists the labelled
    cases; ``task`` names the salip label set (default: guessed from dataset.json).
``image-mask-pairs``
    2D images (``images`` glob) with one binary mask each (``masks`` pattern) of one
    ``target`` organ, thresholded (``threshold``) and optionally filled (``fill_outline``).

Every kind also takes ``modality`` ("ct", "mr", "xray", "us"): the images' modality, for
intensity mapping and prompts (default: the label set's, else detected from the image as
``salip segment --modality auto`` does; a 2D image whose metadata and file name do not say
its modality is an error row, so 2D datasets need ``modality``, e.g. ``"ct"``).

Dataset class names are mapped to the vocabulary by name (canonical names and synonyms, see
:func:`salip.core.organs.get_organ`), by the ``organ_map`` table of the config, and through the
TotalSegmentator class lists of :func:`salip.core.label_sets.totalseg_files` (lungs from lobes);
a pair organ ("kidneys") whose sides are both present is their union.

References are compared in the image FILE's own grid (no reorientation): a NIfTI volume's
stored XxYxZ array, a DICOM series' dcm2niix grid, a 2D image's HxW pixel array. Listing a
dataset reads no volume; label files are read, and checked against the image's shape, by
:func:`load_references`. :func:`load_label_map` reads a case's FULL label map (every label,
not only the scored organs) with its value -> class name table, for methods that simulate
engines from it; ``image-mask-pairs`` cases have none.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from salip.core.errors import BenchmarkError, OrganError, did_you_mean
from salip.core.label_sets import MSD, TOTALSEG, LabelSet, get_label_sets, totalseg_files
from salip.core.organs import MODALITIES, ORGANS, get_organ, with_pairs
from salip.io import IMAGE_SUFFIXES, NIFTI_SUFFIXES, file_stem
from salip.io.dicom import clearly_not_dicom

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

_SUFFIXES = (*NIFTI_SUFFIXES, *IMAGE_SUFFIXES)

_SOURCE_HINT = {
    "nifti-multilabel": "check the dataset's `labels` pattern",
    "nifti-per-organ": "each case folder needs segmentations/<class>.nii.gz for scored organs",
    "msd": "check the 'label' entries of the task's dataset.json",
    "image-mask-pairs": "check the dataset's `masks` pattern",
}


@dataclass(frozen=True)
class Case:
    """One image of a benchmark dataset and where its reference masks are.

    Build cases with :func:`load_dataset`; the fields after ``organs`` are what the loaders
    need and are set per kind.

    Attributes:
        dataset: the dataset's name (its config ``name``).
        case_id: identifier unique within the dataset (image stem, case folder, ...).
        image: the image file, or DICOM series folder or zip, to segment (absolute path);
            references are in its grid.
        organs: vocabulary organs to score, in order.
        kind: the dataset kind (one of :data:`KINDS`).
        modality: "ct", "mr", ... from the dataset's ``modality`` key or its label set, else
            None (detected from the image).
        channel: for 4D (multi-modal) NIfTI images, the index along the 4th axis of the
            volume to segment (MSD; default 0); None for other kinds.
        approximate: organ -> why its reference is a related, not identical, structure.
        label: multi-label reference file (nifti-multilabel, msd); None otherwise.
        values: organ -> label values in ``label`` whose union is the organ.
        files: organ -> binary mask files whose union is the organ (nifti-per-organ,
            image-mask-pairs).
        threshold: a mask value above this is foreground; None: automatic, see
            :func:`mask_threshold` (image-mask-pairs).
        fill_outline: fill closed outlines after thresholding (image-mask-pairs).
        label_names: label value -> class name of every label of ``label`` (the dataset's
            names after its ``organ_map``; a label set's organ names), for
            :func:`load_label_map`.
        label_dir: the folder of one binary mask per class, ``<class>.nii.gz``
            (nifti-per-organ), for :func:`load_label_map`; None otherwise.
        organ_map: dataset class name -> vocabulary organ (the config's ``organ_map``),
            naming the classes of ``label_dir``.
    """

    dataset: str
    case_id: str
    image: Path
    organs: tuple[str, ...]
    kind: str
    modality: str | None = None
    channel: int | None = None
    approximate: dict[str, str] = field(default_factory=dict, hash=False)
    label: Path | None = None
    values: dict[str, tuple[int, ...]] = field(default_factory=dict, hash=False, repr=False)
    files: dict[str, tuple[Path, ...]] = field(default_factory=dict, hash=False, repr=False)
    threshold: float | None = None
    fill_outline: bool = False
    label_names: dict[int, str] = field(default_factory=dict, hash=False, repr=False)
    label_dir: Path | None = None
    organ_map: dict[str, str] = field(default_factory=dict, hash=False, repr=False)

    @property
    def key(self) -> str:
        """``dataset/case_id``, for messages and reports."""
        return f"{self.dataset}/{self.case_id}"

    def shape(self) -> tuple[int, ...]:
        """The image's array shape; see :func:`image_shape`."""
        return image_shape(self)

    def reference(self, organ: str) -> np.ndarray:
        """The reference mask of ``organ``; see :func:`load_reference`."""
        return load_reference(self, organ)

    def references(self, organs: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Reference masks of several organs; see :func:`load_references`."""
        return load_references(self, organs)

    def label_map(self) -> tuple[np.ndarray, dict[int, str]]:
        """The full reference label map and its names; see :func:`load_label_map`."""
        return load_label_map(self)


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


def is_dicom_series(path: Path) -> bool:
    """Whether ``path`` looks like a DICOM series: a .zip file, or a folder holding (at any
    depth) a file that the DICOM reader would not skip (:func:`salip.io.dicom.clearly_not_dicom`).
    Reads no file."""
    if path.is_file():
        return path.name.lower().endswith(".zip")
    if not path.is_dir():
        return False
    return any(
        file.is_file() and not clearly_not_dicom(file.relative_to(path).as_posix())
        for file in path.rglob("*")
    )


def _glob_images(spec: _Spec, dicom: bool = False) -> list[Path]:
    """Image files matching the ``images`` glob, sorted; with ``dicom``, DICOM series
    (folders and zips, :func:`is_dicom_series`) too."""
    pattern = spec.text("images")
    full = (
        pattern
        if Path(pattern).is_absolute()
        else str(Path(glob.escape(str(spec.base_dir))) / pattern)
    )
    paths: list[Path] = []
    for match in sorted(glob.glob(full, recursive=True)):
        path = Path(match)
        if dicom and is_dicom_series(path):
            paths.append(Path(os.path.normpath(path.absolute())))
            continue
        if not path.is_file():
            continue
        if not path.name.lower().endswith(_SUFFIXES):
            what = "a NIfTI file, a DICOM series" if dicom else "a NIfTI or 2D image file"
            logger.warning("%s: skip %s: not %s", spec.name, path, what)
            continue
        paths.append(Path(os.path.normpath(path.absolute())))
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
            rel = path.parent.relative_to(base_dir) / stem
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
    """Class name -> label values from a JSON name table (background and 0 dropped)."""
    data = _read_json(spec, path, "label name table")
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):
        data = data["labels"]  # MSD / nnU-Net dataset.json
    table: dict[str, list[int]] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            pair = _value_name(key, value)
            if pair is None:
                spec.fail(
                    f"{path}: entry {key!r}: {value!r} is neither value -> name nor "
                    'name -> value; use a table like {"1": "spleen", "2": "kidney_right"}.'
                )
            elif pair[0] != 0:
                table.setdefault(pair[1], []).append(pair[0])
    if not table:
        spec.fail(f'{path}: no label names found; expected {{"1": "spleen", ...}}.')
    return {name: tuple(sorted(values)) for name, values in table.items()}


def _value_name(key: str, value: Any) -> tuple[int, str] | None:
    if isinstance(value, str) and re.fullmatch(r"\d+", key.strip()):
        return int(key), value
    if isinstance(value, int) and not isinstance(value, bool):
        return value, key
    return None


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


# --------------------------------------------------------------------------- kinds


def _nifti_multilabel(spec: _Spec) -> list[Case]:
    labels = spec.text("labels")
    label_names = spec.text("label_names")
    organ_map = spec.organ_map()
    images = _glob_images(spec, dicom=True)
    expand_pattern(labels, images[0], spec.base_dir)  # bad placeholders fail early
    as_path = Path(label_names) if Path(label_names).is_absolute() else spec.base_dir / label_names
    modality = None
    if label_names.lower().endswith(".json") or "/" in label_names or as_path.is_file():
        table = _name_table(spec, as_path)
        _check_organ_map(spec, organ_map, table)
        classes, approximate = _map_names(list(table), organ_map)
        values = {
            organ: tuple(sorted({v for name in names for v in table[name]}))
            for organ, names in classes.items()
        }
        names = {v: organ_map.get(name, name) for name, vs in table.items() for v in vs}
        hint = _MAP_HINT
    else:
        label_set = _label_set(spec, label_names)
        if organ_map:
            spec.fail(
                f"organ_map needs label_names to be a JSON name table; label set "
                f"'{label_set.name}' already names vocabulary organs: remove organ_map."
            )
        values, approximate = dict(label_set.labels), dict(label_set.approximate)
        modality, hint, names = label_set.modality, "", _set_names(label_set)
    organs = _select_organs(spec, list(values), hint)
    return [
        Case(
            dataset=spec.name,
            case_id=case_id,
            image=image,
            organs=organs,
            kind=spec.kind,
            modality=modality,
            approximate={o: approximate[o] for o in organs if o in approximate},
            label=expand_pattern(labels, image, spec.base_dir),
            values={o: values[o] for o in organs},
            label_names=names,
        )
        for case_id, image in zip(_case_ids(images, spec.base_dir), images)
    ]


def _nifti_per_organ(spec: _Spec) -> list[Case]:
    root = spec.path("root")
    image_name = spec.text("image_name", required=False, default="ct.nii.gz")
    organ_map = spec.organ_map()
    if not root.is_dir():
        spec.fail(f"root {root} is not a folder; point `root` at the folder of case folders.")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and (d / image_name).is_file())
    if not folders:
        spec.fail(f"no folder under {root} holds {image_name}; check `root` and `image_name`.")
    files: dict[str, str] = {}  # class name -> file name, over all cases
    for folder in folders:
        seg = folder / "segmentations"
        if seg.is_dir():
            for file in sorted(seg.iterdir()):
                if _is_nifti(file):
                    files.setdefault(file_stem(file), file.name)
    if not files:
        spec.fail(f"no segmentations/<class>.nii.gz file in the case folders under {root}.")
    _check_organ_map(spec, organ_map, sorted(files))
    classes, approximate = _map_names(sorted(files), organ_map)
    organs = _select_organs(spec, list(classes), _MAP_HINT)
    return [
        Case(
            dataset=spec.name,
            case_id=folder.name,
            image=(folder / image_name).absolute(),
            organs=organs,
            kind=spec.kind,
            approximate={o: approximate[o] for o in organs if o in approximate},
            files={
                o: tuple((folder / "segmentations" / files[c]).absolute() for c in classes[o])
                for o in organs
            },
            threshold=0.0,
            label_dir=(folder / "segmentations").absolute(),
            organ_map=organ_map,
        )
        for folder in folders
    ]


def _camel_words(text: str) -> str:
    """ "HepaticVessel" -> "Hepatic_Vessel"; "Task08_HepaticVessel" -> "Hepatic_Vessel"."""
    text = re.sub(r"^Task\d+_", "", text)
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", text)


def _msd_task(spec: _Spec, info: Mapping[str, Any], root: Path) -> LabelSet:
    """The label set of an MSD task: ``task``, else the msd_* set naming its organ."""
    task = spec.text("task", required=False)
    if task is not None:
        return _label_set(spec, task)
    words: list[str] = []
    labels = info.get("labels")
    if isinstance(labels, dict):
        words += [str(x) for pair in labels.items() for x in pair]
    words += [_camel_words(str(info.get("name", ""))), _camel_words(root.name)]
    found = []
    for word in words:
        try:
            found.append(get_organ(word).name)
        except OrganError:
            continue
    for organ in found:
        for label_set in MSD:
            if organ in label_set.labels:
                logger.info("%s: MSD task '%s' from dataset.json", spec.name, label_set.name)
                return label_set
    spec.fail(
        f"cannot tell the task from {root / 'dataset.json'} (name "
        f"{info.get('name')!r}, labels {labels!r}); set `task` to one of: "
        f"{', '.join(s.name for s in MSD)}."
    )


def _msd(spec: _Spec) -> list[Case]:
    root = spec.path("root")
    channel = spec.whole("channel", 0)
    info = _read_json(spec, root / "dataset.json", "MSD dataset.json")
    training = info.get("training") if isinstance(info, dict) else None
    if not isinstance(training, list) or not training:
        spec.fail(
            f"{root / 'dataset.json'} has no 'training' list of image/label pairs; point "
            "`root` at a Medical Segmentation Decathlon task folder."
        )
    label_set = _msd_task(spec, info, root)
    organs = _select_organs(spec, list(label_set.labels))
    names = _set_names(label_set)
    cases = []
    for entry in training:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("image"), str)
            and isinstance(entry.get("label"), str)
        ):
            spec.fail(f"dataset.json: training entry {entry!r} lacks 'image' and 'label'.")
        image = (root / entry["image"]).absolute()
        cases.append(
            Case(
                dataset=spec.name,
                case_id=file_stem(image),
                image=image,
                organs=organs,
                kind=spec.kind,
                modality=label_set.modality,
                channel=channel,
                approximate={
                    o: label_set.approximate[o] for o in organs if o in label_set.approximate
                },
                label=(root / entry["label"]).absolute(),
                values={o: label_set.labels[o] for o in organs},
                label_names=names,
            )
        )
    return cases


def _image_mask_pairs(spec: _Spec) -> list[Case]:
    masks = spec.text("masks")
    target = spec.organ("target")
    threshold = spec.number("threshold")
    fill_outline = spec.flag("fill_outline", False)
    images = _glob_images(spec)
    expand_pattern(masks, images[0], spec.base_dir)
    return [
        Case(
            dataset=spec.name,
            case_id=case_id,
            image=image,
            organs=(target,),
            kind=spec.kind,
            files={target: (expand_pattern(masks, image, spec.base_dir),)},
            threshold=threshold,
            fill_outline=fill_outline,
        )
        for case_id, image in zip(_case_ids(images, spec.base_dir), images)
    ]


_BUILDERS = {
    "nifti-multilabel": _nifti_multilabel,
    "nifti-per-organ": _nifti_per_organ,
    "msd": _msd,
    "image-mask-pairs": _image_mask_pairs,
}


def load_dataset(
    spec: Mapping[str, Any],
    base_dir: Path,
    name_override: str | None = None,
    *,
    limit: int | None = None,
) -> list[Case]:
    """List the cases of one ``[[datasets]]`` table of a benchmark config.

    Args:
        spec: the table: ``name``, ``kind`` and the kind's keys (:data:`KIND_KEYS`).
        base_dir: folder that relative paths, globs and patterns resolve against (the config
            file's folder).
        name_override: dataset name to use instead of ``spec["name"]`` (which may then be
            left out).
        limit: keep only the first ``limit`` cases (by case id).

    Returns:
        The cases, sorted by case id. No image or label volume is read.

    Raises:
        BenchmarkError: an unknown kind or key, a bad value, no case found, an unknown or
            unavailable organ.
    """
    if not isinstance(spec, Mapping):
        raise BenchmarkError(f"a dataset must be a table of keys, not {spec!r}.")
    name = name_override if name_override is not None else spec.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BenchmarkError(
            f"a dataset has no `name` (got {name!r}); give each [[datasets]] table a name."
        )
    kind = spec.get("kind")
    if kind not in KINDS:
        hint = did_you_mean(str(kind), KINDS)
        raise BenchmarkError(
            f"dataset '{name}': unknown kind {kind!r}.{hint} Valid kinds: {', '.join(KINDS)}."
        )
    valid = KIND_KEYS[kind]
    unknown = [key for key in spec if key not in valid]
    if unknown:
        hint = did_you_mean(str(unknown[0]), valid)
        raise BenchmarkError(
            f"dataset '{name}' ({kind}): unknown key(s) {', '.join(map(str, unknown))}.{hint} "
            f"Valid keys for {kind}: {', '.join(valid)}."
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise BenchmarkError(f"limit must be a whole number >= 1, not {limit!r}.")
    table = _Spec(name, kind, spec, Path(base_dir).absolute())
    modality = table.text("modality", required=False)
    if modality is not None and modality not in MODALITIES:
        table.fail(f"modality = '{modality}' is not one of {', '.join(MODALITIES)}.")
    cases = sorted(_BUILDERS[kind](table), key=lambda case: case.case_id)
    if modality is not None:
        cases = [dataclasses.replace(case, modality=modality) for case in cases]
    ids = [case.case_id for case in cases]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        table.fail(f"case ids repeat: {', '.join(repeated)}; each image must be listed once.")
    if limit is not None:
        cases = cases[:limit]
    logger.info(
        "dataset %s (%s): %d cases, organs %s",
        name,
        kind,
        len(cases),
        ", ".join(cases[0].organs) if cases else "-",
    )
    return cases


# --------------------------------------------------------------------------- references


def mask_threshold(mask: np.ndarray) -> float:
    """Default foreground threshold of a binary mask: a pixel is foreground if above it.

    Half the full scale of the mask's values: 0.5 when its maximum is at most 1 (0/1
    masks), 127.5 when at most 255 (0/255 8-bit masks), 32767.5 when at most 65535 (16-bit
    masks), else half its maximum.
    """
    top = float(np.max(mask)) if mask.size else 0.0
    for scale in (1.0, 255.0, 65535.0):
        if top <= scale:
            return 0.5 * scale
    return 0.5 * top


def _fail(case: Case, message: str) -> BenchmarkError:
    return BenchmarkError(f"case {case.key}: {message}")


def _image_grid(case: Case) -> tuple[tuple[int, ...], np.ndarray | None]:
    """Shape of the image's array (and its affine for NIfTI), read from the header only."""
    path = case.image
    if not path.exists():
        raise _fail(case, f"image {path} not found; fix the dataset's paths or remove the case.")
    if path.is_dir() or path.name.lower().endswith(".zip"):
        return _dicom_grid(case, path)
    try:
        if _is_nifti(path):
            import nibabel as nib

            img = nib.load(str(path))
            shape, affine = tuple(int(s) for s in img.shape), np.asarray(img.affine)
        else:
            from PIL import Image

            with Image.open(path) as pil:
                width, height = pil.size
            return (height, width), None
    except Exception as exc:  # nibabel and PIL raise many types for corrupt files
        raise _fail(case, f"cannot read image {path} ({type(exc).__name__}: {exc}).") from exc
    if len(shape) == 4:
        channel = case.channel or 0
        if channel >= shape[3]:
            raise _fail(
                case,
                f"channel {channel} out of range: {path} holds {shape[3]} volumes; set "
                f"`channel` to 0..{shape[3] - 1}.",
            )
        shape = shape[:3]
    elif len(shape) not in (2, 3):
        raise _fail(case, f"image {path} has shape {shape}; expected a 2D, 3D or 4D volume.")
    return shape, affine


def _dicom_grid(case: Case, path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of the grid dcm2niix writes for a DICOM series (read once per
    series and modification time: the series is decoded)."""
    from salip.core.errors import InputError

    try:
        shape, affine = _read_dicom_grid(str(path), path.stat().st_mtime_ns)
    except InputError as exc:
        raise _fail(case, f"cannot read DICOM series {path}: {exc}") from exc
    return shape, affine.copy()


@functools.lru_cache(maxsize=4)
def _read_dicom_grid(path: str, mtime_ns: int) -> tuple[tuple[int, ...], np.ndarray]:
    from salip.io import read_dicom_series

    geometry = read_dicom_series(Path(path)).geometry
    return tuple(int(n) for n in geometry.shape), np.asarray(geometry.affine)


def image_shape(case: Case) -> tuple[int, ...]:
    """Shape of the case image's array, read cheaply (NIfTI header, PIL size).

    XxYxZ (or XxY) as stored for NIfTI, the first 3 dims of a 4D (multi-modal) volume; HxW
    for 2D images; the dcm2niix grid of a DICOM series (which is read for it).

    Raises:
        BenchmarkError: missing or unreadable image; a channel beyond a 4D image's volumes.
    """
    return _image_grid(case)[0]


def _read_array(case: Case, path: Path, shape: tuple[int, ...], affine: Any) -> np.ndarray:
    """A reference file's array, checked against the image shape (trailing 1s ignored)."""
    if not path.is_file():
        raise _fail(case, f"reference file {path} not found; {_SOURCE_HINT[case.kind]}.")
    try:
        if _is_nifti(path):
            import nibabel as nib

            img = nib.load(str(path))
            data = np.asarray(img.dataobj)
            if affine is not None and not np.allclose(img.affine, affine, atol=1e-3, rtol=1e-3):
                logger.warning(
                    "case %s: %s and the image have different affines; comparing voxel "
                    "arrays as stored",
                    case.key,
                    path.name,
                )
        else:
            from PIL import Image

            with Image.open(path) as pil:
                data = np.asarray(pil.convert("L") if pil.mode == "CMYK" else pil)
            if data.ndim == 3:  # colour mask: first channel
                data = data[..., 0]
    except Exception as exc:  # nibabel and PIL raise many types for corrupt files
        raise _fail(case, f"cannot read reference {path} ({type(exc).__name__}: {exc}).") from exc
    if data.shape != shape:
        if _strip_ones(data.shape) == _strip_ones(shape):  # e.g. XxYxZx1 against XxYxZ
            data = data.reshape(shape)
        else:
            raise _fail(
                case,
                f"reference {path} has shape {data.shape} but the image {case.image.name} has "
                f"{shape}; references must be in the image file's grid.",
            )
    return data


def _strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    while shape and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _binary(case: Case, data: np.ndarray) -> np.ndarray:
    threshold = case.threshold if case.threshold is not None else mask_threshold(data)
    mask = data > threshold
    if case.fill_outline:
        from scipy import ndimage

        mask = ndimage.binary_fill_holes(mask)
    return mask


def load_references(case: Case, organs: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Reference masks of ``organs`` (default: all of the case's), reading each file once.

    Returns:
        organ -> bool array in the image file's grid: XxYxZ (or XxY) for NIfTI images, HxW
        for 2D images.

    Raises:
        BenchmarkError: an organ the case does not score, a missing or unreadable image or
            reference file, a reference whose shape differs from the image's.
    """
    names = []
    for organ in case.organs if organs is None else organs:
        try:
            name = get_organ(organ).name
        except OrganError as exc:
            raise _fail(case, str(exc)) from exc
        if name not in case.organs:
            raise _fail(case, f"no reference for '{name}'; it has: {', '.join(case.organs)}.")
        names.append(name)
    shape, affine = _image_grid(case)
    if case.label is not None:
        labels = _read_array(case, case.label, shape, affine)
        return {name: np.isin(labels, case.values[name]) for name in names}
    cache: dict[Path, np.ndarray] = {}
    result = {}
    for name in names:
        mask = np.zeros(shape, dtype=bool)
        for path in case.files[name]:
            if path not in cache:
                cache[path] = _binary(case, _read_array(case, path, shape, affine))
            mask |= cache[path]
        result[name] = mask
    return result


def load_reference(case: Case, organ: str) -> np.ndarray:
    """The reference mask of ``organ``: a bool array in the image file's grid.

    XxYxZ (XxY) as stored for NIfTI images (the first 3 dims of a 4D image), HxW for 2D
    images. Raises BenchmarkError like :func:`load_references`.
    """
    return next(iter(load_references(case, [organ]).values()))


def load_label_map(case: Case) -> tuple[np.ndarray, dict[int, str]]:
    """The case's FULL reference label map, every label and not only the scored organs, and
    its label value -> class name table.

    Multi-label kinds (nifti-multilabel, msd) give their label file as stored, named by
    :attr:`Case.label_names`; nifti-per-organ stacks every ``<class>.nii.gz`` of the case's
    ``segmentations/`` folder, class ``k`` (sorted by file name, from 1) taking value ``k``
    (where masks overlap, the later class wins), named by file name through ``organ_map``.

    Returns:
        ``(labels, names)``: a non-negative integer array in the image file's grid (as
        :func:`load_references`), and value -> class name (values without a name are
        unnamed).

    Raises:
        BenchmarkError: a kind without a full label map (image-mask-pairs), a missing or
            unreadable image or label file, a shape that differs from the image's,
            non-integer labels.
    """
    shape, affine = _image_grid(case)
    if case.label is not None:
        labels = _read_array(case, case.label, shape, affine)
        if not np.issubdtype(labels.dtype, np.integer):
            if not np.array_equal(labels, np.round(labels)) or labels.min(initial=0) < 0:
                raise _fail(case, f"label file {case.label} holds non-integer labels.")
            labels = labels.astype(np.int32)
        return labels, dict(case.label_names)
    if case.label_dir is not None:
        return _stacked_labels(case, shape, affine)
    raise _fail(
        case,
        f"{case.kind} datasets have no full label map (only each image's "
        f"{'/'.join(case.organs)} mask); methods that need one (simulated) take "
        "nifti-multilabel, msd or nifti-per-organ datasets.",
    )


def _stacked_labels(
    case: Case, shape: tuple[int, ...], affine: Any
) -> tuple[np.ndarray, dict[int, str]]:
    """nifti-per-organ: one label value per class file of the case's folder."""
    folder = case.label_dir
    assert folder is not None
    files = sorted(p for p in folder.iterdir() if _is_nifti(p)) if folder.is_dir() else []
    if not files:
        raise _fail(case, f"no <class>.nii.gz file in {folder}; {_SOURCE_HINT[case.kind]}.")
    labels = np.zeros(shape, dtype=np.uint16 if len(files) > 255 else np.uint8)
    names: dict[int, str] = {}
    for value, path in enumerate(files, start=1):
        labels[_binary(case, _read_array(case, path, shape, affine))] = value
        names[value] = case.organ_map.get(file_stem(path), file_stem(path))
    return labels, names
