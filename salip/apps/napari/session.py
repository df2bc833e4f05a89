"""What the napari widget runs, without Qt: one ``salip.segment`` run per request, models
loaded once per model choice, a cancel flag checked at every stage, and the layers a result
becomes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from salip.api.factory import LazyModels
from salip.api.pipeline import OutputRequest, SegmentationResult, segment_case
from salip.apps.napari.geometry import layer_kwargs, to_layer
from salip.core.config import SegmentConfig
from salip.core.errors import SalipError
from salip.core.hints import Hint
from salip.core.timing import StageTimer
from salip.io import Volume
from salip.io.orientation import display_to_input, source_slice_indices

__all__ = [
    "Cancelled",
    "RunRequest",
    "Session",
    "box_shapes",
    "label_features",
]


class Cancelled(SalipError):
    """The user cancelled the run."""


@dataclass(frozen=True)
class RunRequest:
    """One run from the widget.

    Attributes:
        source: the input file or DICOM folder (the image layer's source).
        targets: target names or free text, in label order.
        strategy: "auto", "volume" or "slices".
        options: config fields by flat name (the model choices: ``sam_checkpoint``,
            ``clip_model``, ``clip_pretrained``, ``device``; any other setting).
        hints: the hints to steer targets with.
        outputs: the files to write (default: none, arrays only).
    """

    source: Path
    targets: tuple[str, ...]
    strategy: str = "auto"
    options: Mapping[str, Any] = field(default_factory=dict)
    hints: tuple[Hint, ...] = ()
    outputs: OutputRequest = field(default_factory=lambda: OutputRequest(write=False))

    def config(self) -> SegmentConfig:
        """The run's settings."""
        return SegmentConfig().replace(strategy=self.strategy, **dict(self.options))


class Session:
    """Runs requests; keeps the loaded models while the model choices stay the same."""

    def __init__(self) -> None:
        self._models: LazyModels | None = None
        self._model_key: Any = None

    def models_for(self, config: SegmentConfig) -> LazyModels:
        """The models of ``config`` (loaded on first use, then kept)."""
        key = repr(config.models)
        if self._models is None or key != self._model_key:
            self._models, self._model_key = LazyModels(), key
        return self._models

    def run(
        self,
        request: RunRequest,
        *,
        cancel: threading.Event | None = None,
        on_stage: Callable[[str], None] | None = None,
    ) -> SegmentationResult:
        """Run ``request``; ``on_stage(name)`` is called as each stage's time is added
        (from the calling thread), and a set ``cancel`` stops the run there.

        Raises:
            Cancelled: ``cancel`` was set.
            SalipError: what ``salip.segment`` raises.
        """

        def listener(stage: str, _seconds: Mapping[str, float]) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            if on_stage is not None:
                on_stage(stage)

        config = request.config()
        return segment_case(
            request.source,
            organs=list(request.targets),
            config=config,
            outputs=request.outputs,
            overwrite=True,
            segmenter=None,
            progress=False,
            models=self.models_for(config),
            timer=StageTimer(listener),
            hints=request.hints,
        )


def label_features(result: SegmentationResult) -> dict[str, list[Any]]:
    """A Labels layer's features: one row per label value (``index``), with the organ,
    its confidence (None: not given) and whether it was found."""
    rows: dict[str, list[Any]] = {"index": [0], "organ": ["background"], "confidence": [None]}
    rows["found"] = [None]
    for name, value in result.label_values.items():
        organ = result.report["organs"].get(name, {})
        rows["index"].append(value)
        rows["organ"].append(name)
        rows["confidence"].append(organ.get("confidence"))
        rows["found"].append(organ.get("found"))
    return rows


def box_shapes(
    result: SegmentationResult, volume: Volume, axis: str
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """The chosen boxes as layer rectangles: (corner arrays (4x3 slice, y, x; 4x2 for a 2D
    image), labels "organ p 0.93 | vs spleen 0.04", organ names)."""
    rectangles, texts, organs = [], [], []
    for name, organ in result.report["organs"].items():
        for record in organ.get("chosen", []):
            x, y, w, h = record["bbox"]
            _, (canonical,) = source_slice_indices(volume, axis, [int(record["slice"])])
            corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], float)
            voxels = display_to_input(volume, axis, canonical, corners)  # (slice, x, y)
            rectangles.append(_rectangle(voxels, volume.is_2d))
            texts.append(_box_text(name, record))
            organs.append(name)
    return rectangles, texts, organs


def _rectangle(voxels: np.ndarray, is_2d: bool) -> np.ndarray:
    """4 corners in layer coordinates ((slice, y, x), or (y, x) for a 2D image) of the
    axis-aligned box around (slice, x, y) voxels."""
    x0, x1 = voxels[:, 1].min(), voxels[:, 1].max()
    y0, y1 = voxels[:, 2].min(), voxels[:, 2].max()
    corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])
    if is_2d:
        return corners
    return np.column_stack([np.full(4, voxels[0, 0]), corners])


def _box_text(name: str, record: Mapping[str, Any]) -> str:
    text = name + (" (hint)" if record.get("from") == "hint" else "")
    if record.get("probability") is not None:
        text += f" p {record['probability']:.2f}"
    competitors = record.get("competitors") or {}
    if competitors:
        other, p = max(competitors.items(), key=lambda kv: kv[1] if kv[1] is not None else -1)
        if p is not None:
            text += f" | vs {other} {p:.2f}"
    return text


def labels_layer(result: SegmentationResult, volume: Volume) -> tuple[np.ndarray, dict[str, Any]]:
    """(layer data, napari keywords but the colormap) of a result's label map."""
    data = to_layer(np.asarray(result.labels), volume).astype(np.uint8)
    return data, {**layer_kwargs(volume), "features": label_features(result)}


def replace_target(
    layer_data: np.ndarray, mask: np.ndarray, value: int, others: Sequence[int] = ()
) -> np.ndarray:
    """``layer_data`` with label ``value`` replaced by ``mask`` (same layout), leaving the
    voxels of the labels in ``others`` as they are."""
    out = np.where(layer_data == value, 0, layer_data).astype(layer_data.dtype)
    free = ~np.isin(out, list(others)) if others else np.ones(out.shape, bool)
    out[(mask > 0) & free] = value
    return out
