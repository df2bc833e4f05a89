"""The napari tests need napari, Qt and an X display with OpenGL: ``make install`` installs
napari with the dev extra and, where it can (root and apt-get), Xvfb and Mesa; pytest-xvfb
then starts a virtual display for the session. Without them these tests skip and say why."""

from __future__ import annotations

import ctypes.util
import os

import pytest


def qt_missing() -> str | None:
    """Why the napari tests cannot run here, or None."""
    try:
        import napari  # noqa: F401
        import pytestqt  # noqa: F401
    except ImportError as exc:
        return f"napari or pytest-qt is not installed ({exc}); make install installs them"
    if not os.environ.get("DISPLAY"):
        return "no X display: install xvfb (apt-get install xvfb; make install does as root)"
    if ctypes.util.find_library("GL") is None:
        return "no OpenGL library: install libgl1 and libgl1-mesa-dri (make install does)"
    return None


@pytest.fixture
def viewer(request: pytest.FixtureRequest):
    """A napari viewer in the virtual display (napari's make_napari_viewer)."""
    reason = qt_missing()
    if reason is not None:
        pytest.skip(reason)
    # torchvision.ops loads triton (through torch._dynamo), whose bundled LLVM crashes the
    # process when Mesa's software OpenGL has loaded its own LLVM first: load it before
    # the viewer makes its GL context (see the README's napari section).
    import torchvision.ops  # noqa: F401

    # A shown window: a hidden one renders black screenshots under Xvfb.
    return request.getfixturevalue("make_napari_viewer")(show=True)
