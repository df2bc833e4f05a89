"""The volume strategy on simulated engines over crafted anatomy: known answers.

Each case is a small label volume (3 mm slices, so key slices are 5 slices apart at the
default 15 mm stride) whose display images are uniform tissue; the simulated engines read
the labels (see :mod:`salip.apps.bench.simulated`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import salip
from salip.apps.bench.simulated import ReferenceAnatomy, noise_preset, simulated_engines
from salip.core.config import SegmentConfig
from salip.core.organs import get_organ
from salip.core.timing import StageTimer
from salip.io import read_input
from salip.strategies.cascade import Engines
from salip.strategies.slices import SlicesStrategy
from salip.strategies.volume import VolumeStrategy, key_slices
from salip.strategies.volume_view import VolumeView
from tests.conftest import TOTALSEG, require_data

NAMES = {1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right", 5: "stomach"}
SHAPE = (64, 64, 40)


def view_of(labels):
    """A VolumeView of uniform tissue on the grid of ``labels`` (3 mm slices, RAS)."""
    with tempfile.TemporaryDirectory(prefix="salip-volume-test-") as folder:
        path = Path(folder) / "tissue.nii.gz"
        affine = np.diag([1.0, 1.0, 3.0, 1.0])
        nib.save(nib.Nifti1Image(np.full(labels.shape, 40, np.int16), affine), path)
        volume = read_input(path)
    body = np.ones(labels.shape[2], dtype=bool)
    return VolumeView(volume, np.full(labels.shape, 120, np.uint8), "axial", body)


def run_volume(labels, organs, noise="none", **options):
    """The volume strategy's result on ``labels`` with simulated engines."""
    config = SegmentConfig().replace(strategy="volume", **options)
    anatomy = ReferenceAnatomy(labels, NAMES, axis="axial")
    noise = noise_preset("none", split_rate=1.0) if noise == "split" else noise_preset(noise)
    engines = Engines(*simulated_engines(anatomy, noise, 0, config))
    strategy = VolumeStrategy(engines, config, 4, StageTimer())
    return strategy.run(view_of(labels), [get_organ(o) for o in organs])


def _disc(labels, value, centre, radius, z):
    x, y = np.ogrid[: labels.shape[0], : labels.shape[1]]
    disc = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2
    for k in z:
        labels[:, :, k][disc] = value


def track(result, organ, side=None):
    (found,) = [t for t in result.details["organs"][organ] if t["side"] == side]
    return found


def test_key_slices_follow_the_physical_stride():
    assert key_slices(list(range(40)), 3.0, 15.0, 5) == [0, 5, 10, 15, 20, 25, 30, 35]
    assert key_slices(list(range(10, 20)), 3.0, 15.0, 5) == [10, 12, 14, 17, 19]  # min count
    assert key_slices([], 3.0, 15.0, 5) == []
    assert key_slices([3, 4, 9], 1.0, 2.0, 1) == [3, 9]  # only body slices


def test_noise_free_engines_find_the_organ_and_stop_at_its_ends():
    labels = np.zeros(SHAPE, np.int16)
    _disc(labels, 1, (30, 30), 10, range(8, 27))  # liver on slices 8..26
    _disc(labels, 2, (30, 52), 5, range(0, 40))  # spleen alongside, everywhere
    result = run_volume(labels, ["liver"])
    mask = result.masks["liver"]
    assert np.array_equal(mask, labels == 1)
    liver = track(result, "liver")
    assert liver["extent"] == [10, 25]
    ends = {
        (s["direction"], s["stopped_at"]) for s in liver["stops"] if s["reason"] == "mask vanished"
    }
    assert ends == {(-1, 7), (1, 27)}
    counts = result.details["counts"]
    assert counts["proposal_slices"] == 8  # key slices only
    assert counts["encoded_slices"] < SHAPE[2]  # slices far outside the extent never encoded


def test_a_split_organ_is_grouped_into_one_box():
    labels = np.zeros(SHAPE, np.int16)
    _disc(labels, 1, (30, 30), 12, range(0, 40))
    whole = run_volume(labels, ["liver"])
    assert all(seed["parts"] == 1 for seed in track(whole, "liver")["seeds"])
    # The proposer cuts every part into pieces: the seed box still covers the organ.
    split = run_volume(labels, ["liver"], noise="split")
    seeds = track(split, "liver")["seeds"]
    assert seeds and all(seed["parts"] >= 2 for seed in seeds)
    assert np.array_equal(split.masks["liver"], labels == 1)


def test_a_key_slice_pick_far_from_the_track_is_rejected():
    labels = np.zeros(SHAPE, np.int16)
    _disc(labels, 1, (20, 20), 6, range(0, 40))
    labels[:, :, 20][labels[:, :, 20] == 1] = 0  # on key slice 20 the liver moved away
    _disc(labels, 1, (50, 50), 9, [20])
    result = run_volume(labels, ["liver"], track_distance_mm=20.0)
    liver = track(result, "liver")
    assert [r["slice"] for r in liver["rejected"]] == [20]
    assert liver["rejected"][0]["distance_mm"] > 20.0
    assert not result.masks["liver"][40:, 40:, :].any()


def test_a_left_right_pair_gets_one_track_per_side():
    labels = np.zeros(SHAPE, np.int16)
    # Canonical RAS+: x grows towards the patient's right.
    _disc(labels, 4, (49, 32), 6, range(5, 30))  # kidney_right
    _disc(labels, 3, (15, 32), 6, range(10, 35))  # kidney_left
    result = run_volume(labels, ["kidneys"])
    sides = {t["side"]: t for t in result.details["organs"]["kidneys"]}
    assert set(sides) == {"left", "right"}
    assert sides["right"]["extent"] == [5, 25] and sides["left"]["extent"] == [10, 30]
    assert np.array_equal(result.masks["kidneys"], labels > 2)


@pytest.mark.parametrize(
    "case, reason",
    [
        ("area", "area changed"),  # the jump is checked: the recogniser rejects the spleen
        ("rejected", "recogniser rejected it at a key slice"),
        ("iou", "refine IoU"),
    ],
)
def test_each_walk_stops_for_the_reason_the_report_states(case, reason):
    """Two bad slices in a row (max_walk_failures) end a walk at the first of them."""
    labels = np.zeros(SHAPE, np.int16)
    if case == "area":
        _disc(labels, 1, (30, 30), 6, range(10, 23))  # 113 mm², over the speck floor
        _disc(labels, 2, (30, 30), 14, range(23, 40))  # a spleen 5x larger from 23 on
        organ, options, where = "liver", {"min_key_slices": 1, "key_stride_mm": 60.0}, 23
    elif case == "rejected":
        _disc(labels, 1, (30, 30), 8, range(0, 18))  # liver on 0..17 ...
        _disc(labels, 2, (30, 30), 8, range(18, 40))  # ... where spleen takes over
        organ, options, where = "liver", {"extent_tolerance_mm": 30.0, "max_key_gap": 0}, 20
    else:
        _disc(labels, 1, (30, 30), 10, range(0, 40))
        band = labels[38:50, 10:50, 14:40]
        band[band == 0] = 2  # from slice 14, spleen beside the liver inside its box
        options = {"min_key_slices": 1, "key_stride_mm": 60.0, "min_refine_iou": 0.9}
        organ, where = "liver", 14
    result = run_volume(labels, [organ], **options)
    stops = track(result, organ)["stops"]
    hits = [s for s in stops if s["reason"].startswith(reason)]
    assert hits, stops
    if where is not None:
        assert hits[0]["stopped_at"] == where and hits[0]["bad_slices"] == 2
    # The slice a walk stopped at never gets that walk's mask.
    for s in hits:
        at = s["stopped_at"]
        assert not (result.masks[organ][:, :, at] & (labels[:, :, at] != 1)).any()


def test_segment_with_strategy_volume_writes_masks_in_the_input_grid(tmp_path, tiny_models):
    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    out = tmp_path / "liver.nii.gz"
    report = tmp_path / "report.json"
    options = dict(scoring="salip", pred_iou_thresh=0.0, stability_score_thresh=0.0)
    salip.segment(
        ct, organs="liver", output=out, report=report, strategy="volume", **options, **tiny_models
    )
    image = nib.load(ct)
    mask = nib.load(out)
    assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
    strategy = json.loads(report.read_text())["strategy"]
    assert strategy["name"] == "volume"
    assert set(strategy["counts"]) == {
        "encoded_slices",
        "proposal_slices",
        "point_prompts",
        "box_prompts",
    }
    assert strategy["counts"]["proposal_slices"] == len(strategy["key_slices"]) < image.shape[2]
    # Only the grid points on the body are decoded: the air around it has none.
    full = 32 * 32 * len(strategy["key_slices"])
    assert 0.3 * full < strategy["counts"]["point_prompts"] < full
    whole = salip.segment(
        ct, organs="liver", write=False, strategy="volume", full_grid=True, **options,
        **tiny_models,
    )  # fmt: skip
    assert whole.report["strategy"]["counts"]["point_prompts"] == full


def test_slices_strategy_reports_its_work_too():
    labels = np.zeros(SHAPE, np.int16)
    _disc(labels, 1, (30, 30), 10, range(8, 27))
    config = SegmentConfig()
    anatomy = ReferenceAnatomy(labels, NAMES, axis="axial")
    engines = Engines(*simulated_engines(anatomy, noise_preset("none"), 0, config))
    result = SlicesStrategy.from_engines(engines, config, 4, StageTimer()).run(
        view_of(labels), [get_organ("liver")]
    )
    assert result.details["counts"] == {
        "encoded_slices": 40,
        "proposal_slices": 40,
        "point_prompts": 40 * 1024,
        "box_prompts": 19,
    }
    assert np.array_equal(result.masks["liver"], labels == 1)


def test_a_2d_image_runs_the_slices_strategy_and_slice_methods_refuse_volume(tiny_sam_path):
    from salip.api.factory import CaseInput, Models, build, cascade_strategy
    from salip.apps.bench.kinds import BENCH_METHODS
    from salip.core.errors import ConfigError
    from salip.models.sam import load_sam
    from salip.strategies.volume import VolumeStrategy

    config = SegmentConfig().replace(strategy="volume")
    labels = np.zeros((32, 32, 1), np.int16)
    anatomy = ReferenceAnatomy(labels, NAMES, axis="axial")
    engines = Engines(*simulated_engines(anatomy, noise_preset("none"), 0, config))
    liver = (get_organ("liver"),)
    flat = cascade_strategy(engines, config, CaseInput(liver, "ct", True), 4, StageTimer())
    deep = cascade_strategy(engines, config, CaseInput(liver, "ct", False), 4, StageTimer())
    assert isinstance(flat, SlicesStrategy) and isinstance(deep, VolumeStrategy)
    models = Models(load_sam(str(tiny_sam_path)), None, "cpu")
    with pytest.raises(ConfigError, match="slice by slice.*--strategy volume"):
        build("sam-unprompted", models, config, CaseInput(liver, "ct", False), kinds=BENCH_METHODS)


def test_an_organ_that_widens_fast_is_followed_not_stopped():
    """An area jump is a question for the recogniser, not a stop."""
    labels = np.zeros(SHAPE, np.int16)
    _disc(labels, 1, (30, 30), 6, range(10, 23))  # 113 mm², over the speck floor
    _disc(labels, 1, (30, 30), 14, range(23, 40))  # the liver's cross-section grows 5x
    result = run_volume(labels, ["liver"], min_key_slices=1, key_stride_mm=60.0)
    liver = track(result, "liver")
    assert liver["extent"] == [20, 20]  # one key slice; walks may go 15 mm (5 slices) past
    assert [s["reason"] for s in liver["stops"]] == ["left the extent"] * 2
    mask, organ = result.masks["liver"], labels == 1
    assert np.array_equal(mask[:, :, 15:23], organ[:, :, 15:23])
    # Past the jump each box prompt holds a part of the wider section, growing slice by slice.
    areas = [int(mask[:, :, k].sum()) for k in (22, 23, 24, 25)]
    assert not (mask & ~organ).any() and areas == sorted(areas) and areas[1] > areas[0]
    assert not mask[:, :, 26:].any() and not mask[:, :, :15].any()


def test_the_prompt_region_is_the_body_with_its_holes_filled(tmp_path):
    """Everything mode seeds parts on the body: above -500 HU, lungs (air inside the
    body) filled, 5 mm beyond the outline; the air around the body is left out."""
    data = np.full((60, 60, 2), -1000, np.int16)
    yy, xx = np.mgrid[:60, :60]
    radius = np.hypot(yy - 30, xx - 30)
    data[radius < 20] = 40  # the body, 1 mm pixels
    data[(radius < 8)] = -900  # a lung inside it
    path = tmp_path / "body.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0])), path)
    volume = read_input(path)
    view = VolumeView(volume, np.zeros(data.shape, np.uint8), "axial", np.ones(2, bool), "ct")
    region = view.prompt_region(0)
    assert region.shape == view.display_shape
    assert region[30, 30]  # the lung is filled
    distance = np.hypot(*(np.argwhere(region) - 30).T)
    assert 19 + 4 <= distance.max() <= 20 + 6  # 5 mm beyond the 20 mm outline
    assert not region[0, 0] and region.mean() < 0.7
    # Without CT numbers, the body is found in the 8-bit image.
    dark = np.where(data > -500, 100, 0).astype(np.uint8)
    assert (
        view.prompt_region(1).sum()
        == VolumeView(volume, dark, "axial", np.ones(2, bool), "mr").prompt_region(1).sum()
    )
