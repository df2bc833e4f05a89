"""The bad-input matrix: one parametrised test over generated inputs through ``salip``.

Every case runs the real command line (in-process, ``-q``) on inputs generated into a
temporary folder and checks four things:

* the exit code;
* for failures, a single stderr line ``salip: error: ...`` matching the case's pattern, with
  no traceback and no "unexpected" (reserved for bugs);
* every file that existed before the run is byte-identical afterwards (SHA-256);
* no leftover or partial file: after a failure the folder holds exactly what it held
  before, after a success exactly that plus the outputs the command was asked for.

Cases that must fail before any model runs are run with model loading replaced by a
function that fails the test, so "before any model runs" is checked, not assumed.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from salip.apps.cli import main
from salip.io.writing import file_mode
from tests.conftest import SLICES, TOTALSEG, require_data
from tests.llm_server import LoopbackLLM, Reply

FAST = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]


# ----------------------------------------------------------------------------- inputs


def _small_ct() -> nib.Nifti1Image:
    """A 48x40x6 crop of the shared example CT (int16 HU, RAS, 3 mm)."""
    img = nib.load(require_data(TOTALSEG / "example_ct_sm.nii.gz"))
    data = np.asarray(img.dataobj)[37:85, 30:70, 12:18]
    return nib.Nifti1Image(data.astype(np.int16), img.affine)


def _save(img: nib.Nifti1Image, path: Path) -> Path:
    nib.save(img, str(path))
    return path


def _ct_with(values: dict[tuple[int, int, int], float]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        data = np.asarray(_small_ct().dataobj).astype(np.float32)
        for index, value in values.items():
            data[index] = value
        return _save(nib.Nifti1Image(data, _small_ct().affine), folder / "ct.nii.gz")

    return build


def _ct_affine(affine: np.ndarray, name: str = "ct.nii.gz") -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        data = np.asarray(_small_ct().dataobj)
        return _save(nib.Nifti1Image(data, affine), folder / name)

    return build


def _rotation(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    affine = np.eye(4)
    affine[:3, :3] = np.array(
        [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
    ) @ np.diag([3.0, 3.0, 3.0])
    affine[:3, 3] = [-70.0, 40.0, 12.5]
    return affine


def _sheared() -> np.ndarray:
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[0, 1] = 0.6  # x grows with j: a sheared (non-orthogonal) grid
    affine[:3, 3] = [-70.0, 40.0, 12.5]
    return affine


def _qform_sform(folder: Path) -> Path:
    img = _small_ct()
    qform = img.affine.copy()
    sform = _rotation(10.0)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=2)
    return _save(img, folder / "ct.nii.gz")


def _broken_sform(folder: Path, broken: str) -> Path:
    """A file whose only affine (the sform) has a zero column or a NaN."""
    img = _small_ct()
    affine = img.affine.copy()
    if broken == "zero column":
        affine[:3, 1] = 0.0
    else:
        affine[0, 0] = np.nan
    header = nib.Nifti1Header()
    header.set_data_shape(img.shape)
    header.set_data_dtype(np.int16)
    # Rows set directly: nibabel's set_sform refuses NaN, as a careful writer would.
    header["srow_x"], header["srow_y"], header["srow_z"] = affine[:3]
    header["sform_code"], header["qform_code"] = 1, 0
    return _save(nib.Nifti1Image(np.asarray(img.dataobj), None, header=header), folder / "ct.nii")


def _nd(shape: tuple[int, ...], name: str = "vol.nii.gz") -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        return _save(nib.Nifti1Image(data, np.eye(4)), folder / name)

    return build


def _rgb_nifti(folder: Path) -> Path:
    rgb = np.zeros((20, 20, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    return _save(nib.Nifti1Image(rgb, np.eye(4)), folder / "rgb.nii.gz")


def _bytes(name: str, payload: bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(payload)
        return path

    return build


def _truncated(name: str, keep: float) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        full = _save(_small_ct(), folder / f"full_{name}")
        raw = full.read_bytes()
        full.unlink()
        path = folder / name
        path.write_bytes(raw[: int(len(raw) * keep)])
        return path

    return build


def _huge_claim(folder: Path) -> Path:
    """A 4 KB .nii.gz whose header claims 1024^3 float32 voxels (4 GiB)."""
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 1024))
    header.set_data_dtype(np.float32)
    header.set_qform(np.eye(4), code=1)
    raw = header.binaryblock + b"\0" * 4 + b"\x3f" * 4000
    path = folder / "huge.nii.gz"
    path.write_bytes(gzip.compress(raw))
    return path


def _nifti_folder(folder: Path) -> Path:
    target = folder / "cases"
    target.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        _save(_small_ct(), target / name)
    return target


def _dicom_copy(folder: Path, name: str = "series") -> Path:
    target = folder / name
    shutil.copytree(require_data(TOTALSEG / "example_ct_dicom_uids"), target)
    return target


def _dicom_files(series: Path) -> list[Path]:
    """The series' files sorted along the slice normal (z for this axial series)."""
    files = sorted(p for p in series.iterdir() if p.is_file())
    return sorted(files, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))


def _dicom_missing(folder: Path) -> Path:
    series = _dicom_copy(folder)
    _dicom_files(series)[10].unlink()
    return series


def _dicom_corrupt(folder: Path) -> Path:
    series = _dicom_copy(folder)
    victim = _dicom_files(series)[10]
    victim.write_bytes(victim.read_bytes()[:300])
    return series


def _dicom_uneven(folder: Path) -> Path:
    series = _dicom_copy(folder)
    files = _dicom_files(series)
    for path in files[12:]:  # every slice above 12 moves 1.3 mm: one uneven step
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 1.3]
        ds.save_as(path)
    return series


def _dicom_two_series(folder: Path) -> Path:
    study = folder / "study"
    study.mkdir()
    _dicom_copy(study, "a")
    second = _dicom_copy(study, "b")
    for path in second.iterdir():
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = ds.SeriesInstanceUID[:-2] + ".2"
        ds.save_as(path)
    return study


def _dicom_duplicate(folder: Path) -> Path:
    series = _dicom_copy(folder)
    files = _dicom_files(series)
    shutil.copy(files[5], series / "copy_of_slice.dcm")
    ds = pydicom.dcmread(series / "copy_of_slice.dcm")
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.save_as(series / "copy_of_slice.dcm")
    return series


def _zip_traversal(folder: Path) -> Path:
    series = _dicom_copy(folder)
    path = folder / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i, file in enumerate(sorted(series.iterdir())):
            archive.write(file, f"../../escaped_{i}.dcm")
    shutil.rmtree(series)
    return path


def _png(
    size: tuple[int, int], mode: str = "L", name: str = "ct_slice.png"
) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        rng = np.random.default_rng(0)
        path = folder / name
        width, height = size
        if mode == "1":
            Image.fromarray(rng.random((height, width)) > 0.5).convert("1").save(path)
        elif mode == "I;16":
            data = rng.integers(0, 4000, (height, width), dtype=np.uint16)
            Image.fromarray(data).save(path)
        elif mode == "CMYK":
            data = rng.integers(0, 255, (height, width, 4), dtype=np.uint8)
            Image.fromarray(data, mode="CMYK").save(path, format="JPEG")
        else:
            Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8)).save(path)
        return path

    return build


def _ct_4d_singleton(folder: Path) -> Path:
    """The small CT saved as (X, Y, Z, 1), as some converters write it."""
    ct = _small_ct()
    data = np.asarray(ct.dataobj)
    return _save(nib.Nifti1Image(data[..., None], ct.affine), folder / "ct4d.nii.gz")


def _jobs_escaping(folder: Path) -> Path:
    """A folder with a scan and a jobs file whose output climbs out of -o."""
    _ct_with({})(folder)
    (folder / "jobs.csv").write_text("input,output\nct.nii.gz,../../escape.nii.gz\n")
    return folder


def _amos_png(folder: Path) -> Path:
    path = folder / "amos_0004_75.png"
    shutil.copy(require_data(SLICES / "images" / "amos_0004_75.png"), path)
    return path


# ----------------------------------------------------------------------------- cases


@dataclasses.dataclass
class Case:
    """One row of the matrix.

    Attributes:
        id: the test id.
        build: makes the input in a folder and returns its path.
        args: arguments after the input; ``{out}`` is the output folder, ``{in}`` the input.
        code: expected exit code.
        message: regular expression the error line must match (failures only).
        outputs: files (relative to the output folder) a success must write, exactly.
        before_models: the failure must come before any model is loaded.
        existing: files to create in the output folder before the run (name -> bytes).
        check: an extra check on the output folder and the input, for successes.
    """

    id: str
    build: Callable[[Path], Path]
    args: list[str]
    code: int = 1
    message: str = ""
    outputs: tuple[str, ...] = ()
    before_models: bool = True
    existing: dict[str, bytes] = dataclasses.field(default_factory=dict)
    check: Callable[[Path, Path], None] | None = None


def _check_nonfinite(count: int) -> Callable[[Path, Path], None]:
    def check(out: Path, source: Path) -> None:
        report = json.loads((out / "r.json").read_text())
        assert report["input"]["nonfinite_voxels"] == count
        assert report["slicing"]["intensity"]["modality"] == "ct"
        assert report["slicing"]["intensity"]["method"] == "window"
        assert report["slicing"]["skipped_slices"] == []  # the NaN did not hide the body

    return check


def _check_round_trip(out: Path, source: Path) -> None:
    """The mask is in the input's exact grid: same shape, affine, sform and qform."""
    given, written = nib.load(source), nib.load(out / "m.nii.gz")
    assert written.shape == given.shape
    assert np.array_equal(written.affine, given.affine)
    assert np.array_equal(written.get_sform(), given.get_sform())
    assert np.array_equal(written.get_qform(), given.get_qform())
    assert int(written.header["sform_code"]) == int(given.header["sform_code"])
    assert int(written.header["qform_code"]) == int(given.header["qform_code"])


def _check_modality(expected: str, reason: str) -> Callable[[Path, Path], None]:
    def check(out: Path, source: Path) -> None:
        intensity = json.loads((out / "r.json").read_text())["slicing"]["intensity"]
        assert intensity["modality"] == expected
        assert reason in intensity["modality_from"]

    return check


def _check_resampled(out: Path, source: Path) -> None:
    report = json.loads((out / "r.json").read_text())
    assert report["input"]["dicom_gaps"] == "resampled"
    assert len(report["input"]["true_positions_mm"]) == 19
    assert nib.load(out / "m.nii.gz").shape[2] == 20  # the uniform grid, gap filled


MASK = ["-o", "{out}/m.nii.gz"]
REPORT = ["--report", "{out}/r.json"]
CASES = [
    # Outputs: collisions among -o, its sidecar, --split files, --preview and --report.
    Case("report-is-mask", _ct_with({}), ["-o", "{out}/m.nii.gz", "--report", "{out}/m.nii.gz"],
         message=r"--report .*m\.nii\.gz and -o .*same file"),
    Case("report-is-sidecar", _ct_with({}),
         ["-o", "{out}/organs.nii.gz", "--report", "{out}/organs.json"],
         message=r"--report .*organs\.json and the label sidecar of -o.*same file"),
    Case("preview-is-mask", _amos_png, ["-o", "{out}/m.png", "--preview", "{out}/m.png"],
         message=r"--preview .*m\.png and -o .*same file"),
    Case("preview-is-report", _ct_with({}),
         [*MASK, "--preview", "{out}/x.png", "--report", "{out}/x.png"],
         message=r"--report .*x\.png and --preview .*same file"),
    Case("report-is-split-file", _ct_with({}),
         ["--split", "-o", "{out}/masks", "--report", "{out}/masks/liver.nii.gz"],
         message=r"--report .*liver\.nii\.gz and the liver mask of --split.*same file"),
    Case("output-is-input", _ct_with({}), ["-o", "{in}"], message=r"refusing to write into"),
    Case("output-exists", _ct_with({}), MASK, existing={"m.nii.gz": b"keep me"},
         message=r"m\.nii\.gz exists; pass --overwrite"),
    Case("output-parent-is-file", _ct_with({}), ["-o", "{out}/afile/m.nii.gz"],
         existing={"afile": b"x"}, message=r"is a file, not a folder"),
    Case("read-only-report-folder", _ct_with({}),
         [*MASK, "--preview", "{out}/p.png", "--report", "{readonly}/r.json"],
         message=r"--report .*cannot write in"),
    # Non-finite voxels: counted, treated as air, in the report.
    Case("ct-one-nan", _ct_with({(20, 20, 3): np.nan}), [*MASK, *REPORT], code=0,
         outputs=("m.nii.gz", "m.json", "r.json"), check=_check_nonfinite(1)),
    Case("ct-infs", _ct_with({(1, 1, 1): np.inf, (2, 2, 2): -np.inf, (3, 3, 3): np.nan}),
         [*MASK, *REPORT], code=0, outputs=("m.nii.gz", "m.json", "r.json"),
         check=_check_nonfinite(3)),
    # Geometry: exact round trips, and broken affines.
    Case("oblique", _ct_affine(_rotation(25.0)), MASK, code=0, outputs=("m.nii.gz", "m.json"),
         check=_check_round_trip),
    Case("sheared", _ct_affine(_sheared()), MASK, code=0, outputs=("m.nii.gz", "m.json"),
         check=_check_round_trip),
    Case("qform-not-sform", _qform_sform, MASK, code=0, outputs=("m.nii.gz", "m.json"),
         check=_check_round_trip),
    Case("affine-zero-column", lambda f: _broken_sform(f, "zero column"), MASK,
         message=r"sform affine is singular.*fslorient"),
    Case("affine-nan", lambda f: _broken_sform(f, "nan"), MASK,
         message=r"sform affine holds NaN.*fslorient"),
    # NIfTI files that cannot be segmented.
    Case("nifti-4d", _nd((12, 12, 4, 3)), MASK, message=r"--channel"),
    Case("nifti-5d", _nd((12, 12, 4, 1, 2)), MASK, message=r"5D"),
    Case("nifti-rgb", _rgb_nifti, MASK, message=r"RGB|colour|voxel type"),
    Case("nifti-empty", _bytes("empty.nii.gz", b""), MASK, message=r"empty\.nii\.gz"),
    Case("nifti-garbage", _bytes("junk.nii", os.urandom(2000)), MASK, message=r"junk\.nii"),
    Case("nifti-truncated", _truncated("cut.nii", 0.5), MASK, message=r"truncated|cut\.nii"),
    Case("nifti-gz-truncated", _truncated("cut.nii.gz", 0.5), MASK, message=r"cut\.nii\.gz"),
    Case("nifti-huge-claim", _huge_claim, MASK, message=r"huge\.nii\.gz"),
    Case("folder-of-nifti", _nifti_folder, MASK, message=r"holds several cases; give -o FOLDER"),
    # Zips.
    Case("zip-empty", _bytes("empty.zip", b""), MASK, message=r"empty\.zip"),
    Case("zip-garbage", _bytes("junk.zip", os.urandom(3000)), MASK, message=r"junk\.zip"),
    Case("zip-truncated", lambda f: _bytes("cut.zip", _zip_bytes(f)[:5000])(f), MASK,
         message=r"cut\.zip"),
    # DICOM series.
    Case("dicom-missing-slice", _dicom_missing, MASK, message=r"--dicom-gaps"),
    Case("dicom-corrupt-slice", _dicom_corrupt, MASK, message=r"--dicom-gaps"),
    Case("dicom-uneven-spacing", _dicom_uneven, MASK, message=r"--dicom-gaps"),
    Case("dicom-two-series", _dicom_two_series, MASK, message=r"several cases.*--series UID"),
    Case("dicom-duplicate-position", _dicom_duplicate, MASK, message=r"share one position"),
    Case("dicom-gap-resampled", _dicom_missing, [*MASK, *REPORT, "--dicom-gaps", "resample"],
         code=0, outputs=("m.nii.gz", "m.json", "r.json"), check=_check_resampled),
    Case("zip-path-traversal", _zip_traversal, MASK, code=0, outputs=("m.nii.gz", "m.json")),
    # 2D images.
    Case("png-10000x10", _png((10000, 10)), ["-o", "{out}/m.png"], message=r"10x10000 px"),
    Case("png-1x1", _png((1, 1)), ["-o", "{out}/m.png"], message=r"1x1 px is too small"),
    Case("png-2000x20", _png((2000, 20)), ["-o", "{out}/m.png"], message=r"too elongated"),
    Case("png-1bit", _png((64, 48), "1"), ["-o", "{out}/m.png", *REPORT], code=0,
         outputs=("m.png", "m.json", "r.json"), check=_check_modality("ct", "'ct'")),
    Case("png-16bit", _png((64, 48), "I;16"), ["-o", "{out}/m.png"], code=0,
         outputs=("m.png", "m.json")),
    Case("jpeg-cmyk", _png((64, 48), "CMYK", "ct_cmyk.jpg"), ["-o", "{out}/m.png"], code=0,
         outputs=("m.png", "m.json")),
    Case("png-modality-unknown", _amos_png, ["-o", "{out}/m.png"], message=r"--modality"),
    Case("png-modality-given", _amos_png, ["-o", "{out}/m.png", *REPORT, "--modality", "ct"],
         code=0, outputs=("m.png", "m.json", "r.json"), check=_check_modality("ct", "--modality")),
    # Checkpoints.
    Case("checkpoint-text", _ct_with({}), [*MASK, "--sam-checkpoint", "{out}/notes.txt"],
         existing={"notes.txt": b"not a checkpoint\n"}, message=r"notes\.txt",
         before_models=False),
    Case("checkpoint-pickle", _ct_with({}), [*MASK, "--sam-checkpoint", "{out}/evil.pth"],
         existing={"evil.pth": b""}, message=r"evil\.pth", before_models=False),
    # The default CLIP with no cached weights and no reachable hub: fail fast, one line.
    Case("clip-offline", _ct_with({}), [*MASK, "--clip-model", "ViT-B-32",
         "--clip-pretrained", "openai"], message=r"not in the cache.*--clip-pretrained FILE",
         before_models=False),
    # Names too long for the file system: refused before any model (the temporary salip
    # writes first is longer still), not an "unexpected OSError".
    Case("output-name-too-long", _ct_with({}), ["-o", "{out}/" + "b" * 245 + ".nii.gz"],
         message=r"file name is too long for its file system .*at most 255"),
    # A full disk while writing: one line naming the file and the cause, nothing left.
    Case("disk-full", _ct_with({}), MASK, before_models=False,
         message=r"cannot write .*m\.nii\.gz: No space left on device \(errno 28\)"),
    # Windows that are not numbers a display can use.
    Case("window-inf", _ct_with({}), [*MASK, "--window", "inf,0"], message=r"must be finite"),
    Case("window-huge", _ct_with({}), [*MASK, "--window", "1e308,-1e308"],
         message=r"need 0 < width <= 100000"),
    # --channel where there is no 4th axis is refused, not ignored.
    Case("channel-on-3d", _ct_with({}), [*MASK, "--channel", "1"],
         message=r"--channel is for 4D files, and this one is 3D"),
    Case("channel-on-png", _amos_png, ["-o", "{out}/m.png", "--channel", "0", "--modality", "ct"],
         message=r"--channel is for 4D NIfTI files, and this is a 2D image"),
    # A (X,Y,Z,1) file: the mask keeps the input's shape.
    Case("nifti-trailing-singleton", _ct_4d_singleton, MASK, code=0,
         outputs=("m.nii.gz", "m.json"), check=_check_round_trip),
    # A jobs file written by someone else: outputs outside -o are refused before any case.
    Case("jobs-output-escapes", _jobs_escaping, ["--jobs", "{in}/jobs.csv", "-o", "{out}/run"],
         message=r"must be a path inside the output folder"),
    # The language-model endpoint answers with a body that is not JSON.
    Case("llm-reply-not-json", _ct_with({}), [], message=r"not JSON.*--base-url",
         before_models=False),
    # An interrupt while the outputs are written, with older outputs to keep.
    Case("sigint-while-writing", _ct_with({}),
         [*MASK, "--preview", "{out}/p.png", *REPORT, "--overwrite"],
         existing={"m.nii.gz": b"old mask", "r.json": b"old report"}, code=130,
         message=r"interrupted", before_models=False),
]  # fmt: skip


def _zip_bytes(folder: Path) -> bytes:
    series = _dicom_copy(folder, "to_zip")
    buffer = folder / "tmp.zip"
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in sorted(series.iterdir()):
            archive.write(file, file.name)
    shutil.rmtree(series)
    raw = buffer.read_bytes()
    buffer.unlink()
    return raw


# ----------------------------------------------------------------------------- harness


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def readonly_dir(tmp_path: Path):
    """A folder no file can be created in, even by root (a read-only tmpfs where possible)."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode == 0:
        yield folder
        subprocess.run(["umount", str(folder)], check=True)
        return
    # sysfs accepts no new files from anyone: a read-only destination on every Linux.
    yield Path("/sys")


def _evil_pickle(path: Path, marker: Path) -> None:
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.write_bytes(pickle.dumps({"image_encoder.x": Payload()}))


def _interrupt_on_stage(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Send this process a real SIGINT once ``after`` outputs have been staged."""
    from salip.io.output_set import OutputSet

    original = OutputSet.stage
    calls = []

    def stage(self, path, write):
        original(self, path, write)
        calls.append(path)
        if len(calls) == after:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(OutputSet, "stage", stage)


def _forbid_models(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        pytest.fail("a model was loaded although the run should have failed before")

    monkeypatch.setattr("salip.models.sam.load_sam", refuse)
    monkeypatch.setattr("salip.models.clip.load_clip", refuse)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_matrix(case, tmp_path, tiny_models, readonly_dir, capsys, monkeypatch, request):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    source = case.build(inputs)
    for name, payload in case.existing.items():
        (out / name).write_bytes(payload)
    if case.id == "checkpoint-pickle":
        _evil_pickle(out / "evil.pth", tmp_path / "pwned")
    if case.id == "sigint-while-writing":
        _interrupt_on_stage(monkeypatch, after=2)
    if case.id == "disk-full":
        import errno

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr("salip.api.pipeline.save_mask", full)
    if case.id == "clip-offline":
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        request.addfinalizer(closed.close)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    argv_prefix = None
    if case.id == "llm-reply-not-json":
        server = LoopbackLLM().start()
        request.addfinalizer(server.stop)
        server.script = [Reply(status=200, raw="<html>bad gateway</html>")]
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        argv_prefix = [
            "prompts", "generate", "--organ", "liver", "--modality", "ct", "--base-url",
            server.base_url, "--prompts-dir", str(out / "prompts"), "--max-retries", "0", "-q",
        ]  # fmt: skip
    if case.code != 0 and case.before_models:
        _forbid_models(monkeypatch)
    model = [
        "--sam-checkpoint", tiny_models["sam_checkpoint"], "--clip-model",
        tiny_models["clip_model"], "--device", "cpu",
    ]  # fmt: skip
    args = [a.format(out=out, readonly=readonly_dir, **{"in": source}) for a in case.args]
    watched = (inputs, out, readonly_dir) if readonly_dir != Path("/sys") else (inputs, out)
    before = {str(f): _hashes(f) for f in watched}
    trees = {str(f): _tree(f) for f in watched}
    argv = ["segment", str(source), "--organ", "liver", "-q", "--no-progress", *model, *FAST]
    code = main(
        argv_prefix or [*argv, *args]
    )  # later flags win: a case's --sam-checkpoint replaces the tiny one

    err = capsys.readouterr().err
    assert code == case.code, err
    assert "Traceback" not in err and "unexpected" not in err, err
    if case.code != 0:
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert re.search(case.message, lines[0]), lines[0]
    for folder in watched:
        hashes = _hashes(folder)
        for name, digest in before[str(folder)].items():
            assert hashes.get(name) == digest, f"{folder / name} changed or vanished"
        added = _tree(folder) - trees[str(folder)]
        expected = set(case.outputs) if folder == out and case.code == 0 else set()
        assert added == expected, f"unexpected files in {folder}: {sorted(added)}"
    for name in case.outputs if case.code == 0 else ():  # the umask's mode, not 0600
        assert (out / name).stat().st_mode & 0o777 == file_mode(), name
    assert not (tmp_path / "pwned").exists(), "the pickle's code ran"
    if case.check is not None:
        case.check(out, source)


def test_output_modes_follow_the_umask(tmp_path, tiny_models):
    """Outputs get the umask's normal mode (0644 under 022), not the temporary's 0600."""
    ct = _ct_with({})(tmp_path)
    old = os.umask(0o022)
    try:
        code = main(
            ["segment", str(ct), "--organ", "liver", "-q", "--no-progress",
             "-o", str(tmp_path / "m.nii.gz"), "--preview", str(tmp_path / "p.png"),
             "--report", str(tmp_path / "r.json"), "--sam-checkpoint",
             tiny_models["sam_checkpoint"], "--clip-model", tiny_models["clip_model"],
             "--device", "cpu", *FAST]
        )  # fmt: skip
    finally:
        os.umask(old)
    assert code == 0
    for name in ("m.nii.gz", "m.json", "p.png", "r.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
