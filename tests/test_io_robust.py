"""salip.io on damaged, hostile and unusual inputs, generated into tmp_path.

Every user-facing failure must be one InputError line that says what to do next; every
unusual-but-valid input must read with its geometry exact.
"""

from __future__ import annotations

import gzip
import logging
import shutil
import tracemalloc
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel import orientations as nio
from PIL import Image, PngImagePlugin

from salip import io as sio
from salip.core.errors import InputError
from salip.io import check_plane_size, read_input
from salip.io.orientation import to_source_grid
from salip.io.writing import write_mask
from tests.conftest import TOTALSEG, require_data

CT = TOTALSEG / "example_ct_sm.nii.gz"
DICOM = TOTALSEG / "example_ct_dicom_uids"


def _error(func, *args, **kwargs) -> str:
    """The message of the InputError ``func`` raises; it must be a single line."""
    with pytest.raises(InputError) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message, message
    return message


def _ct() -> nib.Nifti1Image:
    return nib.load(require_data(CT))


# ----------------------------------------------------------------------------- memory, size


def _huge_claim(path: Path, suffix_gz: bool = True) -> Path:
    """A tiny file whose header claims 1024^3 float32 voxels (4 GiB)."""
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 1024))
    header.set_data_dtype(np.float32)
    header.set_qform(np.eye(4), code=1)
    raw = header.binaryblock + b"\0" * 4 + b"\x3f" * 4000
    path.write_bytes(gzip.compress(raw) if suffix_gz else raw)
    return path


def test_huge_gz_claim_fails_before_allocating(tmp_path):
    path = _huge_claim(tmp_path / "huge.nii.gz")
    assert path.stat().st_size < 4096
    tracemalloc.start()
    try:
        message = _error(read_input, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "huge.nii.gz" in message and "truncated or corrupt" in message
    assert "the header claims 4,294,967,296 bytes" in message  # 1024^3 x 4 (+ vox_offset 0)
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_huge_uncompressed_claim_is_truncated(tmp_path):
    path = _huge_claim(tmp_path / "huge.nii", suffix_gz=False)
    message = _error(read_input, path)
    assert "truncated: header claims 4,294,967,296 bytes, file has 4,352" in message


def test_truncated_and_empty_and_garbage_nifti(tmp_path):
    whole = tmp_path / "whole.nii"
    nib.save(_ct(), whole)
    raw = whole.read_bytes()
    cut = tmp_path / "cut.nii"
    cut.write_bytes(raw[: len(raw) // 2])
    assert "truncated: header claims" in _error(read_input, cut)
    gz = require_data(CT).read_bytes()
    cut_gz = tmp_path / "cut.nii.gz"
    cut_gz.write_bytes(gz[: len(gz) // 2])  # within gzip's ratio: fails while reading data
    assert "truncated or corrupt image data" in _error(read_input, cut_gz)
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    assert "empty file (0 bytes)" in _error(read_input, empty)
    rng = np.random.default_rng(0)
    for name in ("junk.nii", "junk.nii.gz"):
        (tmp_path / name).write_bytes(rng.bytes(2000))
        assert "cannot read NIfTI" in _error(read_input, tmp_path / name)


def test_voxel_limit_applies_to_every_input_kind(tmp_path):
    message = _error(read_input, require_data(CT), max_voxels=1000)
    assert "369,660 voxels, over the limit of 1,000" in message
    assert "--max-voxels 369660" in message
    assert read_input(require_data(CT), max_voxels=369660).data.shape == (122, 101, 30)
    message = _error(read_input, require_data(DICOM), max_voxels=512 * 512 * 19)
    assert "20 slices of 512x512" in message and "--max-voxels" in message
    png = tmp_path / "ct.png"
    Image.new("L", (40, 30)).save(png)
    assert "--max-voxels" in _error(read_input, png, max_voxels=1199)
    assert read_input(png, max_voxels=1200).data.shape == (30, 40, 1)


def test_bad_keywords():
    assert "--dicom-gaps error|resample" in _error(read_input, CT, dicom_gaps="fill")
    assert "--max-voxels" in _error(read_input, CT, max_voxels=0)


# ----------------------------------------------------------------------------- NIfTI layouts


def test_rgb_4d_5d_nifti(tmp_path):
    rgb = np.zeros((20, 20, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii.gz")
    message = _error(read_input, tmp_path / "rgb.nii.gz")
    assert "RGB NIfTI" in message and "convert it" in message
    four = np.zeros((20, 20, 4, 3), np.float32)
    nib.save(nib.Nifti1Image(four, np.eye(4)), tmp_path / "4d.nii.gz")
    assert "pick one with --channel N (0..2)" in _error(read_input, tmp_path / "4d.nii.gz")
    assert "--channel 0..2" in _error(read_input, tmp_path / "4d.nii.gz", channel=3)
    five = np.zeros((20, 20, 4, 1, 2), np.float32)
    nib.save(nib.Nifti1Image(five, np.eye(4)), tmp_path / "5d.nii.gz")
    message = _error(read_input, tmp_path / "5d.nii.gz")
    assert "5D image" in message and "save one 3D volume first" in message
    # Trailing singleton axes are not extra dimensions.
    single = np.arange(20 * 20 * 4, dtype=np.float32).reshape(20, 20, 4, 1, 1)
    nib.save(nib.Nifti1Image(single, np.eye(4)), tmp_path / "single.nii.gz")
    volume = read_input(tmp_path / "single.nii.gz")
    assert volume.geometry.shape == (20, 20, 4)
    np.testing.assert_array_equal(volume.data, single[..., 0, 0])


def test_4d_channel_reads_only_that_volume(tmp_path):
    data = np.stack([np.full((20, 20, 4), c, np.int16) for c in range(3)], axis=-1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "4d.nii.gz")
    volume = read_input(tmp_path / "4d.nii.gz", channel=1, max_voxels=20 * 20 * 4)
    assert volume.geometry.shape == (20, 20, 4) and np.all(volume.data == 1)


# ----------------------------------------------------------------------------- affines


def _with_forms(
    data: np.ndarray, sform: np.ndarray | None, qform: np.ndarray | None, path: Path
) -> Path:
    """Save ``data`` with the given sform/qform (None: code 0), bypassing nibabel's checks."""
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    if qform is not None:
        header.set_qform(qform, code=1)
    if sform is not None:  # set the rows directly: set_sform would accept any matrix anyway
        header["srow_x"], header["srow_y"], header["srow_z"] = sform[:3]
        header["sform_code"] = 1
    nib.save(nib.Nifti1Image(data, None, header=header), path)
    return path


@pytest.mark.parametrize("broken", ["zero column", "nan"])
def test_broken_affine_is_one_line(tmp_path, broken):
    data = np.zeros((20, 20, 4), np.int16)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    if broken == "zero column":
        affine[:3, 1] = 0.0
    else:
        affine[0, 0] = np.nan
    path = _with_forms(data, affine, None, tmp_path / "bad.nii.gz")
    message = _error(read_input, path)
    assert "sform affine" in message and "fslorient" in message and "set_sform" in message


def test_broken_sform_falls_back_to_valid_qform(tmp_path, caplog):
    data = np.arange(20 * 20 * 4, dtype=np.int16).reshape(20, 20, 4)
    sform = np.diag([3.0, 3.0, 3.0, 1.0])
    sform[:3, 1] = 0.0
    qform = np.diag([2.0, 2.0, 2.0, 1.0])
    path = _with_forms(data, sform, qform, tmp_path / "fallback.nii.gz")
    with caplog.at_level(logging.WARNING, logger="salip.io"):
        volume = read_input(path)
    assert volume.meta["affine_source"] == "qform"
    np.testing.assert_allclose(volume.geometry.affine, qform)
    assert any("using the qform" in r.getMessage() for r in caplog.records)
    out = tmp_path / "mask.nii.gz"
    write_mask(out, to_source_grid(volume.data, volume.geometry), volume.geometry)
    np.testing.assert_allclose(nib.load(out).affine, qform)


def test_no_forms_and_nan_pixdim_is_refused(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((20, 20, 4))
    header.set_data_dtype(np.int16)
    header["pixdim"][1:4] = [1.0, np.nan, 1.0]  # nibabel itself replaces a 0 by 1
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 4), np.int16), None, header), tmp_path / "p.nii")
    assert "pixdim" in _error(read_input, tmp_path / "p.nii")


def _rotation(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    affine = np.eye(4)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine[:3, :3] = rot @ np.diag([3.0, 2.5, 4.0])
    affine[:3, 3] = [-70.0, 40.0, 12.5]
    return affine


def _sheared() -> np.ndarray:
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[0, 1] = 0.6
    affine[2, 0] = -0.4
    affine[:3, 3] = [-70.0, 40.0, 12.5]
    return affine


def _flipped_oblique() -> np.ndarray:
    return _rotation(130.0) @ np.diag([-1.0, 1.0, -1.0, 1.0])


def _check_round_trip(path: Path) -> None:
    """Canonical data back to the file's grid is the stored array, and the canonical affine
    maps each canonical voxel to the world point of the file voxel it came from."""
    source = nib.load(path)
    stored = np.asarray(source.dataobj)
    volume = read_input(path)
    np.testing.assert_array_equal(to_source_grid(volume.data, volume.geometry), stored)
    # The stored values encode their own index: canonical voxel c holds file voxel s.
    c = np.indices(volume.data.shape).reshape(3, -1)
    s = np.array(np.unravel_index(volume.data.reshape(-1).astype(np.int64), stored.shape))
    world_c = volume.affine[:3, :3] @ c + volume.affine[:3, 3:4]
    world_s = source.affine[:3, :3] @ s + source.affine[:3, 3:4]
    np.testing.assert_allclose(world_c, world_s, atol=1e-6)
    # The canonical affine composed back with the reorientation is the input affine.
    to_ras = nio.ornt_transform(volume.geometry.ornt, nio.axcodes2ornt("RAS"))
    back = volume.affine @ np.linalg.inv(nio.inv_ornt_aff(to_ras, stored.shape))
    np.testing.assert_allclose(back, source.affine, atol=1e-9)
    # A written mask carries the input's exact header geometry.
    out = path.with_name("mask_" + path.name)
    write_mask(out, (stored % 2).astype(np.uint8), volume.geometry)
    written = nib.load(out)
    assert np.array_equal(written.affine, source.affine)
    assert np.array_equal(written.get_sform(), source.get_sform())
    assert np.array_equal(written.get_qform(), source.get_qform())
    for code in ("sform_code", "qform_code"):
        assert int(written.header[code]) == int(source.header[code])


def _index_volume() -> np.ndarray:
    return np.arange(20 * 24 * 6, dtype=np.float32).reshape(20, 24, 6)


@pytest.mark.parametrize("affine", [_rotation(25.0), _sheared(), _flipped_oblique()])
def test_oblique_and_sheared_round_trip(tmp_path, affine):
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(_index_volume(), affine), path)
    _check_round_trip(path)


def test_qform_differs_from_sform(tmp_path, caplog):
    img = nib.Nifti1Image(_index_volume(), _rotation(0.0))
    img.set_qform(_rotation(0.0), code=1)
    img.set_sform(_rotation(10.0), code=2)
    path = tmp_path / "qs.nii.gz"
    nib.save(img, path)
    with caplog.at_level(logging.WARNING, logger="salip.io"):
        volume = read_input(path)
    warned = [r.getMessage() for r in caplog.records if "disagree" in r.getMessage()]
    assert len(warned) == 1 and "using the sform" in warned[0]
    assert volume.meta["affine_source"] == "sform"
    np.testing.assert_allclose(volume.geometry.affine, _rotation(10.0), atol=1e-6)
    _check_round_trip(path)


# ----------------------------------------------------------------------------- non-finite


@pytest.mark.parametrize("chunk", [sio.NONFINITE_CHUNK, 1000])
def test_nonfinite_voxels_become_the_minimum(tmp_path, caplog, monkeypatch, chunk):
    monkeypatch.setattr(sio.checks, "NONFINITE_CHUNK", chunk)  # where it is read
    src = _ct()
    data = np.asarray(src.dataobj).astype(np.float32)
    lowest, highest = float(data.min()), float(data.max())
    bad = [(60, 50, 15), (1, 2, 3), (100, 90, 29), (0, 0, 0)]
    for index, value in zip(bad, [np.nan, np.inf, -np.inf, np.nan]):
        data[index] = value
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, src.affine), path)
    with caplog.at_level(logging.WARNING, logger="salip.io"):
        volume = read_input(path)  # example_ct_sm is RAS: canonical index = file index
    assert volume.nonfinite == 4
    assert volume.finite_mask.shape == volume.data.shape and volume.finite_mask.dtype == bool
    assert sorted(zip(*np.nonzero(~volume.finite_mask))) == sorted(bad)
    assert np.isfinite(volume.data).all()
    assert float(volume.data.min()) == lowest and float(volume.data.max()) == highest
    assert all(volume.data[i] == lowest for i in bad)
    assert len([r for r in caplog.records if "NaN or infinite" in r.getMessage()]) == 1


def test_one_nan_and_finite_inputs(tmp_path):
    src = _ct()
    data = np.asarray(src.dataobj).astype(np.float32)
    data[60, 50, 15] = np.nan
    nib.save(nib.Nifti1Image(data, src.affine), tmp_path / "one.nii.gz")
    volume = read_input(tmp_path / "one.nii.gz")
    assert volume.nonfinite == 1 and not volume.finite_mask[60, 50, 15]
    clean = read_input(require_data(CT))
    assert clean.nonfinite == 0 and clean.finite_mask is None


def test_all_nan_is_refused(tmp_path):
    nib.save(
        nib.Nifti1Image(np.full((20, 20, 3), np.nan, np.float32), np.eye(4)), tmp_path / "n.nii"
    )
    assert "every voxel is NaN or infinite" in _error(read_input, tmp_path / "n.nii")


def test_float_tiff_nonfinite(tmp_path):
    plane = np.linspace(-5, 5, 32 * 40, dtype=np.float32).reshape(32, 40)
    plane[3, 4] = np.nan
    plane[5, 6] = np.inf
    Image.fromarray(plane).save(tmp_path / "f.tif")
    volume = read_input(tmp_path / "f.tif")
    assert volume.data.shape == (32, 40, 1) and volume.data.dtype == np.float32
    assert volume.nonfinite == 2 and volume.data[3, 4, 0] == -5.0
    assert volume.finite_mask.shape == (32, 40, 1)


# ----------------------------------------------------------------------------- DICOM


def _series(tmp_path: Path, name: str = "series") -> tuple[Path, list[Path]]:
    """A copy of the shared series and its files sorted along the slice normal (z)."""
    folder = tmp_path / name
    shutil.copytree(require_data(DICOM), folder)
    files = sorted(
        folder.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2])
    )
    return folder, files


def _z(path: Path) -> float:
    return float(pydicom.dcmread(path).ImagePositionPatient[2])


@pytest.fixture(scope="module")
def original() -> sio.Volume:
    return read_input(require_data(DICOM))


def test_missing_slice_names_positions_and_flag(tmp_path, original):
    folder, files = _series(tmp_path)
    below, above = _z(files[9]), _z(files[11])
    files[10].unlink()
    message = _error(read_input, folder)
    assert "gap or uneven spacing" in message and "--dicom-gaps resample" in message
    assert f"{below:.2f} mm ({files[9].name})" in message
    assert f"{above:.2f} mm ({files[11].name})" in message
    assert "4.00 mm step" in message and "median step 2.00 mm" in message
    volume = read_input(folder, dicom_gaps="resample")
    assert volume.data.shape == original.data.shape == (512, 512, 20)
    np.testing.assert_allclose(volume.affine, original.affine, atol=1e-6)
    assert volume.meta["dicom_gaps"] == "resampled"
    assert len(volume.meta["true_positions_mm"]) == 19 and volume.meta["slices"] == 20
    assert volume.meta["grid_step_mm"] == pytest.approx(2.0)
    assert volume.meta["dropped_files"] == []
    # The true slices are untouched; the missing one is the mean of its neighbours.
    keep = [k for k in range(20) if k != 10]
    np.testing.assert_array_equal(volume.data[..., keep], original.data[..., keep])
    mean = (original.data[..., 9] + original.data[..., 11]) / 2
    np.testing.assert_allclose(volume.data[..., 10], mean, atol=1e-3)


def test_truncated_slice_is_named(tmp_path, original):
    folder, files = _series(tmp_path)
    files[10].write_bytes(files[10].read_bytes()[:3000])  # parses, but its pixels are gone
    message = _error(read_input, folder)
    assert f"unreadable files: {files[10].name} (no pixel data" in message
    assert "--dicom-gaps resample" in message
    volume = read_input(folder, dicom_gaps="resample")
    assert volume.data.shape == (512, 512, 20)
    assert volume.meta["dropped_files"] == [files[10].name]
    assert volume.meta["unreadable_files"] == [files[10].name]


def test_garbled_slice_header_is_named(tmp_path):
    folder, files = _series(tmp_path)
    raw = bytearray(files[10].read_bytes())
    raw[:1000] = b"\x17" * 1000
    files[10].write_bytes(bytes(raw))
    message = _error(read_input, folder)
    assert f"{files[10].name} (InvalidDicomError" in message and "--dicom-gaps" in message


def test_undecodable_pixels_name_the_file(tmp_path, caplog, original):
    folder, files = _series(tmp_path)
    raw = files[10].read_bytes()
    soc = raw.find(b"\xff\x4f\xff\x51")  # JPEG 2000 start of codestream
    files[10].write_bytes(raw[:soc] + b"\0" * 8 + raw[soc + 8 :])
    message = _error(read_input, folder)
    assert f"cannot decode the pixel data of {files[10].name}" in message
    assert "--dicom-gaps resample" in message
    with caplog.at_level(logging.WARNING, logger="salip.io"):
        volume = read_input(folder, dicom_gaps="resample")
    assert volume.data.shape == (512, 512, 20)
    assert volume.meta["dropped_files"] == [files[10].name]
    assert any(f"dropping {files[10].name}" in r.getMessage() for r in caplog.records)


def test_uneven_spacing(tmp_path, original):
    folder, files = _series(tmp_path)
    ds = pydicom.dcmread(files[10])
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z + 0.5]
    ds.save_as(files[10])
    message = _error(read_input, folder)
    assert "2.50 mm step" in message and "1.50 mm step" in message
    assert "--dicom-gaps resample" in message
    volume = read_input(folder, dicom_gaps="resample")
    assert volume.data.shape == (512, 512, 20)
    np.testing.assert_allclose(volume.affine, original.affine, atol=1e-6)
    assert volume.meta["true_positions_mm"][10] == pytest.approx(z + 0.5)
    # Grid slice 10 lies 2 mm above slice 9 and 0.5 mm below the moved slice: 0.2 / 0.8.
    expected = 0.2 * original.data[..., 9] + 0.8 * original.data[..., 10]
    np.testing.assert_allclose(volume.data[..., 10], expected, atol=1e-3)


def test_small_position_jitter_is_tolerated(tmp_path, original):
    folder, files = _series(tmp_path)
    ds = pydicom.dcmread(files[10])
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z + 0.005]  # 0.25% of the 2 mm step
    ds.save_as(files[10])
    volume = read_input(folder)
    np.testing.assert_array_equal(volume.data, original.data)
    assert "dicom_gaps" not in volume.meta


def test_two_series_need_a_choice(tmp_path, original):
    study = tmp_path / "study"
    study.mkdir()
    _series(study, "a")
    second, _ = _series(study, "b")
    for path in second.iterdir():
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = ds.SeriesInstanceUID[:-1] + "9"  # still <= 64 characters
        ds.save_as(path)
    uid = original.meta["series_uid"]
    message = _error(read_input, study)
    assert "holds 2 DICOM series" in message and "--series UID" in message
    assert f"{uid} ('CT Body 3.0', 20 slices of 512x512)" in message
    assert f"{uid[:-1]}9 ('CT Body 3.0', 20 slices" in message
    for choice in (uid, uid[:-1] + "9"):
        volume = read_input(study, series=choice)
        assert volume.meta["series_uid"] == choice
        np.testing.assert_array_equal(volume.data, original.data)
        np.testing.assert_array_equal(volume.affine, original.affine)
    message = _error(read_input, study, series="1.2.3")
    assert "no series '1.2.3'" in message and uid in message and "--series" in message


def test_untouched_series_reads_as_before(tmp_path, original):
    folder, _ = _series(tmp_path)
    (folder / "README.txt").write_text("notes")
    (folder / ".DS_Store").write_bytes(b"\0\1")
    (folder / "DICOMDIR").write_bytes(b"not really")
    volume = read_input(folder)
    np.testing.assert_array_equal(volume.data, original.data)
    np.testing.assert_array_equal(volume.affine, original.affine)
    assert volume.modality == "ct" and volume.meta["modality_from"] == "DICOM Modality tag"
    assert "unreadable_files" not in volume.meta
    reference = nib.load(require_data(TOTALSEG / "example_seg_dicom.nii.gz"))
    np.testing.assert_allclose(volume.geometry.affine, reference.affine, atol=1e-4)


def test_stray_unreadable_file_warns(tmp_path, caplog, original):
    folder, _ = _series(tmp_path)
    (folder / "LOG0001").write_bytes(b"junk without suffix")
    with caplog.at_level(logging.WARNING, logger="salip.io"):
        volume = read_input(folder)
    np.testing.assert_array_equal(volume.data, original.data)
    assert volume.meta["unreadable_files"] == ["LOG0001"]
    assert any("LOG0001" in r.getMessage() for r in caplog.records)


def test_duplicate_position_still_raises(tmp_path):
    folder, files = _series(tmp_path)
    ds = pydicom.dcmread(files[5])
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.save_as(folder / "copy_of_slice.dcm")
    assert "share one position" in _error(read_input, folder)


def test_folders_and_zips_without_dicom(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    nib.save(_ct(), cases / "a.nii.gz")
    nib.save(_ct(), cases / "b.nii.gz")
    message = _error(read_input, cases)
    assert "2 NIfTI file(s)" in message and str(cases / "a.nii.gz") in message
    assert "no DICOM image files" not in message
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    Image.new("L", (32, 32)).save(pngs / "x.png")
    assert "1 2D image(s)" in _error(read_input, pngs)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "empty folder" in _error(read_input, empty)
    (tmp_path / "empty.zip").write_bytes(b"")
    assert "not a valid zip file" in _error(read_input, tmp_path / "empty.zip")
    (tmp_path / "junk.zip").write_bytes(np.random.default_rng(0).bytes(3000))
    assert "not a valid zip file" in _error(read_input, tmp_path / "junk.zip")
    with zipfile.ZipFile(tmp_path / "notes.zip", "w") as archive:
        archive.writestr("notes.txt", "hello")
    assert "no DICOM image files among its 1 files" in _error(read_input, tmp_path / "notes.zip")
    with zipfile.ZipFile(tmp_path / "nothing.zip", "w"):
        pass
    assert "empty zip" in _error(read_input, tmp_path / "nothing.zip")


def test_zip_series_with_gap_and_traversal_names(tmp_path, original):
    _, files = _series(tmp_path)
    path = tmp_path / "series.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i, file in enumerate(files):
            if i != 4:
                archive.write(file, f"../../escaped_{i}.dcm")
    assert "../../escaped_3.dcm" in _error(read_input, path)
    volume = read_input(path, dicom_gaps="resample")
    assert volume.data.shape == original.data.shape


# ----------------------------------------------------------------------------- 2D images


def test_one_bit_png_reads_as_8_bit(tmp_path):
    bits = np.random.default_rng(0).random((48, 64)) > 0.5
    Image.fromarray(bits).convert("1").save(tmp_path / "b.png")
    volume = read_input(tmp_path / "b.png")
    assert volume.data.dtype == np.uint8 and volume.data.shape == (48, 64, 1)
    assert set(np.unique(volume.data)) <= {0, 255}
    np.testing.assert_array_equal(volume.data[..., 0] == 255, bits)


def test_sixteen_bit_png_keeps_its_values(tmp_path):
    values = np.random.default_rng(0).integers(0, 60000, (48, 64), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "s.png")
    volume = read_input(tmp_path / "s.png")
    assert volume.data.dtype == np.uint16
    np.testing.assert_array_equal(volume.data[..., 0], values)
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "i.tif")
    assert np.issubdtype(read_input(tmp_path / "i.tif").data.dtype, np.integer)


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    Image.new("CMYK", (64, 48), (10, 200, 30, 0)).save(tmp_path / "c.jpg")
    volume = read_input(tmp_path / "c.jpg")
    assert volume.data.shape == (48, 64, 3) and volume.data.dtype == np.uint8


@pytest.mark.parametrize(
    ("size", "words"),
    [((1, 1), "too small"), ((10000, 10), "too small"), ((10000, 20), "too elongated")],
)
def test_tiny_and_extreme_images(tmp_path, size, words):
    Image.new("L", size).save(tmp_path / "x.png")
    message = _error(read_input, tmp_path / "x.png")
    assert str(tmp_path / "x.png") in message and words in message


def test_check_plane_size():
    check_plane_size((16, 16), "p")
    check_plane_size((16, 1024), "p")
    check_plane_size((1024, 16), "p")
    assert "15x100 px is too small" in _error(check_plane_size, (15, 100), "p")
    assert "leaving 15 px across" in _error(check_plane_size, (16, 1100), "p")
    assert "scan: axial slices: 8x512" in _error(check_plane_size, (8, 512), "scan: axial slices")


def test_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    Image.new("L", (40, 40)).save(tmp_path / "warn.png")
    Image.new("L", (100, 100)).save(tmp_path / "error.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for name in ("warn.png", "error.png"):  # 1600 px: a warning; 10000 px: an error
        assert "decompression bomb" in _error(read_input, tmp_path / name)


def test_modality_from_image_metadata(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("Modality", "CT")
    Image.new("L", (32, 32)).save(tmp_path / "a.png", pnginfo=info)
    volume = read_input(tmp_path / "a.png")
    assert volume.modality == "ct" and volume.meta["modality_from"] == "image metadata"
    Image.new("L", (32, 32)).save(tmp_path / "b.tif", tiffinfo={270: "Modality=MR"})
    assert read_input(tmp_path / "b.tif").modality == "mr"
    info = PngImagePlugin.PngInfo()
    info.add_text("modality", "x-ray")
    Image.new("L", (32, 32)).save(tmp_path / "c.png", pnginfo=info)
    assert read_input(tmp_path / "c.png").modality == "xray"
    info = PngImagePlugin.PngInfo()
    info.add_text("Modality", "PET")
    Image.new("L", (32, 32)).save(tmp_path / "d.png", pnginfo=info)
    volume = read_input(tmp_path / "d.png")
    assert volume.modality is None and "modality_from" not in volume.meta


def test_garbage_image_is_one_line(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not a png")
    assert "cannot read image" in _error(read_input, tmp_path / "x.png")
