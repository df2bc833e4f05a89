"""Hints: parsing, the input-grid convention, and known answers on simulated engines.

The volumes are crafted label maps whose display images are uniform tissue; the simulated
engines read the labels (see :mod:`salip.apps.bench.simulated`), so a hint's effect is the
known answer of the anatomy. Hints are given in voxel indices of the input file, mapped by
:func:`salip.api.pipeline.slice_hints` as ``salip.segment`` maps them.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from salip.api.pipeline import slice_hints
from salip.apps.bench.simulated import ReferenceAnatomy, noise_preset, simulated_engines
from salip.core.config import SegmentConfig
from salip.core.errors import ConfigError, InputError
from salip.core.hints import Hint, check_hints, parse_hint, read_hints
from salip.core.organs import get_organ
from salip.core.timing import StageTimer
from salip.io import read_input, to_canonical
from salip.io.orientation import input_to_display, to_source_grid
from salip.io.slicing import display_slice
from salip.strategies.cascade import Engines
from salip.strategies.slices import SlicesStrategy
from salip.strategies.volume import VolumeStrategy
from salip.strategies.volume_view import VolumeView

NAMES = {1: "liver", 2: "spleen", 3: "stomach"}
SHAPE = (64, 64, 40)


def _disc(labels, value, centre, radius, z, rx=None):
    """An ellipse (radii ``radius`` along axis 0, ``rx or radius`` along 1) on slices z."""
    x, y = np.ogrid[: labels.shape[0], : labels.shape[1]]
    ry = rx or radius
    disc = ((x - centre[0]) / radius) ** 2 + ((y - centre[1]) / ry) ** 2 <= 1
    for k in z:
        labels[:, :, k][disc] = value


def _case(tmp_path: Path, labels: np.ndarray, affine: np.ndarray | None = None):
    """(Volume read from a NIfTI of uniform tissue on ``labels``' grid, canonical labels)."""
    affine = np.diag([1.0, 1.0, 3.0, 1.0]) if affine is None else affine
    path = tmp_path / "tissue.nii.gz"
    nib.save(nib.Nifti1Image(np.full(labels.shape, 40, np.int16), affine), path)
    volume = read_input(path)
    return volume, to_canonical(labels, volume.geometry)


def _run(volume, canonical, organs, hints=(), noise="none", strategy="volume", **options):
    """The strategy's result with simulated engines reading ``canonical`` labels."""
    config = SegmentConfig().replace(strategy=strategy, **options)
    anatomy = ReferenceAnatomy(canonical, NAMES, axis="axial", spacing=volume.spacing)
    noise = noise_preset(noise) if isinstance(noise, str) else noise
    engines = Engines(*simulated_engines(anatomy, noise, 0, config))
    mapped = slice_hints(volume, read_hints(hints), "axial")
    body = np.ones(canonical.shape[2], dtype=bool)
    view = VolumeView(volume, np.full(canonical.shape, 120, np.uint8), "axial", body)
    if strategy == "volume":
        runner = VolumeStrategy(engines, config, 4, StageTimer(), mapped)
    else:
        runner = SlicesStrategy.from_engines(engines, config, 4, StageTimer(), mapped)
    return runner.run(view, [get_organ(o) for o in organs])


# --------------------------------------------------------------------------- parsing


def test_parse_hint_reads_boxes_points_and_their_signs():
    hint = parse_hint("liver:slice=40:box=120,80,260,210")
    assert hint == Hint("liver", 40, (120.0, 80.0, 260.0, 210.0))
    hint = parse_hint("liver:slice=3:point=150,120:point=10,12:neg")
    assert hint.points == ((150.0, 120.0, True), (10.0, 12.0, False))
    merged = read_hints(["liver:slice=3:box=1,2,30,40", "liver:slice=3:point=5,6:neg"])
    assert merged == (Hint("liver", 3, (1.0, 2.0, 30.0, 40.0), ((5.0, 6.0, False),)),)
    as_dict = read_hints([{"target": "liver", "slice": 3, "points": [[5, 6, "neg"], [7, 8]]}])
    assert as_dict[0].points == ((5.0, 6.0, False), (7.0, 8.0, True))
    assert as_dict[0].to_json()["points"] == [[5.0, 6.0, "neg"], [7.0, 8.0, "pos"]]


@pytest.mark.parametrize(
    "text, message",
    [
        ("liver", "TARGET:slice=N"),
        ("liver:box=1,2,3,4", "give the slice"),
        ("liver:slice=x:box=1,2,3,4", "slice must be an integer"),
        ("liver:slice=1:box=1,2,3", "expected 4"),
        ("liver:slice=1:box=5,2,3,4", "X1 >= X0"),
        ("liver:slice=1:neg", "follows a point"),
        ("liver:slice=1:circle=3", "unknown item"),
        ("liver:slice=-1:point=1,2", "slice must be an index"),
    ],
)
def test_a_malformed_hint_says_how_to_write_one(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_hint(text)


def test_hints_must_name_a_target_of_the_run_and_not_a_pair():
    check_hints(read_hints(["liver:slice=1:point=1,2"]), {"liver": ()})
    with pytest.raises(ConfigError, match="does not segment"):
        check_hints(read_hints(["spleen:slice=1:point=1,2"]), {"liver": ()})
    with pytest.raises(ConfigError, match="kidney_left or kidney_right"):
        check_hints(
            read_hints(["kidneys:slice=1:point=1,2"]),
            {"kidneys": ("kidney_left", "kidney_right")},
        )
    with pytest.raises(ConfigError, match="give a box or a positive point"):
        read_hints(["liver:slice=1:point=1,2:neg"])
    with pytest.raises(ConfigError, match="two boxes"):
        read_hints(["liver:slice=1:box=1,1,2,2", "liver:slice=1:box=1,1,3,3"])


# --------------------------------------------------------------------------- coordinates


def test_hint_coordinates_are_input_voxels_on_a_flipped_anisotropic_grid(tmp_path):
    """x, y, slice are the file's i, j, k: one marked voxel is found where the hint says,
    whatever the flips, and a box around an organ in file indices gives that organ back in
    the file's grid."""
    shape = (48, 40, 20)
    # x and z flipped (L and I), anisotropic voxels, an origin away from 0.
    affine = np.array([[-0.8, 0, 0, 30.0], [0, 1.5, 0, -20.0], [0, 0, -3.0, 50.0], [0, 0, 0, 1.0]])
    labels = np.zeros(shape, np.int16)
    labels[9, 31, 4] = 3  # one marked voxel at file (i, j, k) = (9, 31, 4)
    volume, canonical = _case(tmp_path, labels, affine)
    index, ((col, row),) = input_to_display(volume, "axial", 4, np.array([[9.0, 31.0]]))
    shown = display_slice(canonical, False, "axial", index)
    assert shown[int(row), int(col)] == 3 and shown.sum() == 3
    assert (index, col, row) == (15, 9.0, 8.0)  # k flipped; i flipped twice; j on display

    labels[:] = 0
    labels[5:20, 22:36, 3:15] = 1  # a liver block: file i 5..19, j 22..35, k 3..14
    labels[26:44, 4:18, 0:20] = 2  # a spleen block elsewhere
    volume, canonical = _case(tmp_path, labels, affine)
    result = _run(volume, canonical, ["liver"], ["liver:slice=9:box=5,22,19,35"])
    assert np.array_equal(to_source_grid(result.masks["liver"], volume.geometry), labels == 1)
    (hint,) = result.details["hints"]
    assert hint["slice"] == 9 and hint["seeded"]["slice"] == 9  # as in the input file
    assert hint["seeded"]["extent"] == [3, 14]
    with pytest.raises(InputError, match="outside the slice"):
        input_to_display(volume, "axial", 4, np.array([[48.0, 3.0]]))
    with pytest.raises(InputError, match="20 slices"):
        input_to_display(volume, "axial", 20, np.array([[1.0, 3.0]]))


# --------------------------------------------------------------------------- known answers


def test_a_box_hint_on_one_slice_gives_the_whole_organ(tmp_path):
    """Everything mode never proposes this liver (every part is dropped), so recognition
    finds nothing; one box on slice 17 seeds it, and the walk follows it to both ends."""
    labels = np.zeros(SHAPE, np.int16)
    _disc(labels, 1, (30, 24), 10, range(8, 27))  # liver on slices 8..26
    volume, canonical = _case(tmp_path, labels)
    missed = noise_preset("none", drop_rate=1.0)
    unaided = _run(volume, canonical, ["liver"], noise=missed)
    assert not unaided.masks["liver"].any()
    result = _run(volume, canonical, ["liver"], ["liver:slice=17:box=20,14,40,34"], noise=missed)
    assert np.array_equal(result.masks["liver"], canonical == 1)
    (report,) = result.details["organs"]["liver"]
    assert report["hinted"] and report["extent"] == [8, 26]
    assert [s["slice"] for s in report["seeds"]] == [17] and report["seeds"][0]["from"] == "hint"
    assert result.evidence["liver"] is None  # no confidence for a hinted target
    assert result.chosen["liver"][0]["from"] == "hint"


def test_a_wrong_automatic_pick_is_corrected_by_a_hint(tmp_path):
    """A recogniser biased to spleen picks the spleen for the liver on every key slice;
    a box on the liver on one slice gives the liver, and the spleen keeps its own."""
    labels = np.zeros(SHAPE, np.int16)
    _disc(labels, 1, (20, 20), 9, range(4, 36))  # liver
    _disc(labels, 2, (48, 46), 7, range(4, 36))  # spleen, apart from it
    volume, canonical = _case(tmp_path, labels)
    noise = noise_preset("none", bias_rate=1.0, bias_swap=1.0)
    wrong = _run(volume, canonical, ["liver"], noise=noise)
    assert (wrong.masks["liver"] & (canonical == 2)).sum() > 0.5 * (canonical == 2).sum()
    # Display: column = 63 - x, row = 63 - y (RAS); file x 11..29, y 11..29 is the liver.
    hint = "liver:slice=20:box=11,11,29,29"
    fixed = _run(volume, canonical, ["liver", "spleen"], [hint], noise=noise)
    assert np.array_equal(fixed.masks["liver"], canonical == 1)
    assert not (fixed.masks["spleen"] & (canonical == 1)).any()


def test_a_negative_point_removes_a_neighbour(tmp_path):
    """A loose box over the liver takes in more of the stomach beside it, and SAM returns
    the dominant structure: the stomach. A negative click on the stomach leaves the liver."""
    labels = np.zeros(SHAPE, np.int16)
    _disc(labels, 1, (20, 30), 6, range(10, 30))  # a small liver
    _disc(labels, 3, (38, 30), 12, range(10, 30))  # a large stomach touching its side
    volume, canonical = _case(tmp_path, labels)
    box = "liver:slice=20:box=12,16,50,44"
    only_box = _run(volume, canonical, ["liver"], [box])
    assert (only_box.masks["liver"] & (canonical == 3)).any()
    with_click = _run(volume, canonical, ["liver"], [box + ":point=40,30:neg"])
    assert np.array_equal(with_click.masks["liver"], canonical == 1)
    (hint,) = with_click.details["hints"]
    assert hint["points"] == [[40.0, 30.0, "neg"]]


def test_under_slices_a_hint_prompts_its_slice(tmp_path):
    labels = np.zeros(SHAPE, np.int16)
    _disc(labels, 1, (30, 24), 10, range(8, 27))
    volume, canonical = _case(tmp_path, labels)
    missed = noise_preset("none", drop_rate=1.0)
    result = _run(
        volume, canonical, ["liver"], ["liver:slice=17:point=30,24"], missed, strategy="slices"
    )
    liver = result.masks["liver"]
    assert np.array_equal(liver[:, :, 17], canonical[:, :, 17] == 1)
    assert not liver[:, :, 10].any()  # the other slices are unaided
    assert result.details["hints"][0]["seeded"]["slice"] == 17
    assert result.evidence["liver"] is None


# --------------------------------------------------------------------------- end to end


def test_segment_and_the_cli_take_hints_and_report_them(tmp_path, tiny_models):
    """Through salip.segment with the tiny models (random weights: the masks mean nothing,
    the plumbing does): the hint is recorded as given and as seeded, the hinted target has
    no confidence, and the viewer marks the hinted slice."""
    from salip import segment
    from salip.apps.cli import main
    from salip.outputs.viewer.page import decode_viewer
    from tests.conftest import TOTALSEG, require_data

    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    fast = {"points_per_side": 4, "strategy": "volume", **tiny_models}
    result = segment(
        ct,
        organs=["liver", "spleen"],
        hints=["liver:slice=15:box=20,30,70,80", "liver:slice=15:point=40,60"],
        output=tmp_path / "m.nii.gz",
        viewer=tmp_path / "v.html",
        **fast,
    )
    (hint,) = result.report["strategy"]["hints"]
    assert hint["target"] == "liver" and hint["slice"] == 15
    assert hint["box"] == [20.0, 30.0, 70.0, 80.0] and hint["points"] == [[40.0, 60.0, "pos"]]
    assert hint["seeded"]["slice"] == 15
    assert result.report["organs"]["liver"]["confidence"] is None
    _, _, meta = decode_viewer((tmp_path / "v.html").read_text(encoding="utf-8"))
    marked = {int(k) for k, boxes in meta["boxes"].items() if any(b["hint"] for b in boxes)}
    assert hint["seeded"]["pixels"] > 0  # the tiny SAM's (meaningless) mask is not empty
    assert marked == {15}  # a RAS file: display slice = file slice
    with pytest.raises(ConfigError, match="which this run does not segment"):
        segment(ct, organs=["liver"], hints=["spleen:slice=3:point=1,2"], write=False, **fast)
    with pytest.raises(ConfigError, match="injected segmenter"):
        segment(
            ct,
            organs=["liver"],
            hints=["liver:slice=3:point=1,2"],
            segmenter=lambda images, organs, indices: [],
            write=False,
        )
    with pytest.raises(InputError, match="30 slices"):
        segment(ct, organs=["liver"], hints=["liver:slice=30:point=1,2"], write=False, **fast)
    assert main(["segment", str(ct), str(ct), "-o", str(tmp_path / "many"), "--organ",
                 "liver", "--hint", "liver:slice=3:point=1,2"]) == 1  # fmt: skip
