"""Masks come back in the input's exact grid: NIfTI (RAS, LPS, flipped), DICOM, 2D.

A threshold "segmenter" is injected through the public API, so the expected mask is known
voxel by voxel and can be computed independently from the file on disk.
"""

from __future__ import annotations

import json
import zipfile

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import salip
from salip.io.slicing import apply_window, percentile_normalise
from tests.conftest import SLICES, TOTALSEG, require_data

WINDOW = (400.0, 50.0)


class ThresholdSegmenter:
    """Marks every pixel whose 8-bit value exceeds 127 (channel 0) as the organ."""

    def __call__(self, images, organs, indices):
        return [{o.name: img[..., 0] > 127 for o in organs} for img in images]


def _run(tmp_path, source, **kwargs):
    out = tmp_path / "mask.nii.gz"
    result = salip.segment(
        source,
        organs=["liver"],
        output=out,
        report=tmp_path / "report.json",
        segmenter=ThresholdSegmenter(),
        largest_component=False,
        **kwargs,
    )
    return out, result


@pytest.mark.parametrize("name", ["example_ct_sm.nii.gz", "example_mr_sm.nii.gz"])
def test_nifti_round_trip_same_grid_same_voxels(tmp_path, name):
    path = require_data(TOTALSEG / name)
    source = nib.load(path)
    raw = np.asarray(source.dataobj)
    if name.startswith("example_ct"):
        out, result = _run(tmp_path, path, window="400,50")
        expected = apply_window(raw, *WINDOW) > 127
    else:
        out, result = _run(tmp_path, path)
        expected = percentile_normalise(raw, 0.5, 99.5) > 127
    written = nib.load(out)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(source.affine)
    assert written.get_data_dtype() == np.uint8
    data = np.asarray(written.dataobj)
    assert data.any() and not data.all()
    np.testing.assert_array_equal(data.astype(bool), expected)
    np.testing.assert_array_equal(result.masks["liver"].astype(bool), expected)


def test_flipped_slice_axis_reports_input_slice_indices(tmp_path):
    """An input stored inferior-to-superior reversed: report slice indices are the file's."""
    src = nib.load(require_data(TOTALSEG / "example_ct_sm.nii.gz"))
    data = np.asarray(src.dataobj)[:, :, ::-1]
    affine = src.affine.copy()
    affine[:, 2] *= -1
    affine[:3, 3] = src.affine[:3, :3] @ [0, 0, data.shape[2] - 1] + src.affine[:3, 3]
    assert nib.aff2axcodes(affine) == ("R", "A", "I")
    # Only slices 0..4 of the file have any foreground.
    data = data.copy()
    data[:, :, 5:] = -1000
    flipped = tmp_path / "flipped.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), flipped)
    out, result = _run(tmp_path, flipped, window="400,50")
    written = np.asarray(nib.load(out).dataobj)
    expected = apply_window(data, *WINDOW) > 127
    np.testing.assert_array_equal(written.astype(bool), expected)
    report = json.loads((tmp_path / "report.json").read_text())
    used = report["organs"]["liver"]["slices"]
    assert used == [k for k in range(data.shape[2]) if expected[:, :, k].any()]
    assert max(used) <= 4 and report["slicing"]["input_axis"] == 2


def _dicom_expected_in_grid(folder, grid: nib.Nifti1Image) -> np.ndarray:
    """HU of the DICOM series sampled at the world position of every voxel of ``grid``,
    computed from pydicom's tags alone (independent of salip's reader)."""
    import pydicom

    slices = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    ijk = np.indices(grid.shape).reshape(3, -1)
    ras = grid.affine[:3, :3] @ ijk + grid.affine[:3, 3:4]
    lps = ras * np.array([[-1.0], [-1.0], [1.0]])
    out = np.full(ijk.shape[1], np.nan)
    for ds in slices:
        ipp = np.array(ds.ImagePositionPatient, dtype=float)
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        row_dir, col_dir = iop[:3], iop[3:]
        normal = np.cross(row_dir, col_dir)
        d = lps - ipp[:, None]
        on_slice = np.abs(normal @ d) < 1e-3
        col = np.rint((row_dir @ d) / float(ds.PixelSpacing[1])).astype(int)
        row = np.rint((col_dir @ d) / float(ds.PixelSpacing[0])).astype(int)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        sel = on_slice & (row >= 0) & (row < ds.Rows) & (col >= 0) & (col < ds.Columns)
        out[sel] = hu[row[sel], col[sel]]
    assert not np.isnan(out).any(), "every grid voxel must fall on a DICOM pixel"
    return out.reshape(grid.shape)


@pytest.mark.parametrize("as_zip", [False, True])
def test_dicom_series_lands_in_reference_grid(tmp_path, as_zip):
    folder = require_data(TOTALSEG / "example_ct_dicom")
    reference = nib.load(require_data(TOTALSEG / "example_seg_dicom.nii.gz"))
    source = folder
    if as_zip:
        source = tmp_path / "series.zip"
        with zipfile.ZipFile(source, "w") as archive:
            for p in sorted(folder.iterdir()):
                archive.write(p, f"series/{p.name}")
    out, result = _run(tmp_path, source, window="400,50")
    written = nib.load(out)
    assert written.shape == reference.shape == (512, 512, 20)
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-4)
    assert nib.aff2axcodes(written.affine) == ("L", "A", "S")
    expected = apply_window(_dicom_expected_in_grid(folder, reference), *WINDOW) > 127
    np.testing.assert_array_equal(np.asarray(written.dataobj).astype(bool), expected)
    # The reference liver label must sit on liver-like HU in our grid.
    hu = _dicom_expected_in_grid(folder, reference)
    liver = np.asarray(reference.dataobj) == 5
    assert 40 < hu[liver].mean() < 200
    assert result.report["input"]["slices"] == 20


def test_2d_nifti_keeps_its_shape(tmp_path):
    src = nib.load(require_data(TOTALSEG / "example_ct_sm.nii.gz"))
    plane = np.asarray(src.dataobj)[:, :, 15]
    path = tmp_path / "plane.nii.gz"
    nib.save(nib.Nifti1Image(plane, src.affine), path)
    out, _ = _run(tmp_path, path, window="400,50")
    written = nib.load(out)
    assert written.shape == plane.shape
    np.testing.assert_array_equal(
        np.asarray(written.dataobj).astype(bool), apply_window(plane, *WINDOW) > 127
    )


def test_png_mask_same_size_and_pixels(tmp_path):
    path = require_data(SLICES / "images" / "amos_0006_90.png")
    out = tmp_path / "mask.png"
    salip.segment(path, organs=["liver"], output=out, segmenter=ThresholdSegmenter(), modality="ct")
    mask = np.asarray(Image.open(out))
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert mask.shape == pixels.shape[:2] and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask.astype(bool), pixels[..., 0] > 127)


def test_slices_with_most_and_slice_counts():
    from salip.io.orientation import in_plane_axes, slice_counts, slices_with_most

    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[:2, :2, 1] = 1  # 4 voxels on axial slice 1
    labels[:3, :3, 4] = 2  # 9 on slice 4
    labels[:2, :2, 5] = 1  # 4 on slice 5, a tie with slice 1
    assert in_plane_axes("axial") == (0, 1) and in_plane_axes("coronal") == (0, 2)
    assert slice_counts(labels, "axial").tolist() == [0, 4, 0, 0, 9, 4]
    assert slices_with_most(labels, "axial", 2) == [1, 4]  # the tie goes to the lower index
    assert slices_with_most(labels, "axial", 10) == [0, 1, 2, 3, 4, 5]
    assert slice_counts(labels, "sagittal").tolist() == [7, 7, 3, 0]  # 2 + 3 + 2 at x = 0
