"""The napari plugin in a real Qt session (Xvfb) with the tiny random-weight models: the
reader, a run from the widget, a hint rerun, a DICOM SEG save, a screenshot, and the event
loop during a run. Random weights make the masks meaningless; these tests check that the
layers sit on the scan's grid, carry salip's names and answers, and that the files are
salip's."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from salip.apps.napari.geometry import from_layer
from tests.conftest import TOTALSEG, require_data

SCREENSHOT = Path(__file__).resolve().parents[3] / "build" / "napari-screenshot.png"


def _widget(viewer, tiny_models, targets="liver, spleen", strategy="volume"):
    from salip.apps.napari.widget import SegmentWidget

    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="salip")
    widget.targets.setText(targets)
    widget.strategy.setCurrentText(strategy)
    widget.sam.setText(tiny_models["sam_checkpoint"])
    widget.clip.setText(tiny_models["clip_model"])
    widget.clip_pretrained.setText("")
    widget.device.setCurrentText("cpu")
    widget.settings.setText("points_per_side=4")
    return widget


def _wait(qtbot, widget, timeout_s=300):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout_s * 1000)


def _ticking(qtbot):
    """A QTimer counting its ticks every 20 ms: proof the event loop turns."""
    from qtpy.QtCore import QTimer

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    return timer, ticks


def test_reader_run_hint_rerun_and_screenshot(viewer, qtbot, tiny_models):
    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    (image,) = viewer.open(str(ct), plugin="salip")
    # The slider runs along the file's k (axial), rows along j, columns along i.
    assert image.data.shape == (30, 101, 122)
    assert np.allclose(np.abs(np.diag(image.affine.affine_matrix)[:3]), 3.0)
    assert image.contrast_limits == [-160.0, 240.0]

    widget = _widget(viewer, tiny_models)
    timer, ticks = _ticking(qtbot)
    start = time.perf_counter()
    widget.run_button.click()
    assert widget.worker is not None and not widget.run_button.isEnabled()
    _wait(qtbot, widget)
    took = time.perf_counter() - start
    timer.stop()
    during = [t for t in ticks if t < start + took]
    # The run took seconds in a worker thread; the GUI thread kept turning meanwhile.
    assert took > 1.0 and len(during) >= 0.25 * took / 0.02, (len(during), took)

    labels = viewer.layers["salip: example_ct_sm.nii"]
    assert labels.data.shape == image.data.shape
    np.testing.assert_allclose(labels.affine.affine_matrix, image.affine.affine_matrix)
    assert list(labels.features["organ"]) == ["background", "liver", "spleen"]
    assert np.array_equal(from_layer(labels.data, widget.volume), widget.result.labels)
    assert "salip boxes" in viewer.layers and "salip hints" in viewer.layers

    # A box hint on slice 15 (file i 20..70, j 30..80), drawn as napari stores it.
    corners = [[15, 30, 20], [15, 30, 70], [15, 80, 70], [15, 80, 20]]
    widget.hint_shapes.add_rectangles(np.array(corners, float))
    widget.hint_target.setCurrentText("liver")
    spleen_before = labels.data == 2
    widget.hint_button.click()
    _wait(qtbot, widget)
    (hint,) = widget.hints["liver"]
    assert hint.slice == 15 and hint.box == (20.0, 30.0, 70.0, 80.0)
    # Only the liver's labels change: the rerun's mask, except where the spleen is.
    liver = np.asarray(widget.last_run.masks["liver"]) > 0  # the input's grid
    spleen = from_layer(spleen_before, widget.volume)
    assert np.array_equal(from_layer(labels.data, widget.volume) == 1, liver & ~spleen)
    assert np.array_equal(labels.data == 2, spleen_before)
    assert (labels.data == 1).any(), "the hinted liver has voxels"

    viewer.reset_view()
    viewer.dims.set_point(0, float(labels.data_to_world([15, 0, 0])[0]))
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(SCREENSHOT), canvas_only=False, flash=False)  # the README's
    shot = viewer.screenshot(canvas_only=True, flash=False)
    labels.visible = False
    plain = viewer.screenshot(canvas_only=True, flash=False)
    labels.visible = True

    def reddish(rgba):
        r, g, b = (rgba[..., i].astype(int) for i in range(3))
        return (r > g + 60) & (r > b + 40)

    # Liver is salip colour 1 (230, 25, 75): it shows over the grey scan where the
    # labels are, and nowhere without them.
    assert reddish(shot).sum() > 50 and reddish(plain).sum() == 0
    assert SCREENSHOT.stat().st_size > 1000


def test_cancel_stops_a_run_and_adds_no_layer(viewer, qtbot, tiny_models):
    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    viewer.open(str(ct), plugin="salip")
    widget = _widget(viewer, tiny_models, targets="liver")
    widget.run_button.click()
    widget.cancel_button.click()
    _wait(qtbot, widget)
    assert widget.status.text() == "cancelled"
    assert "salip: example_ct_sm.nii" not in viewer.layers


def test_save_writes_a_dicom_seg_read_back_by_highdicom(viewer, qtbot, tiny_models, tmp_path):
    import highdicom as hd

    series = require_data(TOTALSEG / "example_ct_dicom_uids")
    (image,) = viewer.open(str(series), plugin="salip")
    assert image.data.shape == (20, 512, 512)
    widget = _widget(viewer, tiny_models, targets="liver", strategy="slices")
    widget.settings.setText("points_per_side=4, axis=axial")
    widget.run_button.click()
    _wait(qtbot, widget)
    saved = tmp_path / "saved"
    saved.mkdir()
    widget.folder.setText(str(saved))
    widget.mask_type.setCurrentText("dicom-seg")
    widget.save_button.click()
    _wait(qtbot, widget)
    names = sorted(p.name for p in saved.iterdir())
    assert names == [
        "example_ct_dicom_uids_salip.dcm",
        "example_ct_dicom_uids_salip.html",
        "example_ct_dicom_uids_salip.report.json",
        "example_ct_dicom_uids_salip.statistics.json",
    ]
    seg = hd.seg.segread(saved / "example_ct_dicom_uids_salip.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver"]
    assert len(seg.get_source_image_uids()) == 20
    assert "wrote" in widget.status.text()


@pytest.mark.parametrize("name", ["example_mr_sm.nii.gz"])
def test_a_mask_salip_wrote_opens_as_labels_on_its_scan(viewer, tiny_models, tmp_path, name):
    import salip

    scan = require_data(TOTALSEG / name)
    result = salip.segment(
        scan, organs=["liver"], output=tmp_path / "m.nii.gz", points_per_side=4, **tiny_models
    )
    (image,) = viewer.open(str(scan), plugin="salip")
    (mask,) = viewer.open(str(tmp_path / "m.nii.gz"), plugin="salip")
    assert mask.__class__.__name__ == "Labels"
    assert list(mask.features["organ"]) == ["background", "liver"]
    np.testing.assert_allclose(mask.affine.affine_matrix, image.affine.affine_matrix)
    assert mask.data.shape == image.data.shape
    from salip.io import read_input

    assert np.array_equal(from_layer(mask.data, read_input(scan)), result.labels)


def test_a_bad_setting_is_reported_in_the_widget(viewer, tiny_models):
    from salip.apps.napari.widget import parse_settings

    assert parse_settings("points_per_side=16, window=liver, full_grid=true") == {
        "points_per_side": 16,
        "window": "liver",
        "full_grid": True,
    }
    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    viewer.open(str(ct), plugin="salip")
    widget = _widget(viewer, tiny_models)
    widget.settings.setText("points_per_side")
    widget.run_button.click()
    assert widget.worker is None and "write name=value" in widget.status.text()


def test_salip_napari_docks_the_widget_and_opens_the_scans(viewer):
    from salip.apps.napari.launch import open_in

    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    widget = open_in(viewer, [ct])
    assert [layer.name for layer in viewer.layers] == ["example_ct_sm.nii"]
    assert widget.image.currentText() == "example_ct_sm.nii"
    assert "salip" in viewer.window.dock_widgets


def test_salip_napari_without_napari_names_the_extra(monkeypatch, capsys):
    import sys

    from salip.apps.cli import main

    monkeypatch.setitem(sys.modules, "napari", None)  # import napari now raises ImportError
    assert main(["napari"]) == 1
    assert "pip install 'salip[napari]'" in capsys.readouterr().err
