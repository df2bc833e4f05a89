"""One benchmark case: its image read once, each method run on it, every organ scored
against its reference, and the result saved as a record that a rerun can reuse.

A record (``<out>/cases/<dataset>/<case>/<method>.json``) holds the result's fingerprint,
its status and its cases.csv rows (:data:`CASE_COLUMNS`); the montage slices of its worst
organs go beside it as ``.npz``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from salip.api.factory import CaseInput, Models
from salip.api.pipeline import segment
from salip.apps.bench import metrics
from salip.apps.bench.config import MetricSettings
from salip.apps.bench.datasets import DatasetCase, load_label_map, load_references
from salip.apps.bench.devtime import peak_mb, reset_peak, sync
from salip.apps.bench.methods import Method
from salip.core.errors import BenchmarkError, SalipError
from salip.core.organs import get_organ
from salip.io import read_input, to_canonical
from salip.io.orientation import slices_with_most, source_slice_indices
from salip.io.slicing import AXES, choose_intensity, display_slice, to_uint8
from salip.io.writing import atomic_write, write_json

__all__ = [
    "CASE_COLUMNS",
    "WORK_COLUMNS",
    "CaseRun",
    "compute_method",
    "error_rows",
    "full_rows",
    "read_volume",
]

logger = logging.getLogger(__name__)

#: Columns of cases.csv, in order.
CASE_COLUMNS = (
    "dataset",
    "case",
    "organ",
    "method",
    "method_kind",
    "uses_ground_truth",
    "status",
    "error",
    "dice",
    "dice_status",
    "slice_dice",
    "gt_slices",
    "nsd",
    "hd95",
    "pred_voxels",
    "gt_voxels",
    "confidence",
    "spacing",
    "approximate",
    "wall_s",
    "peak_gpu_mb",
    "device",
    "strategy",
    "encoded_slices",
    "proposal_slices",
    "box_prompts",
    "montage",
)

#: Work counts of the run report's ``strategy.counts`` copied to cases.csv.
WORK_COLUMNS = ("encoded_slices", "proposal_slices", "box_prompts")


def _work(report: Mapping[str, Any]) -> dict[str, Any]:
    """The strategy's name and work counts from a run report (None where absent)."""
    strategy = report.get("strategy") or {}
    counts = strategy.get("counts") or {}
    return {"strategy": strategy.get("name"), **{key: counts.get(key) for key in WORK_COLUMNS}}


def _spacing(geometry: Any, ndim: int) -> tuple[float, ...]:
    """Voxel sizes in mm along the file's array axes (1.0 per axis for 2D images)."""
    if geometry.kind == "image":
        return (1.0,) * ndim
    return tuple(float(s) for s in nib.affines.voxel_sizes(geometry.affine)[:ndim])


def _score(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], slice_axis: int | None, tol: float
) -> dict[str, Any]:
    dice = metrics.dice_case(pred, gt)
    if slice_axis is None:  # a 2D image is its own single slice
        slice_dice, gt_slices = (dice.dice, 1) if gt.any() else (None, 0)
    else:
        slice_dice, gt_slices = metrics.slice_dice(pred, gt, slice_axis)
    return {
        "dice": dice.dice,
        "dice_status": dice.status,
        "slice_dice": slice_dice,
        "gt_slices": gt_slices,
        "nsd": metrics.nsd(pred, gt, spacing, tol),
        "hd95": metrics.hd95(pred, gt, spacing),
        "pred_voxels": int(np.count_nonzero(pred)),
        "gt_voxels": int(np.count_nonzero(gt)),
    }


def _montage_slices(
    volume: Any, volume8: np.ndarray, axis: str, pred: np.ndarray, gt: np.ndarray
) -> dict[str, Any]:
    """The display slice with the most reference (else prediction) of one organ."""
    if volume.is_2d:
        index = 0
        gt_c, pred_c = gt, pred
    else:
        gt_c, pred_c = to_canonical(gt, volume.geometry), to_canonical(pred, volume.geometry)
        shown = gt_c if gt_c.any() else pred_c
        count = gt_c.shape[AXES[axis]]
        index = slices_with_most(shown, axis, 1)[0] if shown.any() else count // 2
    image = display_slice(volume8, volume.is_2d, axis, index)
    if image.ndim == 3:
        image = (
            image[..., :3].mean(axis=2).astype(np.uint8) if image.shape[2] > 1 else image[..., 0]
        )
    return {
        "image": np.ascontiguousarray(image, dtype=np.uint8),
        "gt": np.ascontiguousarray(display_slice(gt_c, volume.is_2d, axis, index), dtype=bool),
        "pred": np.ascontiguousarray(display_slice(pred_c, volume.is_2d, axis, index), dtype=bool),
        "index": np.int64(index),
    }


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    atomic_write(path, write)


class CaseRun:
    """One case: the volume is read once and references once, for every method."""

    def __init__(
        self, case: DatasetCase, models_fn: Any, metrics: MetricSettings, volume: Any = None
    ) -> None:
        self.case, self.models_fn, self.metrics = case, models_fn, metrics
        # A volume read ahead (see run_benchmark), or the exception reading it raised.
        self._volume: Any = volume
        self._references: dict[str, np.ndarray] | None = None
        self._label_map: tuple[np.ndarray, dict[int, str]] | None = None
        self._volume8: dict[tuple[Any, ...], np.ndarray] = {}

    def volume(self) -> Any:
        if self._volume is None:
            self._volume = read_volume(self.case)
        if isinstance(self._volume, Exception):
            raise self._volume
        return self._volume

    def volume8(self, intensity: Any, slicing: Any) -> np.ndarray:
        """The 8-bit volume for the montage, made once per intensity mapping."""
        key = (intensity, slicing.percentile_low, slicing.percentile_high)
        if key not in self._volume8:
            self._volume8[key] = to_uint8(self.volume(), intensity, slicing)
        return self._volume8[key]

    def references(self) -> dict[str, np.ndarray]:
        """Reference masks in the image file's grid, read once per case."""
        if self._references is None:
            self._references = load_references(self.case)
        return self._references

    def label_map(self) -> tuple[np.ndarray, dict[int, str]]:
        """The full reference label map (image file's grid) and its names, read once."""
        if self._label_map is None:
            self._label_map = load_label_map(self.case)
        return self._label_map

    def case_input(self, method: Method, organs: tuple[Any, ...], modality: str) -> CaseInput:
        """What ``method`` learns of the case: references only for oracle rows, the full
        label map only for methods that read it, both in canonical layout."""
        geometry, given, full = self.volume().geometry, None, None
        if method.uses_ground_truth:  # only oracle rows ever see the references
            given = {name: to_canonical(ref, geometry) for name, ref in self.references().items()}
        if method.needs_label_map:
            labels, names = self.label_map()
            full = (to_canonical(labels, geometry), names)
        volume = self.volume()
        return CaseInput(organs, modality, volume.is_2d, given, full, volume.spacing)

    def run(self, method: Method) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
        """Segment and score the case with ``method``: (rows, montage arrays)."""
        case, volume = self.case, self.volume()
        models: Models | None = self.models_fn() if method.needs_sam else None
        device = models.device if models is not None else "cpu"
        organs = tuple(get_organ(o) for o in case.organs)
        config = method.config
        if case.modality and config.slicing.modality == "auto":
            config = config.replace(modality=case.modality)
        intensity = choose_intensity(volume, list(organs), config.slicing)
        given = self.case_input(method, organs, intensity.modality)
        reset_peak(device)
        start = time.perf_counter()
        built = method.build(models, given)
        result = segment(
            volume, organs=list(case.organs), write=False, config=config, segmenter=built.strategy
        )
        sync(device)
        wall = time.perf_counter() - start
        peak = peak_mb(device)
        work = _work(result.report)
        references = self.references()
        volume8 = self.volume8(intensity, config.slicing)
        axis = config.slicing.axis
        rows, montage = [], {}
        for organ in case.organs:
            pred = result.masks[organ].astype(bool)
            gt = references[organ]
            if pred.shape != gt.shape:
                raise BenchmarkError(
                    f"case {case.key}: prediction {pred.shape} and reference {gt.shape} differ "
                    "in shape."
                )
            spacing = _spacing(volume.geometry, gt.ndim)
            slice_axis = None if volume.is_2d else source_slice_indices(volume, axis, [])[0]
            scores = _score(pred, gt, spacing, slice_axis, self.metrics.nsd_tolerance_mm)
            rows.append(
                {
                    **scores,
                    "confidence": result.report["organs"][organ]["confidence"],
                    "organ": organ,
                    "spacing": ",".join(f"{s:g}" for s in spacing),
                    "wall_s": round(wall, 4),
                    "peak_gpu_mb": None if peak is None else round(peak, 1),
                    "device": device,
                    **work,
                }
            )
            for key, value in _montage_slices(volume, volume8, axis, pred, gt).items():
                montage[f"{organ}__{key}"] = value
        return rows, montage


def _base_row(case: DatasetCase, method: Method) -> dict[str, Any]:
    return {
        "dataset": case.dataset,
        "case": case.case_id,
        "method": method.name,
        "method_kind": method.kind,
        "uses_ground_truth": method.uses_ground_truth,
    }


def error_rows(case: DatasetCase, exc: BaseException) -> list[dict[str, Any]]:
    reason = str(exc) if isinstance(exc, SalipError) else f"{type(exc).__name__}: {exc}"
    return [
        {
            "organ": organ,
            "status": "error",
            "error": reason,
            "approximate": case.approximate.get(organ, ""),
        }
        for organ in case.organs
    ]


def full_rows(
    case: DatasetCase, method: Method, rows: list[dict[str, Any]], montage: str
) -> list[dict]:
    full = []
    for row in rows:
        merged = {c: None for c in CASE_COLUMNS}
        merged.update(_base_row(case, method))
        merged.update({"status": "ok", "error": "", "montage": montage})
        merged["approximate"] = case.approximate.get(row["organ"], "")
        merged.update(row)
        full.append(merged)
    return full


def read_volume(case: DatasetCase) -> Any:
    """The case's image as a Volume, or the exception reading it raised (kept for the case's
    error rows rather than raised in the read-ahead thread)."""
    try:
        return read_input(case.image, channel=case.channel)
    except Exception as exc:  # noqa: BLE001 - reported per case by compute_method
        return exc


def compute_method(
    runner: CaseRun, case: DatasetCase, method: Method, path: Path, fingerprint: str, out: Path
) -> dict[str, Any]:
    montage_rel = ""
    try:
        rows, montage = runner.run(method)
        if montage:
            montage_path = path.with_suffix(".npz")
            _save_npz(montage_path, montage)
            montage_rel = montage_path.relative_to(out).as_posix()
        status = "ok"
    except Exception as exc:  # noqa: BLE001
        # One bad case (unreadable file, shape mismatch, out of memory) must not end a run
        # of hundreds: it becomes error rows with the reason. Unexpected exception types
        # may be bugs, so their traceback is logged.
        expected = isinstance(exc, SalipError)
        logger.warning("%s with %s failed: %s", case.key, method.name, exc, exc_info=not expected)
        rows, status = error_rows(case, exc), "error"
    record = {
        "fingerprint": fingerprint,
        "status": status,
        "rows": full_rows(case, method, rows, montage_rel),
    }
    write_json(path, record)
    return record
