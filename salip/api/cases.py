"""The cases of a multi-case run: found from inputs (files, folders, globs) or read from a
jobs file, each with a name that depends on its input alone, and the paths of its outputs.

**Names.** A case is named by its path relative to the deepest folder that holds every
input given (each file's folder, each searched folder, each glob's folder before its first
wildcard), flattened with ``_`` and without its suffix: ``'tree/*'`` names
``tree/x/a.nii.gz`` ``x_a``, whatever else the run finds. A folder holding several DICOM
series adds the series' description (and the end of its UID where descriptions repeat).
Two cases that would share a name are refused before any case runs: a name is never made
unique by the order of discovery.

**Confinement.** Every output path lies inside the output folder once symbolic links are
resolved; discovery never enters the output folder and leaves salip's own outputs (a mask
with its sidecar, a preview) alone.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from salip.api.provenance import read_sidecar
from salip.core.errors import ConfigError, InputError
from salip.io import IMAGE_SUFFIXES, NIFTI_SUFFIXES, file_stem, input_kind
from salip.io.dicom import clearly_not_dicom, list_dicom_series
from salip.io.writing import mask_suffix, sidecar_path

__all__ = [
    "case_name",
    "case_names",
    "CasePaths",
    "CaseSource",
    "common_root",
    "find_cases",
    "glob_root",
    "is_glob",
    "is_salip_output",
    "plan_outputs",
    "slug",
    "uid_tail",
]

_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class CaseSource:
    """One case to segment.

    Attributes:
        path: a NIfTI file, 2D image, DICOM folder or DICOM .zip.
        series: the DICOM series to read (``--series`` label), for a folder or zip holding
            several; None reads the only one.
        description: the series' SeriesDescription.
        organs: the case's own organs (a jobs file row), else None (the run's organs).
        output: the case's own mask path (a jobs file row), else None (derived).
        root: the folder its name is relative to: the folder of the input it came from
            (see the module docstring); None: the case's own folder.
        series_tag: what tells this series from the others of its folder in its name.
        options: the case's own settings (a jobs file row: ``modality``, ``channel``,
            ``window``), applied over the run's.
    """

    path: Path
    series: str | None = None
    description: str = ""
    organs: tuple[str, ...] | None = None
    output: Path | None = None
    root: Path | None = None
    series_tag: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)


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

    def sidecar(self) -> Path:
        return sidecar_path(self.output)


def is_glob(text: str) -> bool:
    """Whether an input is a glob pattern (``*``, ``?`` or ``[``) rather than a path that
    exists."""
    return any(c in text for c in _GLOB_CHARS) and not Path(text).exists()


def glob_root(pattern: str) -> Path:
    """The folder of a glob before its first wildcard: ``tree/*/a.nii.gz`` -> ``tree``."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if any(c in part for c in _GLOB_CHARS))
    return Path(*parts[:first]) if first else Path(".")


def _is_case_file(path: Path) -> bool:
    return path.name.lower().endswith((*NIFTI_SUFFIXES, *IMAGE_SUFFIXES, ".zip"))


def is_salip_output(path: Path) -> bool:
    """Whether ``path`` is a file salip wrote: a preview, or a mask beside its sidecar (a
    JSON object with ``labels`` and ``source``)."""
    name = path.name.lower()
    if name.endswith((".preview.png", ".report.json")):
        return True
    if not name.endswith((*NIFTI_SUFFIXES, ".png")):
        return False
    sidecar = sidecar_path(path)
    if not sidecar.is_file() or sidecar.stat().st_size > 1 << 20:
        return False
    data = read_sidecar(sidecar)
    return data is not None and "labels" in data and "source" in data


def uid_tail(uid: str) -> str:
    """The last 8 letters and digits of a UID (what tells series apart in names)."""
    return re.sub(r"[^0-9A-Za-z]", "", uid)[-8:]


def _series_cases(folder: Path) -> list[CaseSource]:
    """One case per series of a DICOM folder (one case, reading the only series, when it
    holds one or none the header scan can see: the reader then says what is wrong)."""
    series = list_dicom_series(folder)
    if len(series) <= 1:
        return [CaseSource(folder)]
    slugs = [slug(s.description) for s in series]
    cases = []
    for info, tag in zip(series, slugs):
        if not tag or slugs.count(tag) > 1:  # a description alone does not tell them apart
            tag = f"{tag or 'series'}_{uid_tail(info.label)}"
        cases.append(CaseSource(folder, info.label, info.description, series_tag=tag))
    return cases


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    resolved = path.resolve()
    return resolved == folder or folder in resolved.parents


def _search(folder: Path, exclude: Path | None) -> list[CaseSource]:
    """The cases in ``folder``: NIfTI files, 2D images and zips at any depth, and every
    folder of files the DICOM reader would read (:func:`~salip.io.dicom.clearly_not_dicom`)
    with no subfolder, NIfTI file, 2D image or zip beside them: one case per series.
    ``exclude`` (the output folder) is not entered, and salip's own outputs are left out."""
    cases: list[CaseSource] = []
    files = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    files = [p for p in files if not _inside(p, exclude)]
    dicom = [p for p in files if p.is_file() and not clearly_not_dicom(p.name)]
    if dicom and not any(p.is_dir() or _is_case_file(p) for p in files):
        return _series_cases(folder)
    for item in files:
        if item.is_dir():
            cases += _search(item, exclude)
        elif _is_case_file(item) and not is_salip_output(item):
            cases.append(CaseSource(item))
    return cases


def _rooted(cases: list[CaseSource], root: Path) -> list[CaseSource]:
    """``cases`` named relative to ``root`` (a case that is ``root`` itself: its parent)."""
    return [replace(c, root=root if c.path != root else root.parent) for c in cases]


def find_cases(inputs: Sequence[str | Path], *, exclude: Path | None = None) -> list[CaseSource]:
    """The cases named by ``inputs``, in order, each once.

    A file or .zip is one case; a folder holding only DICOM files is one case per series;
    another folder is searched (:func:`_search`); a string with ``*``, ``?`` or ``[`` is a
    glob, its matches taken as above, except that DICOM files matched in one folder are
    that folder's series (:func:`_glob_cases`).

    Args:
        inputs: files, folders and globs.
        exclude: the output folder: never searched, and its files never matched.

    Raises:
        InputError: an input that does not exist, a glob or folder with no case, or a
            folder to search that lies inside ``exclude``.
    """
    exclude = exclude.resolve() if exclude is not None else None
    found: list[CaseSource] = []
    for given in inputs:
        text = str(given)
        if is_glob(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            matches = [m for m in matches if not _inside(m, exclude)]
            if not matches:
                raise InputError(f"{text}: the pattern matches no file or folder.")
            found += _rooted(_glob_cases(matches, exclude), glob_root(text))
            continue
        path = Path(text)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder.")
        if path.is_dir():
            found += _rooted(_folder_cases(path, exclude), path)
        else:
            found.append(CaseSource(path, root=path.parent))
    unique = {
        (c.path.resolve(), c.series): replace(
            c, path=c.path.resolve(), root=c.root.resolve() if c.root else None
        )
        for c in found
    }
    return list(unique.values())


def _folder_cases(path: Path, exclude: Path | None) -> list[CaseSource]:
    if _inside(path, exclude):
        raise InputError(
            f"{path}: this folder is inside the output folder {exclude}, which salip does not "
            "search (it holds salip's outputs); move the inputs, or choose another -o."
        )
    cases = _search(path, exclude)
    if not cases:
        raise InputError(f"{path}: no NIfTI file, 2D image or DICOM series found in this folder.")
    return cases


def _glob_cases(matches: Sequence[Path], exclude: Path | None) -> list[CaseSource]:
    """The cases of a glob's matches: folders are searched, case files are cases, and the
    DICOM files matched in one folder are that folder's series (``'series/*'`` reads the
    series, not each slice); files that are clearly not images, and salip's own outputs,
    are left out."""
    cases: list[CaseSource] = []
    dicom_folders: set[Path] = set()
    for match in matches:
        if match.is_dir():
            cases += _search(match, exclude)
        elif _is_case_file(match):
            if not is_salip_output(match):
                cases.append(CaseSource(match))
        elif not clearly_not_dicom(match.name) and match.parent not in dicom_folders:
            dicom_folders.add(match.parent)
            cases += _series_cases(match.parent)
    return cases


# --------------------------------------------------------------------------- names


def slug(text: str) -> str:
    """``text`` with every run of characters other than letters and digits as one ``_``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40]


def common_root(cases: Sequence[CaseSource]) -> Path:
    """The deepest folder holding every case's root."""
    roots = [str(c.root or c.path.parent) for c in cases]
    if not roots:
        return Path(".")
    try:
        return Path(os.path.commonpath(roots))
    except ValueError:  # paths on different drives (Windows): each case keeps its file name
        return Path(".")


def case_name(case: CaseSource, root: Path) -> str:
    """The case's name: its path relative to ``root``, flattened, without its suffix, with
    its series tag."""
    try:
        parts = list(case.path.relative_to(root).parts)
    except ValueError:
        parts = [case.path.name]
    if not parts:
        parts = [case.path.name]
    if not case.path.is_dir():
        parts[-1] = file_stem(parts[-1])
    name = "_".join(p for p in parts if p) or "case"
    return f"{name}_{case.series_tag}" if case.series_tag else name


def case_names(cases: Sequence[CaseSource]) -> list[str]:
    """Each case's name (:func:`case_name` relative to the :func:`common_root` of the cases
    that take a derived name, i.e. all but jobs rows with their own output)."""
    root = common_root([c for c in cases if c.output is None])
    return [case_name(case, root) for case in cases]


# --------------------------------------------------------------------------- outputs


def _kind(case: CaseSource) -> str:
    try:
        return input_kind(case.path)
    except InputError:
        return "nifti"  # refused again, with its reason, when the case is read


def _confined(folder: Path, case: CaseSource, mask: Path) -> None:
    """ConfigError (one line) unless ``mask`` resolves inside ``folder``."""
    where = f"the output {case.output} of {case.path}" if case.output else f"{mask}"
    if case.output is not None and (case.output.is_absolute() or ".." in case.output.parts):
        raise ConfigError(
            f"{where}: a jobs file's output must be a path inside the output folder (no "
            "absolute path, no '..'); nothing was run."
        )
    real, base = mask.resolve(), folder.resolve()
    if real != base and base not in real.parents:
        raise ConfigError(
            f"{where} resolves to {real}, outside the output folder {base} (through a "
            "symbolic link); nothing was run."
        )


def plan_outputs(
    cases: Sequence[CaseSource], folder: Path, *, preview: bool, report: bool
) -> list[CasePaths]:
    """The output paths of every case in ``folder``: a jobs row's own ``output`` (relative to
    ``folder``), else ``<name><.nii.gz|.png>`` (:func:`case_names`); preview and report as
    ``<stem>.preview.png`` and ``<stem>.report.json`` beside the mask.

    Raises:
        ConfigError: two cases with the same name or mask path, or an output that would lie
            outside ``folder`` (an absolute path, ``..``, a symbolic link leading out).
    """
    plans, owners = [], {}
    for case, name in zip(cases, case_names(cases)):
        mask = folder / f"{name}{mask_suffix(_kind(case))}"
        if case.output is not None:
            mask = folder / case.output
        _confined(folder, case, mask)
        stem = mask.parent / file_stem(mask)
        label = stem.relative_to(folder).as_posix() if case.output is not None else name
        key = os.path.normcase(str(mask.resolve().parent / file_stem(mask)))
        if key in owners:
            raise ConfigError(
                f"cases {owners[key]} and {case.path} would both be written as {label} "
                "(a case is named by its path relative to the folder holding every input); "
                "give each its own output in a jobs file, or segment them in separate runs."
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
