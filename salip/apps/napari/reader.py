"""The napari reader: a scan salip reads (NIfTI, a DICOM folder or zip, a 2D image) as an
image layer on its own grid (:mod:`salip.apps.napari.geometry`); a mask salip wrote (a NIfTI
or PNG with its label sidecar beside it) as a Labels layer with the organs' names and
colours, on the same grid, so it overlays its scan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from salip.apps.napari.geometry import label_colormap, layer_image, layer_kwargs, to_layer
from salip.core.errors import SalipError
from salip.io import Volume, input_kind, read_input
from salip.io.orientation import to_source_grid
from salip.io.slicing import detect_modality
from salip.io.writing import sidecar_path

__all__ = [
    "CT_CONTRAST",
    "napari_get_reader",
    "read_layers",
]

#: Contrast limits (HU) a CT opens with: the abdomen window (W 400, L 40).
CT_CONTRAST = (-160.0, 240.0)

#: A napari layer: (data, keywords, layer type).
LayerData = tuple[np.ndarray, dict[str, Any], str]


def napari_get_reader(path: str | list[str]) -> Any:
    """The reader for ``path`` when salip reads it, else None (napari asks another)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        input_kind(Path(path))
    except SalipError:
        return None
    return read_layers


def read_layers(path: str | list[str]) -> list[LayerData]:
    """The layer of one scan or salip mask (see the module docstring).

    Raises:
        SalipError: what :func:`salip.io.read_input` raises for a file it cannot read.
    """
    source = Path(path[0] if isinstance(path, list) else path)
    volume = read_input(source)
    names = _sidecar_labels(source)
    if names is not None:
        return [_labels(volume, names)]
    kwargs = {**layer_kwargs(volume), "name": source.name.removesuffix(".gz")}
    kwargs["colormap"] = "gray"
    if not volume.is_2d and detect_modality(volume)[0] == "ct":
        kwargs["contrast_limits"] = CT_CONTRAST
    return [(layer_image(volume), kwargs, "image")]


def _sidecar_labels(mask: Path) -> dict[str, int] | None:
    """Organ -> label value from the label sidecar salip writes beside a mask, or None."""
    if not mask.is_file():
        return None
    sidecar = sidecar_path(mask)
    try:
        labels = json.loads(sidecar.read_text(encoding="utf-8")).get("labels")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(labels, dict) or not all(isinstance(v, int) for v in labels.values()):
        return None
    return labels


def _labels(volume: Volume, names: dict[str, int]) -> LayerData:
    grid = volume.data if volume.is_2d else to_source_grid(volume.data, volume.geometry)
    data = np.rint(grid[..., 0] if grid.ndim == 3 and volume.is_2d else grid).astype(np.uint8)
    features = {"index": [0, *names.values()], "organ": ["background", *names]}
    kwargs = {
        **layer_kwargs(volume),
        "name": volume.path.name.removesuffix(".gz"),
        "features": features,
        "colormap": label_colormap(names),
    }
    return (data if volume.is_2d else to_layer(data, volume), kwargs, "labels")
