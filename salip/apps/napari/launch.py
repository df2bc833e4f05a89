"""``salip napari``: napari with salip's widget docked and the given scans open."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "launch",
    "open_in",
]


def open_in(viewer: Any, inputs: Sequence[str | Path]) -> Any:
    """Dock salip's widget in ``viewer`` and open ``inputs`` with salip's reader; the
    widget."""
    from salip.apps.napari.widget import SegmentWidget

    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="salip", area="right")
    for path in inputs:
        viewer.open(str(path), plugin="salip")
    return widget


def launch(inputs: Sequence[str | Path]) -> None:
    """Start napari with salip (blocks until its window is closed)."""
    # torchvision.ops loads triton (through torch._dynamo); triton's bundled LLVM crashes
    # the process when Mesa's software OpenGL has loaded its own LLVM first, so torch's
    # stack is loaded before napari makes its GL context.
    import torchvision.ops  # noqa: F401, I001 (first, on purpose)

    import napari

    open_in(napari.Viewer(), inputs)
    napari.run()
