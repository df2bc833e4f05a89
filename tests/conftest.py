"""Shared fixtures: tiny model files and the shared real data."""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tiny_models import make_tiny_clip_dir, make_tiny_sam

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SALIP_TEST_DATA", REPO.parent / "shared" / "data"))
TOTALSEG = DATA / "totalseg"
SLICES = DATA / "slices"


def require_data(path: Path) -> Path:
    """Return ``path``; fail (not skip) when the shared data is missing: CI has it."""
    if not path.exists():
        pytest.fail(f"shared test data missing: {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def tiny_sam_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny_sam.pth")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clip_dir(tmp_path_factory.mktemp("clip") / "tiny_clip")


@pytest.fixture(scope="session")
def tiny_models(tiny_sam_path: Path, tiny_clip_dir: Path) -> dict[str, str]:
    """Model options for ``salip.segment`` pointing at the tiny models."""
    return {
        "sam_checkpoint": str(tiny_sam_path),
        "clip_model": f"local-dir:{tiny_clip_dir}",
        "clip_pretrained": None,
        "device": "cpu",
    }


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep SALIP_HOME out of the user's cache during tests."""
    monkeypatch.setenv("SALIP_HOME", str(tmp_path / "salip_home"))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``salip.apps.cli.main`` replaces the root handlers; put them back after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    salip_level = logging.getLogger("salip").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("salip").setLevel(salip_level)
    logging.captureWarnings(False)


@pytest.fixture
def cohort(tmp_path):
    """A NIfTI, a DICOM folder, a PNG, a folder of two PNGs and a corrupt file."""
    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    dicom = require_data(TOTALSEG / "example_ct_dicom")
    png = require_data(SLICES / "images" / "amos_0006_90.png")
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for name in ("amos_0004_75.png", "amos_0006_90.png"):
        shutil.copy(require_data(SLICES / "images" / name), pngs / name)
    corrupt = tmp_path / "broken.nii.gz"
    corrupt.write_bytes(b"this is not a NIfTI file")
    return [ct, dicom, png, pngs, corrupt]


class LabelStrategy:
    """A whole-volume strategy for known answers: organ name -> the voxels of a canonical
    label map holding its value (``values``); no model runs."""

    name = "labels"
    intensity_organs = None

    def __init__(self, canonical, values: dict[str, int]) -> None:
        self.canonical, self.values = canonical, values

    def run(self, view, organs, *, progress=False):
        from salip.strategies.base import StrategyResult

        masks = {o.name: self.canonical == self.values[o.name] for o in organs}
        return StrategyResult(masks, {o.name: [] for o in organs})


@pytest.fixture
def network_calls(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record (and block) every outgoing connection and name lookup."""
    calls: list[object] = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return calls


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub access allowed, whatever the environment running the tests says."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
