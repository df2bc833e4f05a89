"""Jobs files: one row per case, each with its own organs, output and settings.

A jobs file is often written by someone else, so it is read as untrusted: every row is
checked before any case runs, and its output must stay inside the output folder
(:func:`salip.api.cases.plan_outputs`).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from salip.api.cases import CaseSource, uid_tail
from salip.core.config import SegmentConfig
from salip.core.errors import ConfigError, SalipError, one_line
from salip.core.organs import parse_organs

__all__ = [
    "CASE_SETTINGS",
    "JOB_KEYS",
    "read_jobs",
]

#: A row's own settings: config fields that may differ from case to case.
CASE_SETTINGS = ("modality", "channel", "window")

#: Keys of a jobs file row (CSV columns or JSON Lines keys); only ``input`` is required.
JOB_KEYS = ("input", "organs", "series", "output", *CASE_SETTINGS)


def read_jobs(path: str | Path, prompts_folder: str | Path | None = None) -> list[CaseSource]:
    """The cases of a jobs file: CSV with a header row, or JSON Lines (``.jsonl``).

    Each row has ``input`` (relative paths are relative to the jobs file's folder) and
    optionally ``organs`` (comma-separated, or a JSON list; default: the run's organs),
    ``series`` (a DICOM series label), ``output`` (the mask path, relative to the output
    folder) and the case's own settings :data:`CASE_SETTINGS` (e.g. ``modality`` for a
    cohort mixing CT, MR and ultrasound). Empty cells count as absent.

    Raises:
        ConfigError: an unreadable file, an unknown key, a row without input, unknown
            organs, an invalid setting, or an output that is not a .nii.gz, .nii or .png
            path; one line that names the row.
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


def _settings(where: str, row: dict) -> dict[str, Any]:
    """The row's own settings, typed and checked against the config."""
    options: dict[str, Any] = {}
    for key in CASE_SETTINGS:
        value = row.get(key)
        if value is None or value == "":
            continue
        if key == "channel":
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: channel {value!r} is not a whole number.") from None
        options[key] = str(value) if key != "channel" else value
    try:
        SegmentConfig().replace(**options)
    except SalipError as exc:
        raise ConfigError(f"{where}: {one_line(exc)}") from exc
    return options


def _job(path: Path, where: str, row: dict, prompts_folder: str | Path | None) -> CaseSource:
    """One jobs-file row as a case."""
    given = row.get("input")
    if not isinstance(given, str) or not given:
        raise ConfigError(f"{where}: no input; every row needs one.")
    source = Path(given).expanduser()
    source = (source if source.is_absolute() else path.parent / source).resolve()
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
    series = str(row["series"]) if row.get("series") else None
    return CaseSource(
        source,
        series,
        "",
        organs,
        Path(output) if output else None,
        root=source.parent,
        series_tag=f"series_{uid_tail(series)}" if series else "",
        options=_settings(where, row),
    )
