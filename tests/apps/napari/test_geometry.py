"""The plugin's geometry without Qt: layers on the input grid, their affine, hints read
from napari's data coordinates."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from salip.apps.napari.geometry import (
    WORLD_FROM_RAS,
    from_layer,
    hints_from_layers,
    layer_affine,
    to_layer,
)
from salip.core.hints import Hint, read_hints
from salip.io import read_input
from tests.conftest import TOTALSEG, require_data


def test_layer_coordinates_are_the_input_voxels_and_the_affine_its_world(tmp_path):
    """On a permuted, flipped, anisotropic file: a layer voxel (slice, y, x) is file voxel
    (x, y, slice) for axial slices along k, and the layer affine sends it to the file
    affine's world point, reordered (superior, posterior, left)."""
    affine = np.array([[-0.8, 0, 0, 30.0], [0, 1.5, 0, -20.0], [0, 0, -3.0, 50.0], [0, 0, 0, 1.0]])
    data = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    path = tmp_path / "grid.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    volume = read_input(path)
    layer = to_layer(data, volume)
    assert layer.shape == (4, 5, 6) and layer[3, 2, 1] == data[1, 2, 3]
    assert np.array_equal(from_layer(layer, volume), data)
    world = layer_affine(volume) @ [3, 2, 1, 1]
    np.testing.assert_allclose(world, WORLD_FROM_RAS @ affine @ [1, 2, 3, 1])


def test_the_dicom_series_layer_matches_its_mask_grid():
    series = require_data(TOTALSEG / "example_ct_dicom_uids")
    mask = nib.load(require_data(TOTALSEG / "example_seg_dicom.nii.gz"))
    volume = read_input(series)
    np.testing.assert_allclose(volume.geometry.affine, mask.affine, atol=1e-3)
    assert to_layer(np.asarray(mask.dataobj), volume).shape == (20, 512, 512)


def test_hints_from_shapes_and_points():
    rectangle = np.array([[15, 30, 20], [15, 30, 70], [15, 80.4, 70], [15, 80, 20]], float)
    hints = hints_from_layers("liver", [rectangle], [(np.array([15.2, 40, 50]), False)])
    assert hints == [
        Hint("liver", 15, (20.0, 30.0, 70.0, 80.0)),
        Hint("liver", 15, None, ((50.0, 40.0, False),)),
    ]
    assert read_hints(hints)[0].points == ((50.0, 40.0, False),)  # joined on slice 15
    (flat,) = hints_from_layers("liver", [], [(np.array([7, 9]), True)])  # a 2D image
    assert flat == Hint("liver", 0, None, ((9.0, 7.0, True),))
