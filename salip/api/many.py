"""``salip.segment_many``: a cohort of scans in one run, models loaded once.

Each input is a file (NIfTI, 2D image), a DICOM folder or .zip, a folder to search, or a
glob. Every case is written into one output folder under a name derived from its input,
with the files of a single run; a case that fails is recorded with its one-line reason and
the run goes on; a case whose outputs are already there is skipped (``overwrite``
recomputes it). ``run.csv`` in the folder holds one row per case.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salip.api.factory import MethodKind, Models, load_models
from salip.api.pipeline import SegmentationResult, segment_case
from salip.core.config import SegmentConfig
from salip.core.errors import InputError, SalipError, one_line
from salip.core.organs import parse_organs
from salip.core.prefetch import prefetch
from salip.core.timing import StageTimer
from salip.io import IMAGE_SUFFIXES, NIFTI_SUFFIXES, Volume, file_stem, input_kind, read_input
from salip.io.dicom import clearly_not_dicom
from salip.io.writing import atomic_write, mask_suffix, sidecar_path

logger = logging.getLogger(__name__)

#: The per-case table written into the output folder.
RUN_TABLE = "run.csv"
_GLOB_CHARS = "*?["


def _is_case_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((*NIFTI_SUFFIXES, *IMAGE_SUFFIXES, ".zip"))


def is_glob(text: str) -> bool:
    """Whether an input is a glob pattern (``*``, ``?`` or ``[``) rather than a path that
    exists."""
    return any(c in text for c in _GLOB_CHARS) and not Path(text).exists()


def _search(folder: Path) -> list[Path]:
    """The cases in ``folder``: NIfTI files, 2D images and zips at any depth, and every
    folder of files the DICOM reader would read (:func:`~salip.io.dicom.clearly_not_dicom`)
    with no subfolder, NIfTI file, 2D image or zip beside them (a DICOM series)."""
    cases: list[Path] = []
    files = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    dicom = [p for p in files if p.is_file() and not clearly_not_dicom(p.name)]
    if dicom and not any(p.is_dir() or _is_case_file(p) for p in files):
        return [folder]  # a DICOM series
    for item in files:
        if item.is_dir():
            cases += _search(item)
        elif _is_case_file(item):
            cases.append(item)
    return cases


def find_cases(inputs: Sequence[str | Path]) -> list[Path]:
    """The cases named by ``inputs``, in order, each once.

    A file or .zip is one case; a folder holding only DICOM files is one case (a series);
    another folder is searched (:func:`_search`); a string with ``*``, ``?`` or ``[`` is a
    glob, its matches taken as above.

    Raises:
        InputError: an input that does not exist, or a glob or folder with no case.
    """
    found: list[Path] = []
    for given in inputs:
        text = str(given)
        if is_glob(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            if not matches:
                raise InputError(f"{text}: the pattern matches no file or folder.")
            for match in matches:
                found += _search(match) if match.is_dir() else [match]
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
            found.append(path)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def case_names(cases: Sequence[Path]) -> list[str]:
    """A distinct output name per case: the input's stem, with ``_2``, ``_3``, ... on
    clashes (in case order)."""
    names, seen = [], set()
    for case in cases:
        stem = file_stem(case) or "case"
        name, n = stem, 1
        while name in seen:
            n += 1
            name = f"{stem}_{n}"
        seen.add(name)
        names.append(name)
    return names


@dataclass
class CaseRow:
    """One case of a :func:`segment_many` run (a row of ``run.csv``).

    Attributes:
        input: the case's input path.
        name: its output name.
        status: "done", "skipped" (its outputs were there) or "failed".
        error: the one-line reason of a failure, else "".
        seconds: wall time of the case (0 when skipped).
        device: where it ran ("" when skipped or failed before running).
        strategy: the strategy that ran ("" when skipped or failed).
        volume_ml: organ name -> volume in ml (volumes; None for 2D images).
        outputs: the files of the case.
    """

    input: Path
    name: str
    status: str
    error: str = ""
    seconds: float = 0.0
    device: str = ""
    strategy: str = ""
    volume_ml: dict[str, float | None] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)


class _SharedModels:
    """Loads the models on the first case that needs them, then hands the same ones out."""

    def __init__(self) -> None:
        self.models: Models | None = None

    def __call__(self, kind: MethodKind, config: SegmentConfig, timer: StageTimer) -> Models:
        if self.models is None or (kind.needs_clip and self.models.clip is None):
            start = time.perf_counter()
            self.models = load_models(config.models, clip=kind.needs_clip)
            timer.add("load_models", start)
        return self.models


def _case_outputs(folder: Path, name: str, kind: str, preview: bool, report: bool) -> dict:
    """The output paths of one case: mask (its sidecar beside it), preview, report."""
    return {
        "output": folder / f"{name}{mask_suffix(kind)}",
        "preview": folder / f"{name}.preview.png" if preview else None,
        "report": folder / f"{name}.report.json" if report else None,
    }


def _complete(paths: dict) -> bool:
    """Whether a case's outputs all exist (they are written as one transaction)."""
    mask = paths["output"]
    wanted = [mask, sidecar_path(mask), paths["preview"], paths["report"]]
    return all(p.is_file() for p in wanted if p is not None)


def segment_many(
    inputs: Sequence[str | Path],
    *,
    organs: str | Sequence[str],
    output: str | Path,
    overwrite: bool = False,
    preview: bool = False,
    report: bool = False,
    config: SegmentConfig | None = None,
    progress: bool = False,
    **options: Any,
) -> list[CaseRow]:
    """Segment ``organs`` in every case of ``inputs``, loading the models once.

    Args:
        inputs: files, DICOM folders or zips, folders to search, or globs
            (see :func:`find_cases`).
        organs: as for :func:`salip.segment`.
        output: the output folder (created if needed). Case ``NAME`` (see
            :func:`case_names`) writes ``NAME.nii.gz`` (``.png`` for 2D images) with its
            ``NAME.json`` sidecar, and with ``preview``/``report`` ``NAME.preview.png`` and
            ``NAME.report.json``; ``run.csv`` lists every case.
        overwrite: recompute cases whose outputs exist (default: skip them).
        preview: also write each case's preview.
        report: also write each case's report.
        config: settings; ``options`` apply on top (same names as :func:`salip.segment`).
        progress: show a progress bar over cases.

    Returns:
        One :class:`CaseRow` per case, in order. A failed case has status "failed" and
        leaves no file; the others are not affected.

    Raises:
        SalipError: bad settings or organs, an input that does not exist, or an output
            folder that cannot be made.
    """
    from tqdm.auto import tqdm

    cfg = (config or SegmentConfig()).replace(**options)
    parse_organs(organs)  # unknown organs fail before any case runs
    cases = find_cases(inputs)
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file; give a folder for the outputs of several cases.")
    folder.mkdir(parents=True, exist_ok=True)
    models = _SharedModels()
    rows: list[CaseRow] = []
    work = [
        (case, name, _case_outputs(folder, name, _kind(case), preview, report))
        for case, name in zip(cases, case_names(cases))
    ]
    with tqdm(total=len(work), desc="cases", unit="case", disable=not progress) as bar:
        for (case, name, paths), volume in _read_ahead(work, cfg, overwrite):
            rows.append(_run_case(case, name, volume, organs, cfg, paths, overwrite, models))
            _write_table(folder, rows)
            bar.update(1)
    failed = sum(r.status == "failed" for r in rows)
    logger.info("%d case(s): %d failed; table in %s", len(rows), failed, folder / RUN_TABLE)
    return rows


def _kind(case: Path) -> str:
    try:
        return input_kind(case)
    except InputError:
        return "nifti"  # refused again, with its reason, when the case is read


def _read_ahead(
    work: list[tuple[Path, str, dict]], cfg: SegmentConfig, overwrite: bool
) -> Iterator[tuple[tuple[Path, str, dict], Volume | SalipError | None]]:
    """Each (case, name, output paths) with its volume read in a background thread while the
    previous case runs (None when its outputs exist and it will be skipped; the error when
    it cannot be read)."""
    options = dataclasses.asdict(cfg.input)

    def read(item: tuple[Path, str, dict]) -> tuple[tuple[Path, str, dict], Any]:
        case, _name, paths = item
        if not overwrite and _complete(paths):
            return item, None
        try:
            return item, read_input(case, **options)
        except SalipError as exc:
            return item, exc

    return prefetch(work, read, depth=1)


def _run_case(
    case: Path,
    name: str,
    volume: Volume | SalipError | None,
    organs: str | Sequence[str],
    cfg: SegmentConfig,
    paths: dict,
    overwrite: bool,
    models: _SharedModels,
) -> CaseRow:
    """Segment one case; a failure becomes the row's error."""
    if volume is None:
        logger.info("%s: outputs exist, skipped", case)
        return CaseRow(case, name, "skipped")
    start = time.perf_counter()
    try:
        if isinstance(volume, SalipError):
            raise volume
        result: SegmentationResult = segment_case(
            volume,
            organs=organs,
            config=cfg,
            output=paths["output"],
            split=False,
            overwrite=overwrite,
            write=True,
            preview=paths["preview"],
            report=paths["report"],
            segmenter=None,
            progress=False,
            models=models,
        )
    except SalipError as exc:
        logger.warning("%s: failed: %s", case, one_line(exc))
        return CaseRow(case, name, "failed", one_line(exc), time.perf_counter() - start)
    rows = result.report["organs"]
    return CaseRow(
        case,
        name,
        "done",
        seconds=time.perf_counter() - start,
        device=str(result.report["models"].get("device", "")),
        strategy=str(result.report.get("strategy", {}).get("name", "")),
        volume_ml={organ: row["volume_ml"] for organ, row in rows.items()},
        outputs=list(result.outputs),
    )


def _write_table(folder: Path, rows: Sequence[CaseRow]) -> None:
    """``run.csv``: one row per case so far, written atomically."""
    organs = list(dict.fromkeys(o for r in rows for o in r.volume_ml))
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(
        ["input", "name", "status", "error", "seconds", "device", "strategy"]
        + [f"{o}_ml" for o in organs]
    )
    for r in rows:
        volumes = ["" if r.volume_ml.get(o) is None else r.volume_ml[o] for o in organs]
        writer.writerow(
            [r.input, r.name, r.status, r.error, round(r.seconds, 3), r.device, r.strategy]
            + volumes
        )
    content = text.getvalue()
    atomic_write(folder / RUN_TABLE, lambda tmp: tmp.write_text(content, encoding="utf-8"))
