"""The run report and the organ statistics of one segmented case, built from what its
strategy gave (:class:`RunOutcome`) and the input it ran on.

The report's fields are described in the README's "Outputs" section; slice indices in it
are those of the input file (``slicing.input_axis``), sizes are as written (the label map,
or each organ's own file with ``--split``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from salip.core.config import SegmentConfig
from salip.core.organs import Organ, vocabulary
from salip.core.timing import StageTimer
from salip.io import Volume
from salip.io.orientation import slice_counts, source_slice_indices, to_source_grid
from salip.io.slicing import Intensity
from salip.outputs.answers import answer, report_answer
from salip.outputs.statistics import organ_statistics
from salip.strategies.assembly import OVERLAP_RULE
from salip.strategies.base import SliceEvidence
from salip.strategies.evidence import OrganDecision
from salip.version import __version__

__all__ = ["RunOutcome", "build_report", "in_hu", "run_statistics", "volumes_ml"]


@dataclass
class RunOutcome:
    """What running a strategy over a case's slices gives, in salip's canonical layout
    (XxYxZ RAS+; 2D images HxWx1), and what assembly decided from it.

    Attributes:
        canonical: organ name -> bool mask from the strategy (assembly replaces each with
            its decided mask).
        chosen: organ name -> the chosen proposals (canonical slice indices).
        keep: bool per canonical slice along the axis: False for slices skipped as empty.
        volume8: the 8-bit volume the models saw, canonical.
        intensity: the intensity mapping used.
        models: the model identities for the report.
        strategy: the strategy's name and details for the report.
    """

    canonical: dict[str, np.ndarray]
    chosen: dict[str, list[dict[str, Any]]]
    keep: np.ndarray
    volume8: np.ndarray
    intensity: Intensity
    models: dict[str, Any]
    strategy: dict[str, Any]
    #: Each organ's mask as written (canonical): from the label map, or whole with --split.
    written: dict[str, np.ndarray] = field(default_factory=dict)
    #: Voxels two organs both claimed (:func:`~salip.strategies.assembly.overlaps`).
    overlaps: list[dict[str, Any]] = field(default_factory=list)
    #: What the recogniser said per organ (:attr:`StrategyResult.evidence`), or None.
    evidence: dict[str, list[SliceEvidence]] | None = None
    #: Each organ's answer (:func:`~salip.outputs.answers.decide_organs`), set by assembly.
    decisions: dict[str, OrganDecision] = field(default_factory=dict)


def in_hu(volume: Volume, run: RunOutcome) -> bool:
    """Whether the input's values are CT numbers in HU: a CT volume (NIfTI or DICOM); a 2D
    image stores display values whatever its modality."""
    return run.intensity.modality == "ct" and volume.geometry.kind != "image"


def run_statistics(
    volume: Volume, labels: np.ndarray, label_values: dict[str, int], run: RunOutcome, axis: str
) -> dict[str, Any]:
    """Per-organ statistics (:func:`~salip.outputs.statistics.organ_statistics`) of the
    label map as written (input grid, uint8) over the input's intensities."""
    geometry = volume.geometry
    image = to_source_grid(volume.data, geometry)
    finite = None
    if volume.finite_mask is not None:
        finite = to_source_grid(volume.finite_mask, geometry)
    slice_axis = None if volume.is_2d else source_slice_indices(volume, axis, [])[0]
    units = "HU" if in_hu(volume, run) else "the input's stored values"
    if volume.geometry.kind == "image":
        units = "the image's pixel values (display values, not HU)"
    return organ_statistics(
        image,
        labels,
        label_values,
        geometry.affine,
        is_2d=volume.is_2d,
        slice_axis=slice_axis,
        units=units,
        finite=finite,
        answers={name: answer(d) for name, d in run.decisions.items()},
    )


def build_report(
    volume: Volume,
    source: Path,
    organs: Sequence[Organ],
    run: RunOutcome,
    label_values: dict[str, int],
    cfg: SegmentConfig,
    timer: StageTimer,
) -> dict[str, Any]:
    """The run report (see the README's "Outputs" section)."""
    axis = cfg.slicing.axis
    known = vocabulary(cfg.scoring.prompts_dir)
    organ_rows = {o.name: _organ_row(volume, o, run, label_values, axis) for o in organs}
    for name, row in organ_rows.items():  # where each target's definition came from
        row["target"] = {"source": known.sources[name], "provenance": known.provenance[name]}
    src_axis, skipped = source_slice_indices(volume, axis, np.nonzero(~run.keep)[0].tolist())
    if volume.is_2d:
        src_axis = 0
    return {
        "salip_version": __version__,
        "input": {
            "path": str(source),
            "kind": volume.geometry.kind,
            "shape": list(volume.geometry.shape),
            "affine": volume.geometry.affine.tolist(),
            "spacing_mm": list(volume.spacing),
            "nonfinite_voxels": volume.nonfinite,
            **volume.meta,
        },
        "slicing": {
            "axis": axis,
            "input_axis": src_axis,
            "slice_index": "index along input_axis of the input file",
            "intensity": dataclasses.asdict(run.intensity),
            "skipped_slices": sorted(skipped),
        },
        "organs": organ_rows,
        "overlaps": {"rule": OVERLAP_RULE, "pairs": run.overlaps},
        "strategy": run.strategy,
        "models": run.models,
        "config": dataclasses.asdict(cfg),
        "timings_s": {k: round(v, 4) for k, v in timer.seconds.items()},
    }


def _volume_ml(volume: Volume, voxels: int) -> float | None:
    """``voxels`` of ``volume`` in ml, to 3 decimals (None for 2D images)."""
    if volume.is_2d:
        return None
    return round(voxels * float(np.prod(volume.spacing[:3])) / 1000.0, 3)


def volumes_ml(volume: Volume, run: RunOutcome) -> dict[str, float | None]:
    """Each organ's volume in ml as written (None for 2D images)."""
    return {
        name: _volume_ml(volume, int(np.count_nonzero(mask))) for name, mask in run.written.items()
    }


def _organ_row(
    volume: Volume, organ: Organ, run: RunOutcome, label_values: dict[str, int], axis: str
) -> dict[str, Any]:
    """One organ's entry of the report: label, size and slices as written (the label map,
    or the organ's own file with --split), its answer (:func:`report_answer`), chosen
    proposals."""
    mask = run.written.get(organ.name, run.canonical[organ.name])
    count = int(mask.sum())
    if volume.is_2d:
        used: list[int] = [0] if count else []
    else:
        holding = np.flatnonzero(slice_counts(mask, axis)).tolist()
        _, used = source_slice_indices(volume, axis, holding)
    chosen = run.chosen[organ.name]
    _, chosen_src = source_slice_indices(volume, axis, [c["slice"] for c in chosen])
    return {
        "label": label_values[organ.name],
        "voxels": count,
        "volume_ml": _volume_ml(volume, count),
        "slices": sorted(used),
        **report_answer(run.decisions[organ.name]),
        "chosen": [{**c, "slice": s} for c, s in zip(chosen, chosen_src)],
    }
