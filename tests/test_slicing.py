"""Windowing, normalisation and the display orientation of slices."""

from __future__ import annotations

import numpy as np
import pytest

from salip.core.config import SegmentConfig, SliceConfig
from salip.core.errors import ConfigError
from salip.core.organs import get_organ
from salip.io import read_input
from salip.io.slicing import (
    apply_window,
    choose_intensity,
    from_display,
    iter_slices,
    parse_window,
    percentile_normalise,
    to_display,
)
from tests.conftest import SLICES, TOTALSEG, require_data


def test_window_presets_and_custom():
    assert parse_window("liver") == (150.0, 30.0)
    assert parse_window("400,50") == (400.0, 50.0)
    with pytest.raises(ConfigError, match="abdomen"):
        parse_window("soft")
    with pytest.raises(ConfigError, match="need 0 < width"):
        parse_window("0,10")
    for bad in ("inf,0", "nan,40", "1e308,-1e308", "400,1e6"):
        with pytest.raises(ConfigError, match=f"window '{bad}'"):
            parse_window(bad)
    with pytest.raises(ConfigError, match="must be finite"):
        SegmentConfig().replace(window="inf,0")  # refused with the settings, before reading


def test_apply_window_endpoints():
    hu = np.array([-1000, -150, 50, 250, 3000])
    assert apply_window(hu, 400, 50).tolist() == [0, 0, 128, 255, 255]


def test_percentile_normalise_is_global_and_clipped():
    values = np.arange(1000, dtype=np.float32)
    out = percentile_normalise(values, 1, 99)
    assert out.dtype == np.uint8 and out[0] == 0 and out[-1] == 255
    assert 120 < out[500] < 135


def test_display_orientation_round_trip():
    canonical = np.arange(12).reshape(3, 4)  # [x (R), y (A)]
    display = to_display(canonical)
    assert display.shape == (4, 3)
    # Top row is the most anterior y; left column is the most rightward x (patient right).
    assert display[0, 0] == canonical[2, 3]
    np.testing.assert_array_equal(from_display(display), canonical)


def test_intensity_choice():
    ct = read_input(require_data(TOTALSEG / "example_ct_sm.nii.gz"))
    mr = read_input(require_data(TOTALSEG / "example_mr_sm.nii.gz"))
    png = read_input(require_data(SLICES / "images" / "amos_0004_75.png"))
    liver, lungs = [get_organ("liver")], [get_organ("lungs")]
    assert choose_intensity(ct, liver, SliceConfig()).width == 150.0
    assert choose_intensity(ct, lungs, SliceConfig()).level == -600.0
    assert choose_intensity(ct, liver + lungs, SliceConfig()).width == 400.0  # abdomen
    assert choose_intensity(mr, liver, SliceConfig()).method == "percentile"
    ct2d = SliceConfig(modality="ct")  # the AMOS slices are CT, and nothing in them says so
    assert choose_intensity(png, liver, ct2d).method == "unchanged"
    assert choose_intensity(png, liver, SliceConfig(modality="ct", window="bone")).method == (
        "window"
    )
    forced = choose_intensity(mr, liver, SliceConfig(modality="ct"))
    assert forced.method == "window"


@pytest.mark.parametrize("axis,shape", [("axial", (101, 122)), ("coronal", (30, 122)),
                                         ("sagittal", (30, 101))])  # fmt: skip
def test_slices_per_axis(axis, shape):
    volume = np.zeros((122, 101, 30), dtype=np.uint8)
    slices = list(iter_slices(volume, False, axis))
    assert slices[0][1].shape == (*shape, 3)
    assert len(slices) == {"axial": 30, "coronal": 101, "sagittal": 122}[axis]


def test_modality_of_2d_images_is_never_assumed(tmp_path):
    """A 2D image says its modality by metadata or name, or --modality is asked for."""
    from PIL import Image

    from salip.core.errors import ConfigError
    from salip.io.slicing import detect_modality

    pixels = np.zeros((32, 32), dtype=np.uint8)
    for name, expected in [("chest_cxr_01.png", "xray"), ("liver-CT.png", "ct"),
                           ("mri_t2.png", "mr"), ("us/frame7.png", "us")]:  # fmt: skip
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(path)
        modality, reason = detect_modality(read_input(path))
        assert modality == expected, name
        assert "in the file path" in reason
    tagged = tmp_path / "tagged.png"
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Modality", "MR")
    Image.fromarray(pixels).save(tagged, pnginfo=info)
    assert detect_modality(read_input(tagged)) == ("mr", "image metadata")
    png = read_input(require_data(SLICES / "images" / "amos_0004_75.png"))
    with pytest.raises(ConfigError, match="--modality"):
        choose_intensity(png, [get_organ("liver")], SliceConfig())
    given = choose_intensity(png, [get_organ("liver")], SliceConfig(modality="ct"))
    assert (given.modality, given.modality_from) == ("ct", "--modality")


def test_a_2d_image_takes_the_one_modality_its_targets_share(tmp_path):
    """No tag or word says the modality, and the targets asked for share one modality
    only: that one is used, and the reason recorded; otherwise --modality is still asked
    for."""
    import shutil

    from salip.io.slicing import choose_intensity

    path = tmp_path / "scan.png"
    shutil.copy(require_data(SLICES / "images" / "amos_0004_75.png"), path)
    volume = read_input(path)
    only_ct = get_organ("celiac_trunk")
    assert only_ct.modalities == ("ct",)
    intensity = choose_intensity(volume, [only_ct], SliceConfig())
    assert intensity.modality == "ct"
    assert intensity.modality_from == "the only modality celiac_trunk is defined for"
    both = choose_intensity(volume, [only_ct, get_organ("liver")], SliceConfig())
    assert both.modality == "ct"  # the only modality both are defined for
    with pytest.raises(ConfigError, match="pass --modality"):
        choose_intensity(volume, [get_organ("liver")], SliceConfig())  # ct, mr, ...
