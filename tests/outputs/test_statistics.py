"""Per-organ statistics (salip.outputs.statistics): checked against an independent computation
with nibabel and plain numpy on the shared CT, and against hand-computed answers on small
synthetic volumes (flipped, non-unit spacing), a 2D RGB image and empty organs."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from salip.core.errors import InputError, OutputError
from salip.outputs.statistics import DECIMALS, organ_statistics
from tests.conftest import TOTALSEG, LabelStrategy, require_data

#: Results are rounded to 4 decimals: within 5e-5 of the exact value, plus float noise.
TOL = 0.5 * 10.0**-DECIMALS + 1e-9

#: Labels of the shared CT's segmentation checked against the reference; pancreas has 3
#: components with 26-connectivity but 5 with 6-connectivity, lung_middle_lobe_right is a
#: single voxel.
CT_LABELS = (5, 1, 2, 7, 13)


def _ct() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """The shared CT (float32 HU, as salip holds it), its label map, affine and names."""
    image = nib.load(require_data(TOTALSEG / "example_ct_sm.nii.gz"))
    seg = nib.load(require_data(TOTALSEG / "example_seg.nii.gz"))
    names = json.loads(require_data(TOTALSEG / "labels_total.json").read_text())
    assert np.allclose(image.affine, seg.affine)
    hu = np.asarray(image.get_fdata(dtype=np.float32))
    return hu, np.asarray(seg.dataobj), image.affine, {names[str(v)]: v for v in CT_LABELS}


def _reference(hu: np.ndarray, labels: np.ndarray, value: int, affine: np.ndarray) -> dict:
    """One organ's statistics by plain numpy, without salip's code paths: every voxel is
    mapped to the world (the CT's affine is diagonal, so the world box of the voxels is the
    box of the 8 corners)."""
    mask = labels == value
    ijk = np.argwhere(mask)
    world = np.array([affine @ [i, j, k, 1.0] for i, j, k in ijk])[:, :3]
    values = hu[mask].astype(np.float64)
    centroid = ijk.mean(axis=0)
    return {
        "voxels": len(ijk),
        "volume_ml": len(ijk) * abs(np.linalg.det(affine[:3, :3])) / 1000,
        "mean": np.mean(values),
        "std": np.std(values),
        "median": np.median(values),
        "p5": np.percentile(values, 5),
        "p95": np.percentile(values, 95),
        "bbox_min": ijk.min(axis=0),
        "bbox_max": ijk.max(axis=0),
        "bbox_mm_min": world.min(axis=0),
        "bbox_mm_max": world.max(axis=0),
        "centroid": centroid,
        "centroid_mm": (affine @ [*centroid, 1.0])[:3],
        "components": ndimage.label(mask, structure=np.ones((3, 3, 3)))[1],
        "slices": sorted(set(ijk[:, 2].tolist())),
    }


def _assert_matches(got: dict, ref: dict) -> None:
    assert got["voxels"] == ref["voxels"]
    assert got["volume_ml"] == pytest.approx(ref["volume_ml"], abs=1e-6)
    for key in ("mean", "std", "median", "p5", "p95"):
        assert got["intensity"][key] == pytest.approx(ref[key], abs=TOL), key
    assert got["intensity"]["voxels"] == ref["voxels"]
    assert got["bbox_voxels"] == {"min": ref["bbox_min"].tolist(), "max": ref["bbox_max"].tolist()}
    assert got["bbox_mm"]["min"] == pytest.approx(ref["bbox_mm_min"], abs=TOL)
    assert got["bbox_mm"]["max"] == pytest.approx(ref["bbox_mm_max"], abs=TOL)
    assert got["centroid_voxels"] == pytest.approx(ref["centroid"], abs=TOL)
    assert got["centroid_mm"] == pytest.approx(ref["centroid_mm"], abs=TOL)
    assert got["components"] == ref["components"]
    slices = got["slices"]
    assert slices["indices"] == ref["slices"]
    assert (slices["first"], slices["last"], slices["count"]) == (
        ref["slices"][0],
        ref["slices"][-1],
        len(ref["slices"]),
    )


def _all_floats(value: object) -> list[float]:
    """Every float in a JSON-like structure."""
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [f for v in value.values() for f in _all_floats(v)]
    if isinstance(value, list):
        return [f for v in value for f in _all_floats(v)]
    return []


def test_ct_statistics_match_an_independent_numpy_computation():
    hu, labels, affine, names = _ct()
    assert np.count_nonzero(affine[:3, :3] - np.diag(np.diag(affine[:3, :3]))) == 0
    result = organ_statistics(hu, labels, names, affine, is_2d=False, slice_axis=2, units="HU")
    assert result["units"] == "HU"
    assert "RAS+" in result["convention"] and "LPS" in result["convention"]
    assert list(result["organs"]) == list(names)
    for name, value in names.items():
        got = result["organs"][name]
        assert got["label"] == value
        assert got["area_px"] is None and got["area_mm2"] is None
        _assert_matches(got, _reference(hu, labels, value, affine))
    assert result["organs"]["pancreas"]["components"] == 3  # 5 with 6-connectivity
    liver = result["organs"]["liver"]
    assert liver["volume_ml"] == pytest.approx(38634 * 27 / 1000)
    assert liver["centroid_mm"][0] > 0 > result["organs"]["spleen"]["centroid_mm"][0]  # RAS+
    single = result["organs"]["lung_middle_lobe_right"]
    assert single["intensity"]["std"] == 0.0
    assert single["intensity"]["p5"] == single["intensity"]["p95"] == single["intensity"]["mean"]


def test_results_are_rounded_json_without_nan():
    hu, labels, affine, names = _ct()
    result = organ_statistics(
        hu, labels, names | {"brain": 90}, affine, is_2d=False, slice_axis=2, units="HU"
    )
    json.dumps(result, allow_nan=False)  # raises on NaN or numpy types
    floats = _all_floats(result["organs"])
    assert floats and all(type(f) is float for f in floats)
    assert all(round(f, DECIMALS) == f for f in floats)


def test_statistics_do_not_depend_on_how_the_file_stores_the_axes():
    """The CT stored with i and k reversed (affine adjusted): world values are the same,
    indices mirror."""
    hu, labels, affine, names = _ct()
    shape = np.array(hu.shape)
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    flip[:3, 3] = [shape[0] - 1, 0, shape[2] - 1]
    flipped_affine = affine @ flip
    kwargs = {"is_2d": False, "slice_axis": 2, "units": "HU"}
    plain = organ_statistics(hu, labels, names, affine, **kwargs)["organs"]
    mirrored = organ_statistics(
        hu[::-1, :, ::-1], labels[::-1, :, ::-1], names, flipped_affine, **kwargs
    )["organs"]
    for name in names:
        a, b = plain[name], mirrored[name]
        for key in ("voxels", "volume_ml", "intensity", "components"):
            assert a[key] == b[key], key
        assert a["bbox_mm"]["min"] == pytest.approx(b["bbox_mm"]["min"], abs=2 * TOL)
        assert a["bbox_mm"]["max"] == pytest.approx(b["bbox_mm"]["max"], abs=2 * TOL)
        assert a["centroid_mm"] == pytest.approx(b["centroid_mm"], abs=2 * TOL)
        assert b["bbox_voxels"]["min"][0] == shape[0] - 1 - a["bbox_voxels"]["max"][0]
        assert b["bbox_voxels"]["max"][2] == shape[2] - 1 - a["bbox_voxels"]["min"][2]
        assert b["slices"]["indices"] == sorted(shape[2] - 1 - k for k in a["slices"]["indices"])


def test_statistics_of_salips_own_reading_of_a_reoriented_file(tmp_path):
    """The pipeline's recipe (read_input, to_source_grid, geometry.affine,
    source_slice_indices) gives the statistics of the file as stored, here LPS."""
    from salip.io import read_input, source_slice_indices, to_source_grid

    hu, labels, affine, names = _ct()
    shape = np.array(hu.shape)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = [shape[0] - 1, shape[1] - 1, 0]
    lps_hu, lps_labels, lps_affine = hu[::-1, ::-1], labels[::-1, ::-1], affine @ flip
    path = tmp_path / "lps.nii.gz"
    nib.save(nib.Nifti1Image(lps_hu, lps_affine), path)
    assert nib.aff2axcodes(nib.load(path).affine) == ("L", "P", "S")

    volume = read_input(path)
    axis, _ = source_slice_indices(volume, "axial", [0])
    source = to_source_grid(volume.data, volume.geometry)
    kwargs = {"is_2d": False, "slice_axis": axis, "units": "HU"}
    got = organ_statistics(source, lps_labels, names, volume.geometry.affine, **kwargs)
    for name, value in names.items():
        _assert_matches(got["organs"][name], _reference(lps_hu, lps_labels, value, lps_affine))


def _two_cubes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 20x16x12 volume: label 1 is a 4x4x4 cube of 100 at i 2..5, j 3..6, k 1..4 and a
    2x2x2 cube of 10 at i, j 10..11, k 8..9; label 3 two voxels touching at a corner only.
    Spacing 2 x 1.5 x 3 mm with i and k flipped: x = 10 - 2i, y = 1.5j - 5, z = 30 - 3k."""
    labels = np.zeros((20, 16, 12), dtype=np.uint8)
    image = np.full(labels.shape, -1000.0, dtype=np.float32)
    labels[2:6, 3:7, 1:5] = 1
    image[2:6, 3:7, 1:5] = 100
    labels[10:12, 10:12, 8:10] = 1
    image[10:12, 10:12, 8:10] = 10
    labels[15, 1, 1] = labels[16, 2, 2] = 3
    affine = np.array(
        [[-2.0, 0, 0, 10], [0, 1.5, 0, -5], [0, 0, -3.0, 30], [0, 0, 0, 1]], dtype=np.float64
    )
    return image, labels, affine


def test_flipped_anisotropic_affine_gives_the_hand_computed_answers():
    image, labels, affine = _two_cubes()
    result = organ_statistics(
        image, labels, {"organ": 1, "corners": 3}, affine, is_2d=False, slice_axis=2, units="HU"
    )
    organ = result["organs"]["organ"]
    assert organ["voxels"] == 72
    assert organ["volume_ml"] == pytest.approx(72 * 9 / 1000)  # 2 * 1.5 * 3 mm3 per voxel
    assert organ["components"] == 2
    assert organ["bbox_voxels"] == {"min": [2, 3, 1], "max": [11, 11, 9]}
    assert organ["bbox_mm"]["min"] == pytest.approx([-12.0, -0.5, 3.0], abs=TOL)
    assert organ["bbox_mm"]["max"] == pytest.approx([6.0, 11.5, 27.0], abs=TOL)
    centroid = [308 / 72, 372 / 72, 228 / 72]
    assert organ["centroid_voxels"] == pytest.approx(centroid, abs=TOL)
    expected_mm = [10 - 2 * centroid[0], 1.5 * centroid[1] - 5, 30 - 3 * centroid[2]]
    assert organ["centroid_mm"] == pytest.approx(expected_mm, abs=TOL)
    assert organ["centroid_mm"] == pytest.approx([1.4444, 2.75, 20.5], abs=TOL)
    # 64 voxels of 100 and 8 of 10: mean 90, population variance 800 (ddof=1: 811.3).
    intensity = organ["intensity"]
    assert intensity["mean"] == 90.0
    assert intensity["std"] == pytest.approx(800**0.5, abs=TOL)
    assert (intensity["median"], intensity["p5"], intensity["p95"]) == (100.0, 10.0, 100.0)
    assert organ["slices"] == {
        "axis": 2,
        "first": 1,
        "last": 9,
        "count": 6,
        "indices": [1, 2, 3, 4, 8, 9],
    }
    assert result["organs"]["corners"]["components"] == 1  # 26-connectivity: corners touch


def test_slice_axis_picks_the_array_axis():
    image, labels, affine = _two_cubes()
    organ = organ_statistics(
        image, labels, {"organ": 1}, affine, is_2d=False, slice_axis=0, units="HU"
    )["organs"]["organ"]
    assert organ["slices"]["axis"] == 0
    assert organ["slices"]["indices"] == [2, 3, 4, 5, 10, 11]


def test_empty_organ_has_zeros_and_none_never_nan():
    image, labels, affine = _two_cubes()
    result = organ_statistics(
        image, labels, {"absent": 7}, affine, is_2d=False, slice_axis=2, units="HU"
    )
    empty = result["organs"]["absent"]
    assert empty == {
        "label": 7,
        "voxels": 0,
        "volume_ml": 0.0,
        "area_px": None,
        "area_mm2": None,
        "intensity": {
            "voxels": 0,
            "mean": None,
            "std": None,
            "median": None,
            "p5": None,
            "p95": None,
        },
        "bbox_voxels": None,
        "bbox_mm": None,
        "centroid_voxels": None,
        "centroid_mm": None,
        "components": 0,
        "slices": {"axis": 2, "first": None, "last": None, "count": 0, "indices": []},
    }
    json.dumps(result, allow_nan=False)


def test_non_finite_voxels_are_left_out_of_intensities_only():
    image, labels, affine = _two_cubes()
    image[10, 10, 8] = np.nan  # a voxel of the small cube (value 10)
    finite = np.ones(image.shape, dtype=bool)
    finite[11, 11, 9] = False  # another, as Volume.finite_mask marks a replaced value
    organ = organ_statistics(
        image,
        labels,
        {"organ": 1},
        affine,
        is_2d=False,
        slice_axis=2,
        units="HU",
        finite=finite,
    )["organs"]["organ"]
    assert organ["voxels"] == 72
    assert organ["intensity"]["voxels"] == 70
    assert organ["intensity"]["mean"] == pytest.approx((6400 + 60) / 70, abs=TOL)
    json.dumps(organ, allow_nan=False)


def test_2d_rgb_image_uses_the_grey_value_and_pixel_areas():
    """A 40x30 RGB image (PNG-like uint8): a 5x5 square and a pixel touching its corner
    (one organ with 8-connectivity) and a separate 2x3 block: two components."""
    labels = np.zeros((40, 30), dtype=np.uint8)
    rgb = np.zeros((40, 30, 3), dtype=np.uint8)
    labels[5:10, 10:15] = 2
    labels[10, 15] = 2
    rgb[5:11, 10:16] = (30, 60, 90)  # grey 60
    labels[30:32, 3:6] = 2
    rgb[30:32, 3:6] = (0, 0, 120)  # grey 40
    result = organ_statistics(
        rgb, labels, {"organ": 2, "none": 4}, np.eye(4), is_2d=True, slice_axis=None, units=""
    )
    organ = result["organs"]["organ"]
    assert organ["voxels"] == organ["area_px"] == 32
    assert organ["volume_ml"] is None and organ["area_mm2"] is None
    assert organ["bbox_mm"] is None and organ["centroid_mm"] is None
    assert organ["bbox_voxels"] == {"min": [5, 3], "max": [31, 15]}
    rows, cols = np.nonzero(labels == 2)
    assert organ["centroid_voxels"] == pytest.approx([rows.mean(), cols.mean()], abs=TOL)
    assert organ["components"] == 2
    assert organ["intensity"]["mean"] == pytest.approx((26 * 60 + 6 * 40) / 32, abs=TOL)
    assert organ["intensity"]["median"] == 60.0
    assert organ["slices"] == {"axis": None, "first": 0, "last": 0, "count": 1, "indices": [0]}
    none = result["organs"]["none"]
    assert none["area_px"] == 0 and none["volume_ml"] is None and none["components"] == 0
    assert none["slices"]["indices"] == [] and none["intensity"]["mean"] is None
    grey = organ_statistics(
        rgb.mean(axis=2, keepdims=True),
        labels,
        {"organ": 2},
        np.eye(4),
        is_2d=True,
        slice_axis=None,
        units="",
    )["organs"]["organ"]
    assert grey == organ


def test_2d_nifti_is_one_slice_with_a_volume():
    labels = np.zeros((8, 6), dtype=np.int16)
    labels[2:4, 1:3] = 1
    affine = np.diag([0.5, 0.5, 4.0, 1.0])
    organ = organ_statistics(
        labels.astype(np.float32),
        labels,
        {"organ": 1},
        affine,
        is_2d=False,
        slice_axis=2,
        units="HU",
    )["organs"]["organ"]
    assert organ["volume_ml"] == pytest.approx(4 * 0.5 * 0.5 * 4 / 1000)
    assert organ["bbox_voxels"] == {"min": [2, 1], "max": [3, 2]}
    assert organ["centroid_mm"] == pytest.approx([1.25, 0.75, 0.0])
    assert organ["slices"]["indices"] == [0]


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"labels": np.zeros((20, 16, 11), dtype=np.uint8)}, OutputError, "one grid"),
        ({"labels": np.zeros((20, 16, 12), dtype=np.float32)}, OutputError, "not integer"),
        ({"label_values": {"organ": 0}}, OutputError, "positive"),
        ({"label_values": {"organ": 1.0}}, OutputError, "positive"),
        ({"slice_axis": None}, OutputError, "slice axis"),
        ({"slice_axis": 3}, OutputError, "out of range"),
        ({"affine": np.full((4, 4), np.nan)}, InputError, "finite"),
        ({"affine": np.diag([1.0, 0.0, 1.0, 1.0])}, InputError, "singular"),
    ],
)
def test_bad_arguments_raise_errors_that_say_what_to_do(change, error, words):
    image, labels, affine = _two_cubes()
    args = {"labels": labels, "label_values": {"organ": 1}, "affine": affine, "slice_axis": 2}
    args |= change
    with pytest.raises(error, match=words):
        organ_statistics(
            image,
            args["labels"],
            args["label_values"],
            args["affine"],
            is_2d=False,
            slice_axis=args["slice_axis"],
            units="HU",
        )


def test_percentiles_interpolate_linearly():
    """Values 0..9: median 4.5, p5 0.45, p95 8.55 (numpy's default linear method)."""
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    image = np.zeros(labels.shape, dtype=np.int16)
    labels.flat[:10] = 1
    image.flat[:10] = np.arange(10)[::-1]
    intensity = organ_statistics(
        image, labels, {"organ": 1}, np.eye(4), is_2d=False, slice_axis=2, units="HU"
    )["organs"]["organ"]["intensity"]
    assert intensity == {
        "voxels": 10,
        "mean": 4.5,
        "std": pytest.approx(8.25**0.5, abs=TOL),
        "median": 4.5,
        "p5": 0.45,
        "p95": 8.55,
    }


def test_segment_writes_statistics_of_its_mask_over_the_image(tmp_path):
    """salip.segment(statistics=...) against numpy over the written mask and the image as
    nibabel reads it; the same statistics are embedded in the report."""
    import salip
    from salip.io import read_input, to_canonical

    path = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    hu, labels, affine, _ = _ct()
    values = {"liver": 5, "spleen": 1, "pancreas": 7}
    canonical = to_canonical(labels, read_input(path).geometry)
    result = salip.segment(
        path,
        organs=list(values),
        output=tmp_path / "m.nii.gz",
        statistics=tmp_path / "stats.json",
        report=tmp_path / "report.json",
        segmenter=LabelStrategy(canonical, values),
        largest_component=False,
    )
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert json.loads((tmp_path / "report.json").read_text())["statistics"] == stats
    assert stats == result.report["statistics"] and stats["units"] == "HU"
    written = np.asarray(nib.load(tmp_path / "m.nii.gz").dataobj)
    for name, value in values.items():
        label = result.label_values[name]
        assert np.array_equal(written == label, labels == value)  # the mask as written
        _assert_matches(stats["organs"][name], _reference(hu, written, label, affine))


def test_a_2d_image_is_not_reported_in_hu(tmp_path):
    """An 8-bit PNG with --modality ct holds display values: the statistics and the viewer
    do not call them HU (the viewer offers no HU windows)."""
    import salip
    from tests.conftest import SLICES

    png = require_data(SLICES / "images" / "amos_0004_75.png")
    result = salip.segment(
        png, organs="liver", modality="ct", output=tmp_path / "m.png",
        statistics=tmp_path / "s.json", viewer=tmp_path / "v.html",
        segmenter=lambda images, organs, indices: [
            {o.name: np.ones(im.shape[:2], dtype=bool) for o in organs} for im in images
        ],
    )  # fmt: skip
    units = json.loads((tmp_path / "s.json").read_text())["units"]
    assert units == result.report["statistics"]["units"]
    assert "HU" not in units.replace("not HU", "") and units.startswith("the image's pixel")
    html = (tmp_path / "v.html").read_text()
    assert '"units":"' in html and '"modality":' in html  # the keys the checks look at
    assert '"units":"HU"' not in html and '"modality":"ct"' not in html
