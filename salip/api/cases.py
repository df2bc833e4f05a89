"""The cases of a multi-case run: found from inputs (files, folders, globs) or read from a
jobs file, each with a distinct output name and the paths of its outputs."""

from __future__ import annotations

import csv
import glob
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from salip.core.errors import ConfigError, InputError, SalipError, one_line
from salip.core.organs import parse_organs
from salip.io import IMAGE_SUFFIXES, NIFTI_SUFFIXES, file_stem, input_kind
from salip.io.dicom import clearly_not_dicom, list_dicom_series
from salip.io.writing import mask_suffix, sidecar_path

_GLOB_CHARS = "*?["

#: Keys of a jobs file row (CSV columns or JSON Lines keys); only ``input`` is required.
JOB_KEYS = ("input", "organs", "series", "output")


@dataclass(frozen=True)
class CaseSource:
    """One case to segment.

    Attributes:
        path: a NIfTI file, 2D image, DICOM folder or DICOM .zip.
        series: the DICOM series to read (``--series`` label), for a folder or zip holding
            several; None reads the only one.
        description: the series' SeriesDescription, used in its output name.
        organs: the case's own organs (a jobs file row), else None (the run's organs).
        output: the case's own mask path (a jobs file row), else None (derived).
    """

    path: Path
    series: str | None = None
    description: str = ""
    organs: tuple[str, ...] | None = None
    output: Path | None = None


@dataclass(frozen=True)
class CasePaths:
    """Where one case's outputs go.

    Attributes:
        name: the case's name in run.csv (the mask path relative to the output folder,
            without its suffix).
        output: the mask; its JSON sidecar lies beside it.
        preview: the preview PNG, or None.
        report: the report JSON, or None.
    """

    name: str
    output: Path
    preview: Path | None
    report: Path | None

    def files(self) -> list[Path]:
        """Every file of a complete case."""
        wanted = [self.output, sidecar_path(self.output), self.preview, self.report]
        return [p for p in wanted if p is not None]

    def complete(self) -> bool:
        """Whether every output exists (they are written as one transaction)."""
        return all(p.is_file() for p in self.files())


def is_glob(text: str) -> bool:
    """Whether an input is a glob pattern (``*``, ``?`` or ``[``) rather than a path that
    exists."""
    return any(c in text for c in _GLOB_CHARS) and not Path(text).exists()


def _is_case_file(path: Path) -> bool:
    return path.name.lower().endswith((*NIFTI_SUFFIXES, *IMAGE_SUFFIXES, ".zip"))


def _series_cases(folder: Path) -> list[CaseSource]:
    """One case per series of a DICOM folder (one case, reading the only series, when it
    holds one or none the header scan can see: the reader then says what is wrong)."""
    series = list_dicom_series(folder)
    if len(series) <= 1:
        return [CaseSource(folder)]
    return [CaseSource(folder, s.label, s.description) for s in series]


def _search(folder: Path) -> list[CaseSource]:
    """The cases in ``folder``: NIfTI files, 2D images and zips at any depth, and every
    folder of files the DICOM reader would read (:func:`~salip.io.dicom.clearly_not_dicom`)
    with no subfolder, NIfTI file, 2D image or zip beside them: one case per series."""
    cases: list[CaseSource] = []
    files = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    dicom = [p for p in files if p.is_file() and not clearly_not_dicom(p.name)]
    if dicom and not any(p.is_dir() or _is_case_file(p) for p in files):
        return _series_cases(folder)
    for item in files:
        if item.is_dir():
            cases += _search(item)
        elif _is_case_file(item):
            cases.append(CaseSource(item))
    return cases


def find_cases(inputs: Sequence[str | Path]) -> list[CaseSource]:
    """The cases named by ``inputs``, in order, each once.

    A file or .zip is one case; a folder holding only DICOM files is one case per series;
    another folder is searched (:func:`_search`); a string with ``*``, ``?`` or ``[`` is a
    glob, its matches taken as above, except that DICOM files matched in one folder are
    that folder's series (:func:`_glob_cases`).

    Raises:
        InputError: an input that does not exist, or a glob or folder with no case.
    """
    found: list[CaseSource] = []
    for given in inputs:
        text = str(given)
        if is_glob(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            if not matches:
                raise InputError(f"{text}: the pattern matches no file or folder.")
            found += _glob_cases(matches)
            continue
        path = Path(text)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder.")
        if path.is_dir():
            cases = _search(path)
            if not cases:
                raise InputError(
                    f"{path}: no NIfTI file, 2D image or DICOM series found in this folder."
                )
            found += cases
        else:
            found.append(CaseSource(path))
    unique = {(c.path.resolve(), c.series): replace(c, path=c.path.resolve()) for c in found}
    return list(unique.values())


def _glob_cases(matches: Sequence[Path]) -> list[CaseSource]:
    """The cases of a glob's matches: folders are searched, case files are cases, and the
    DICOM files matched in one folder are that folder's series (``'series/*'`` reads the
    series, not each slice); files that are clearly not images are left out."""
    cases: list[CaseSource] = []
    dicom_folders: set[Path] = set()
    for match in matches:
        if match.is_dir():
            cases += _search(match)
        elif _is_case_file(match):
            cases.append(CaseSource(match))
        elif not clearly_not_dicom(match.name) and match.parent not in dicom_folders:
            dicom_folders.add(match.parent)
            cases += _series_cases(match.parent)
    return cases


# --------------------------------------------------------------------------- jobs files


def read_jobs(path: str | Path, prompts_folder: str | Path | None = None) -> list[CaseSource]:
    """The cases of a jobs file: CSV with a header row, or JSON Lines (``.jsonl``).

    Each row has ``input`` (relative paths are relative to the jobs file's folder) and
    optionally ``organs`` (comma-separated, or a JSON list; default: the run's organs),
    ``series`` (a DICOM series label) and ``output`` (the mask path; relative paths are
    relative to the output folder). Empty cells count as absent.

    Raises:
        ConfigError: an unreadable file, an unknown key, a row without input, unknown
            organs, or an output that is not a .nii.gz, .nii or .png path; one line that
            names the row.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read jobs file {path}: {one_line(exc)}.") from exc
    rows = _jsonl_rows(path, text) if path.suffix.lower() == ".jsonl" else _csv_rows(path, text)
    if not rows:
        raise ConfigError(f"jobs file {path} lists no case; give one row per case.")
    return [_job(path, where, row, prompts_folder) for where, row in rows]


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    unknown = [h for h in header if h not in JOB_KEYS]
    if "input" not in header or unknown:
        raise ConfigError(
            f"jobs file {path}: the header row must name an input column and only "
            f"{', '.join(JOB_KEYS)} (got {', '.join(header) or 'nothing'})."
        )
    rows = []
    for line, row in enumerate(reader, start=2):
        values = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if any(values.values()):
            rows.append((f"{path}:{line}", values))
    return rows


def _jsonl_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    rows = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{line}: not a JSON object ({exc.msg}).") from exc
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{line}: each line must be a JSON object.")
        unknown = sorted(set(row) - set(JOB_KEYS))
        if unknown:
            raise ConfigError(
                f"{path}:{line}: unknown key(s) {', '.join(unknown)}; valid keys: "
                f"{', '.join(JOB_KEYS)}."
            )
        rows.append((f"{path}:{line}", row))
    return rows


def _job(path: Path, where: str, row: dict, prompts_folder: str | Path | None) -> CaseSource:
    """One jobs-file row as a case."""
    given = row.get("input")
    if not isinstance(given, str) or not given:
        raise ConfigError(f"{where}: no input; every row needs one.")
    source = Path(given).expanduser()
    source = source if source.is_absolute() else path.parent / source
    organs = row.get("organs") or None
    if organs is not None:
        if isinstance(organs, str):
            organs = [o for o in re.split(r"[,;]", organs) if o.strip()]
        try:
            organs = tuple(o.name for o in parse_organs(organs, prompts_folder))
        except SalipError as exc:
            raise ConfigError(f"{where}: {one_line(exc)}") from exc
    output = row.get("output") or None
    if output is not None and not str(output).lower().endswith((".nii.gz", ".nii", ".png")):
        raise ConfigError(
            f"{where}: output {output} must be a mask path ending in .nii.gz, .nii or .png."
        )
    series = row.get("series") or None
    return CaseSource(
        source, str(series) if series else None, "", organs, Path(output) if output else None
    )


# --------------------------------------------------------------------------- outputs


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40]


def _derived_name(case: CaseSource, index: int) -> str:
    """The input's stem, with the series' description (or number) for one of several."""
    stem = file_stem(case.path) or "case"
    if case.series is None:
        return stem
    return f"{stem}_{_slug(case.description) or f'series{index}'}"


def case_names(cases: Sequence[CaseSource]) -> list[str]:
    """A distinct output name per case without its own output: the input's stem (and the
    series' description), with ``_2``, ``_3``, ... on clashes (in case order)."""
    names, seen = [], set()
    for index, case in enumerate(cases, start=1):
        stem = _derived_name(case, index)
        name, n = stem, 1
        while name in seen:
            n += 1
            name = f"{stem}_{n}"
        seen.add(name)
        names.append(name)
    return names


def _kind(case: CaseSource) -> str:
    try:
        return input_kind(case.path)
    except InputError:
        return "nifti"  # refused again, with its reason, when the case is read


def plan_outputs(
    cases: Sequence[CaseSource], folder: Path, *, preview: bool, report: bool
) -> list[CasePaths]:
    """The output paths of every case in ``folder``: a jobs row's own ``output`` (relative to
    ``folder``), else ``<name><.nii.gz|.png>`` (:func:`case_names`); preview and report as
    ``<stem>.preview.png`` and ``<stem>.report.json`` beside the mask.

    Raises:
        ConfigError: two cases with the same mask path.
    """
    plans, owners = [], {}
    for case, name in zip(cases, case_names(cases)):
        mask = folder / f"{name}{mask_suffix(_kind(case))}"
        if case.output is not None:
            mask = case.output if case.output.is_absolute() else folder / case.output
        stem = mask.parent / file_stem(mask)
        label = name
        if case.output is not None:
            relative = stem.relative_to(folder) if stem.is_relative_to(folder) else stem
            label = relative.as_posix()
        key = mask.resolve()
        if key in owners:
            raise ConfigError(
                f"cases {owners[key]} and {case.path} both write {mask}; give each its own output."
            )
        owners[key] = case.path
        plans.append(
            CasePaths(
                label,
                mask,
                stem.with_name(f"{stem.name}.preview.png") if preview else None,
                stem.with_name(f"{stem.name}.report.json") if report else None,
            )
        )
    return plans
