"""What the HTML viewer shows of one run: :class:`~salip.outputs.viewer.ViewerData` from the
volume, the canonical label map, the chosen proposals and the strategy's account."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from salip.io import Volume
from salip.io.orientation import display_pixel_mm, source_slice_indices
from salip.io.slicing import DISPLAY_EDGES
from salip.outputs.answers import answer
from salip.outputs.preview import COLOURS
from salip.outputs.report import RunOutcome, in_hu
from salip.outputs.viewer.schema import ViewerData, display_stack
from salip.strategies.assembly import to_label_map

__all__ = [
    "run_viewer_data",
    "viewer_data",
]

#: Keys of a chosen-proposal record the viewer shows beside its box.
_BOX_KEYS = ("probability", "margin", "clip_score", "side", "competitors")


def viewer_data(
    volume: Volume,
    labels: np.ndarray,
    label_values: Mapping[str, int],
    chosen: Mapping[str, Sequence[Mapping[str, Any]]],
    strategy: Mapping[str, Any],
    *,
    axis: str,
    modality: str | None,
    answers: Mapping[str, Mapping[str, Any]] | None = None,
) -> ViewerData:
    """The viewer's data of a run.

    Args:
        volume: the input.
        labels: uint8 label map in salip's canonical layout (XxYxZ, or HxW for 2D images).
        label_values: organ name -> label value, in label order.
        chosen: organ name -> chosen proposal records, their ``slice`` a canonical index
            along ``axis`` and ``bbox`` XYWH in display pixels (a strategy's ``chosen``).
        strategy: the strategy's account (the report's ``strategy``; slice indices the
            input file's), whose ``organs`` holds the volume strategy's tracks.
        axis: the slicing axis.
        modality: the modality the intensities were mapped for ("ct", ...).
        answers: organ name -> its answer (``confidence``, ``found``, ``reason``; see
            :func:`salip.outputs.answers.answer`), shown in its legend entry.
    """
    image = display_stack(volume.data, volume.is_2d, axis).astype(np.float32)
    stack = display_stack(labels, volume.is_2d, axis)
    count = stack.shape[0]
    _, numbers = source_slice_indices(volume, axis, range(count))
    organs = tuple(
        (name, value, tuple(int(c) for c in COLOURS[(value - 1) % len(COLOURS)]))
        for name, value in label_values.items()
    )
    boxes: dict[int, list[dict[str, Any]]] = {}
    for name, records in chosen.items():
        for record in records:
            box = {"organ": name, "bbox": list(record["bbox"])}
            box.update({key: record.get(key) for key in _BOX_KEYS})
            box["hint"] = record.get("from") == "hint"
            box["competitors"] = box["competitors"] or {}
            boxes.setdefault(int(record["slice"]), []).append(box)
    return ViewerData(
        image=image,
        labels=stack,
        organs=organs,  # type: ignore[arg-type]
        slice_numbers=tuple(numbers),
        pixel_spacing=_pixel_spacing(volume, axis),
        modality=modality,
        boxes=boxes,
        profiles=_profiles(volume, strategy, axis),
        title=f"{volume.path.name}: {', '.join(label_values)}",
        orientation=None if volume.is_2d else DISPLAY_EDGES[axis],
        answers={name: dict(given) for name, given in (answers or {}).items()},
    )


def run_viewer_data(
    volume: Volume, run: RunOutcome, label_values: Mapping[str, int], axis: str
) -> ViewerData:
    """:func:`viewer_data` of one segmented case: its canonical masks as a label map, its
    chosen proposals, strategy account and answers."""
    canonical = to_label_map(run.canonical, list(label_values))
    # A 2D image holds display values: the viewer shows them without HU windows.
    shown_as_ct = run.intensity.modality == "ct" and not in_hu(volume, run)
    return viewer_data(
        volume,
        canonical,
        label_values,
        run.chosen,
        run.strategy,
        axis=axis,
        modality=None if shown_as_ct else run.intensity.modality,
        answers={name: answer(d) for name, d in run.decisions.items()},
    )


def _pixel_spacing(volume: Volume, axis: str) -> tuple[float, float]:
    """(row, column) size in mm of a display pixel: display rows run along the later
    in-plane canonical axis, columns along the earlier one (see ``to_display``)."""
    if volume.is_2d:
        return 1.0, 1.0
    return display_pixel_mm(volume.spacing, axis)


def _profiles(
    volume: Volume, strategy: Mapping[str, Any], axis: str
) -> dict[str, list[dict[str, Any]]]:
    """The volume strategy's tracks with display slice indices (the input's indices mapped
    back: the map between the two is its own inverse)."""

    def display(index: int | None) -> int | None:
        if index is None:
            return None
        return source_slice_indices(volume, axis, [int(index)])[1][0]

    profiles: dict[str, list[dict[str, Any]]] = {}
    for organ, tracks in (strategy.get("organs") or {}).items():
        for track in tracks:
            extent = track.get("extent")
            profiles.setdefault(organ, []).append(
                {
                    "side": track.get("side"),
                    "profile": [[display(k), score] for k, score in track.get("profile", [])],
                    "extent": sorted(display(k) for k in (extent[0], extent[-1]))
                    if extent
                    else None,
                    "seeds": [display(s["slice"]) for s in track.get("seeds", [])],
                    "stops": [
                        {
                            **stop,
                            "seed": display(stop["seed"]),
                            "stopped_at": display(stop["stopped_at"]),
                        }
                        for stop in track.get("stops", [])
                    ],
                }
            )
    return profiles
