"""Patient left/right on real volumes in several orientations, against reference masks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from salip.core.config import SliceConfig
from salip.core.organs import get_organ
from salip.engines.laterality import body_midline
from salip.io import read_input
from salip.io.slicing import choose_intensity, iter_slices, to_display, to_uint8
from tests.conftest import TOTALSEG, require_data

# (image, reference mask, label table): kidney_left / kidney_right label values.
CASES = {
    "ct_ras": ("example_ct_sm.nii.gz", "example_seg.nii.gz", {"left": 3, "right": 2}),
    "mr_lps": ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz", {"left": 3, "right": 2}),
}


def _flip_lr(src, dst):
    """A copy with the first (left-right) voxel axis reversed: LAS instead of RAS."""
    img = nib.load(src)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = img.shape[0] - 1
    out = nib.Nifti1Image(np.asarray(img.dataobj)[::-1], img.affine @ flip, img.header)
    nib.save(out, dst)
    return dst


@pytest.mark.parametrize("case", ["ct_ras", "mr_lps", "ct_las"])
def test_kidneys_fall_on_the_patients_side_of_the_midline(case, tmp_path):
    name, seg_name, labels = CASES["ct_ras" if case == "ct_las" else case]
    image_path = require_data(TOTALSEG / name)
    seg_path = require_data(TOTALSEG / seg_name)
    if case == "ct_las":
        image_path = _flip_lr(image_path, tmp_path / "ct_las.nii.gz")
        seg_path = _flip_lr(seg_path, tmp_path / "seg_las.nii.gz")
    volume, seg = read_input(image_path), read_input(seg_path)
    organ = get_organ("kidney_left")
    volume8 = to_uint8(volume, choose_intensity(volume, [organ], SliceConfig()), SliceConfig())
    checked = 0
    for index, image in iter_slices(volume8, False, "axial"):
        ref = to_display(seg.data[:, :, index])
        midline = body_midline(image)
        for side, value in labels.items():
            cols = np.nonzero(ref == value)[1]
            if cols.size < 20:
                continue
            # Radiological display: the patient's left kidney lies right of the midline.
            assert (cols.mean() > midline) == (side == "left"), (case, index, side)
            checked += 1
    assert checked >= 10  # the volumes do show both kidneys on many slices
