"""DICOM SEG output: the object references its series and equals the NIfTI mask."""

from __future__ import annotations

import json
import shutil
import subprocess

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

import salip
from salip.apps.cli import main
from salip.io import read_input, to_canonical
from salip.io.dicom_seg import SEG_CODES, grid_from_frames, seg_code
from tests.conftest import TOTALSEG, LabelStrategy, require_data

ORGANS = {"liver": 5, "spleen": 1, "aorta": 52}  # labels_total.json values


@pytest.fixture(scope="module")
def series():
    path = require_data(TOTALSEG / "example_ct_dicom_uids")
    volume = read_input(path)
    labels = np.asarray(nib.load(require_data(TOTALSEG / "example_seg_dicom.nii.gz")).dataobj)
    return path, volume, to_canonical(labels, volume.geometry)


def test_dicom_seg_references_the_series_and_equals_the_nifti(series, tmp_path):
    path, volume, canonical = series
    organs = list(ORGANS)
    strategy = LabelStrategy(canonical, ORGANS)
    nifti = salip.segment(path, organs=organs, output=tmp_path / "m.nii.gz", segmenter=strategy)
    seg_run = salip.segment(path, organs=organs, output=tmp_path / "m.dcm", segmenter=strategy)
    assert seg_run.outputs == [tmp_path / "m.dcm"]  # no label sidecar: the SEG names them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.dcm", "m.json", "m.nii.gz"]

    plain = pydicom.dcmread(tmp_path / "m.dcm")  # pydicom's own reading
    assert plain.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    seg = hd.seg.segread(tmp_path / "m.dcm")
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == volume.sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == volume.sources[0].FrameOfReferenceUID
    segments = {d.SegmentNumber: d for d in seg.SegmentSequence}
    for name, number in nifti.label_values.items():
        description = segments[number]
        assert description.SegmentLabel == name
        _category, kind, _side = seg_code(name)
        assert description.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
        assert description.SegmentedPropertyTypeCodeSequence[0].CodeValue == kind.value
        assert description.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
        algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
        assert (
            algorithm.AlgorithmName == "salip" and algorithm.AlgorithmVersion == salip.__version__
        )
    assert {d.SegmentedPropertyTypeCodeSequence[0].CodeValue for d in segments.values()} == {
        "10200004",  # liver
        "78961009",  # spleen
        "15825003",  # aorta
    }
    # Every frame references a slice of the source series.
    source_uids = [ds.SOPInstanceUID for ds in volume.sources]
    referenced = seg.get_source_image_uids()
    assert referenced and {sop for _study, _series, sop in referenced} <= set(source_uids)
    assert {series_uid for _study, series_uid, _sop in referenced} == {
        volume.sources[0].SeriesInstanceUID
    }
    # Put back on the series grid, the SEG equals the NIfTI mask voxel for voxel.
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=source_uids, combine_segments=True, skip_overlap_checks=True
    )
    written = np.asarray(nib.load(tmp_path / "m.nii.gz").dataobj)
    assert written.sum() > 0
    assert np.array_equal(grid_from_frames(frames), written)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_finds_no_error(series, tmp_path):
    path, _volume, canonical = series
    out = tmp_path / "m.dcm"
    salip.segment(
        path, organs="liver,spleen", output=out, segmenter=LabelStrategy(canonical, ORGANS)
    )
    check = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True)
    lines = (check.stdout + check.stderr).splitlines()
    assert "Segmentation" in lines  # it recognised the IOD
    assert not [line for line in lines if line.startswith("Error")], lines


def test_every_builtin_target_has_a_dicom_code():
    from salip.core.organs import ORGANS as BUILTIN

    assert set(SEG_CODES) == set(BUILTIN)
    for name in BUILTIN:
        category, kind, side = seg_code(name)
        assert category.value == "91723000" and kind.scheme_designator == "SCT"
        assert (side is not None) == (
            "left" in name
            or "right" in name
            or name in ("kidneys", "lungs", "adrenal_glands", "femoral_heads")
        )


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["example_ct_sm.nii.gz", "-o", "{tmp}/m.dcm"],
            "a DICOM SEG references the source DICOM series, and this input is a NIfTI file",
        ),
        (
            ["example_ct_dicom", "--output-type", "dicom-seg", "-o", "{tmp}/m.dcm"],
            "the DICOM series has no StudyInstanceUID",
        ),
        (
            ["example_ct_dicom_uids", "--output-type", "dicom-seg", "--split", "-o", "{tmp}"],
            "a DICOM SEG holds every organ as a segment of one object",
        ),
        (
            ["example_ct_dicom_uids", "--output-type", "nifti", "-o", "{tmp}/m.dcm"],
            "names a DICOM file but the output type is nifti",
        ),
    ],
)
def test_dicom_seg_refusals(tmp_path, capsys, monkeypatch, args, message):
    def refuse(*a, **k):
        raise AssertionError("a model was loaded for a run that must be refused")

    monkeypatch.setattr("salip.models.sam.load_sam", refuse)
    argv = [str(TOTALSEG / args[0]), *(a.format(tmp=tmp_path) for a in args[1:])]
    assert main(["segment", *argv, "--organ", "liver", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert list(tmp_path.iterdir()) == []
    # NIfTI output of the anonymised series works: test_many segments it in its cohort.


def test_viewer_of_a_dicom_run_shows_the_written_mask(series, tmp_path):
    """salip.segment(viewer=...): the page's labels are the written mask in display
    orientation, its slice numbers the file's, its intensities the series' HU."""
    from salip.outputs.viewer import decode_viewer, display_stack

    path, volume, canonical = series
    result = salip.segment(
        path,
        organs="liver,spleen",
        output=tmp_path / "m.nii.gz",
        viewer=tmp_path / "case.html",
        segmenter=LabelStrategy(canonical, ORGANS),
    )
    image, labels, meta = decode_viewer((tmp_path / "case.html").read_text(encoding="utf-8"))
    written = to_canonical(np.asarray(nib.load(tmp_path / "m.nii.gz").dataobj), volume.geometry)
    assert labels.sum() > 0 and np.array_equal(labels, display_stack(written, False))
    assert [o["name"] for o in meta["organs"]] == list(result.label_values)
    hu = display_stack(np.clip(volume.data, -1024, 3071), False)
    assert np.abs(image - hu).max() <= meta["image"]["step"] / 2 + 1e-3
    assert (tmp_path / "case.html").stat().st_size < 25_000_000


def test_the_cli_writes_seg_statistics_and_viewer_together(tmp_path, tiny_models):
    series = require_data(TOTALSEG / "example_ct_dicom_uids")
    options = {
        **tiny_models,
        "points_per_side": 4,
        "pred_iou_thresh": 0,
        "stability_score_thresh": 0,
    }
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items() if v is not None]
    folder = tmp_path / "out"
    out = folder / "liver.dcm"
    args = ["segment", str(series), "--organ", "liver,spleen", "-o", str(out), "-q"]
    args += ["--statistics", str(folder / "s.json"), "--viewer", str(folder / "v.html")]
    assert main([*args, "--no-progress", *flags]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["liver.dcm", "s.json", "v.html"]
    seg = hd.seg.segread(out)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["liver", "spleen"]
    stats = json.loads((folder / "s.json").read_text())
    assert list(stats["organs"]) == ["liver", "spleen"] and stats["units"] == "HU"


def test_sop_uids_missing_from_the_data_set_come_from_the_file_meta(series):
    import copy

    from salip.io.dicom_seg import source_references

    _path, volume, _canonical = series
    blanked = [copy.deepcopy(ds) for ds in volume.sources[:3]]
    for ds in blanked:
        ds.SOPInstanceUID, ds.SOPClassUID = "", ""
    fixed = source_references(blanked, "case")
    assert [ds.SOPInstanceUID for ds in fixed] == [
        ds.file_meta.MediaStorageSOPInstanceUID for ds in volume.sources[:3]
    ]
    assert fixed[0].SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
