"""The shared helpers that replaced per-module copies: hashes, suggestions, box growing."""

from __future__ import annotations

import numpy as np
import torch

from salip.core.errors import did_you_mean
from salip.core.hashing import file_sha256, fingerprint
from salip.engines.boxes import grow_boxes, prompt_boxes
from salip.engines.crops import expand_box


def test_fingerprint_is_canonical_json():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint(("x", {"k": 1})) == fingerprint(["x", {"k": 1}])
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_file_sha256_of_known_bytes(tmp_path):
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    assert file_sha256(path) == ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


def test_did_you_mean():
    assert did_you_mean("livr", ["liver", "spleen"]) == " Did you mean: liver?"
    assert did_you_mean("zzz", ["liver"]) == ""
    names = {"kidney_l": "kidney_left", "kidney_left": "kidney_left"}
    assert did_you_mean("kidney_lef", names, n=3, show=names.__getitem__) == (
        " Did you mean: kidney_left?"
    )


def test_grow_boxes_one_convention_for_numpy_and_torch():
    box = np.array([20.0, 10.0, 39.0, 19.0])  # 20 x 10 pixels, max corner inclusive
    grown = grow_boxes(box, 0.5)
    np.testing.assert_allclose(grown, [10.0, 5.0, 49.0, 24.0])
    torch.testing.assert_close(
        grow_boxes(torch.from_numpy(box[None]), 0.5), torch.from_numpy(grown[None])
    )
    assert expand_box(box, 0.5, 50, 60) == (10, 5, 50, 25)  # exclusive max, clipped
    prompt = prompt_boxes(torch.from_numpy(box[None]).float(), 0.5, 22, 45)
    torch.testing.assert_close(prompt, torch.tensor([[10.0, 5.0, 45.0, 22.0]]))


def test_largest_components_match_skimage_labelling():
    """scipy.ndimage.label (full connectivity) numbers components as skimage's label does,
    so the components kept, ties included, are the same as before the switch."""
    from skimage.measure import label

    from salip.strategies.assembly import keep_largest_components

    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random((12, 10, 6)) < 0.2
        labels, count = label(mask, return_num=True, connectivity=3)
        for n in (1, 2):
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            expected = (
                mask if count <= n else np.isin(labels, np.argsort(sizes, kind="stable")[::-1][:n])
            )
            np.testing.assert_array_equal(keep_largest_components(mask, n), expected)
