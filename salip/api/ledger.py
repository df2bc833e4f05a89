"""``run.csv``: the ledger of an output folder, one row per case ever run into it.

Every run merges its rows into the ledger under the folder's table lock
(:func:`salip.io.locks.table_lock`): rows of cases it did not run (earlier runs, a run
writing at the same time) are kept as they are; a case it skipped keeps what is known of
its result (seconds, device, strategy, volumes and confidences, when it was written) from
the earlier row, or its volumes and confidences from the mask's sidecar; each row's
``history`` adds this run's status; and no column is ever dropped, so organ columns stay
when every case is skipped.

Per organ there are two columns: ``<organ>_ml``, the volume as written (0 for an organ
answered "not found"; empty for 2D images), and ``<organ>_confidence``, the estimated
probability that the organ's answer is right (empty where the strategy gives none).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salip.io.locks import table_lock
from salip.io.writing import atomic_write

__all__ = [
    "COLUMNS",
    "RUN_TABLE",
    "carry_over",
    "CaseRow",
    "entry",
    "now",
    "read_table",
    "write_table",
]

#: The per-case table written into the output folder.
RUN_TABLE = "run.csv"

#: The columns before the organs' (``<organ>_ml``, ``<organ>_confidence``), in order.
COLUMNS = (
    "input", "series", "name", "status", "error", "seconds", "device", "strategy",
    "written", "history",
)  # fmt: skip

#: The suffix of an organ's confidence column.
_CONFIDENCE = "_confidence"


@dataclass
class CaseRow:
    """One case of a :func:`~salip.api.many.segment_many` run (a row of ``run.csv``).

    Attributes:
        input: the case's input path.
        name: its output name (the mask path relative to the output folder, no suffix).
        status: "done", "skipped" (its outputs were there, or another run was writing
            them) or "failed".
        error: the one-line reason of a failure or of a skip, else "".
        seconds: wall time of the run that wrote the outputs (for a skipped case, the
            earlier run's, when known).
        device: where the outputs were computed ("" when unknown or failed).
        strategy: the strategy that computed them ("" when unknown or failed).
        volume_ml: organ name -> volume in ml of the label map as written (None for 2D
            images; 0 for an organ answered "not found").
        confidence: organ name -> its confidence (None where the strategy gave none).
        outputs: the files of the case.
        series: the DICOM series read, for a folder or zip holding several, else "".
        written: when the outputs were written (ISO 8601, UTC), "" when unknown.
        history: this case's statuses over the runs into the folder, oldest first, each
            "status@time".
    """

    input: Path
    name: str
    status: str
    error: str = ""
    seconds: float | None = 0.0
    device: str = ""
    strategy: str = ""
    volume_ml: dict[str, float | None] = field(default_factory=dict)
    confidence: dict[str, float | None] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)
    series: str = ""
    written: str = ""
    history: str = ""
    #: This run's history entry ("status@time"); "" until the row is first written.
    entry: str = field(default="", repr=False)


def now() -> str:
    """The time as the ledger writes it: ISO 8601, UTC, to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_table(folder: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """(header, rows by case name) of ``folder``'s run.csv; empty when there is none or it
    cannot be read."""
    try:
        text = (folder / RUN_TABLE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return [], {}
    reader = csv.DictReader(io.StringIO(text))
    rows = {row["name"]: row for row in reader if row.get("name")}
    return list(reader.fieldnames or []), rows


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def carry_over(row: CaseRow, earlier: Mapping[str, str] | None, sidecar: Mapping | None) -> None:
    """Fill a skipped case's row with what is known of its result: the earlier ledger row
    first, else the mask's sidecar (the volumes and confidences)."""
    if earlier:
        row.seconds = _number(earlier.get("seconds"))
        row.device = earlier.get("device", "")
        row.strategy = earlier.get("strategy", "")
        row.written = earlier.get("written", "")
        row.volume_ml = {
            key[: -len("_ml")]: _number(value)
            for key, value in earlier.items()
            if key and key.endswith("_ml") and value not in (None, "")
        }
        row.confidence = {
            key[: -len(_CONFIDENCE)]: _number(value)
            for key, value in earlier.items()
            if key and key.endswith(_CONFIDENCE) and value not in (None, "")
        }
    else:
        row.seconds = None
    if sidecar and not row.volume_ml and isinstance(sidecar.get("volume_ml"), dict):
        row.volume_ml = dict(sidecar["volume_ml"])
    if sidecar and not row.confidence and isinstance(sidecar.get("confidence"), dict):
        row.confidence = dict(sidecar["confidence"])


def _cells(row: CaseRow, organs: Sequence[str]) -> dict[str, Any]:
    cells = {
        "input": row.input, "series": row.series, "name": row.name, "status": row.status,
        "error": row.error, "seconds": "" if row.seconds is None else round(row.seconds, 3),
        "device": row.device, "strategy": row.strategy, "written": row.written,
        "history": row.history,
    }  # fmt: skip
    for organ in organs:
        value = row.volume_ml.get(organ)
        cells[f"{organ}_ml"] = "" if value is None else value
        sure = row.confidence.get(organ)
        cells[f"{organ}{_CONFIDENCE}"] = "" if sure is None else sure
    return cells


def _history(before: str, entry: str) -> str:
    """``before`` (a ledger history) with ``entry`` at its end, unless already there."""
    entries = [e for e in before.split(";") if e]
    return ";".join(entries if entry in entries else [*entries, entry])


def write_table(folder: Path, rows: Sequence[CaseRow]) -> None:
    """Merge ``rows`` (this run's, so far) into ``folder``'s run.csv, atomically, under the
    folder's table lock.

    A row's ``entry`` is this run's "status@time" (:func:`entry`; made now if the row has
    none); its ``history`` becomes the case's full history in the ledger (earlier entries,
    then this run's), and stays so when the row is written again. Where another run has written
    a case since this run did, the other run's row stays: it is the newer. Rows are in the
    order of ``rows``, then the ledger's other cases as they were.
    """
    with table_lock(folder):
        header, existing = read_table(folder)
        organs = [h[: -len("_ml")] for h in header if h.endswith("_ml")]
        for row in rows:
            organs += [o for o in [*row.volume_ml, *row.confidence] if o not in organs]
        columns = [*COLUMNS, *(c for o in organs for c in (f"{o}_ml", f"{o}{_CONFIDENCE}"))]
        # This run's cases first, in its order; then the others, as they were.
        order = [r.name for r in rows] + [n for n in existing if n not in {r.name for r in rows}]
        merged = {name: dict(existing[name]) for name in order if name in existing}
        for row in rows:
            before = (existing.get(row.name) or {}).get("history", "")
            mine = row.entry or entry(row.status)
            row.entry = mine
            row.history = _history(before, mine)
            if row.history.split(";")[-1] != mine:
                continue  # another run wrote this case after this run: its row is newer
            merged[row.name] = _cells(row, organs)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(merged[name] for name in order if name in merged)
        content = text.getvalue()
        atomic_write(folder / RUN_TABLE, lambda tmp: tmp.write_text(content, encoding="utf-8"))


def entry(status: str, when: str | None = None) -> str:
    """A history entry: "status@time" (now, unless ``when``)."""
    return f"{status}@{when or now()}"
