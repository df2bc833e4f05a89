"""The prefetch thread: order, errors, look-ahead, and its use by segment()."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import salip
from salip.core.prefetch import prefetch
from tests.conftest import TOTALSEG, require_data


def test_prefetch_keeps_order_and_runs_ahead():
    started: list[int] = []
    third_started = threading.Event()

    def work(item):
        started.append(item)
        if item == 2:
            third_started.set()
        return item * 10

    results = prefetch(range(5), work, depth=2)
    assert next(results) == 0
    # While the consumer holds item 0, the items after it are prepared in the background.
    assert third_started.wait(5)
    assert list(results) == [10, 20, 30, 40]
    assert started == [0, 1, 2, 3, 4]


def test_prefetch_raises_at_the_failing_item_and_stops_early():
    def work(item):
        if item == 3:
            raise ValueError("bad slice 3")
        return item

    got = []
    with pytest.raises(ValueError, match="bad slice 3"):
        for value in prefetch(range(100), work, depth=1):
            got.append(value)
    assert got == [0, 1, 2]
    calls = []
    for _value in prefetch(range(100), calls.append, depth=1):
        break  # leaving early neither hangs nor runs the whole input
    assert len(calls) <= 3


class _PreparingSegmenter:
    """Records where prepare() ran and what the call was given."""

    def __init__(self):
        self.prepare_threads: list[str] = []
        self.received: list[list[int]] = []

    def prepare(self, images):
        self.prepare_threads.append(threading.current_thread().name)
        return [int(image.sum()) for image in images]

    def __call__(self, images, organs, indices, prepared=None):
        assert prepared == [int(image.sum()) for image in images]
        self.received.append(list(indices))
        return [{o.name: image[..., 0] > 100 for o in organs} for image in images]


def test_segment_prepares_batches_in_the_background():
    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    seg = _PreparingSegmenter()
    result = salip.segment(
        ct, organs="liver", write=False, segmenter=seg, encoder_batch_size=4, skip_empty=False
    )
    assert seg.prepare_threads and all(n.startswith("salip-prefetch") for n in seg.prepare_threads)
    assert [i for batch in seg.received for i in batch] == list(
        range(result.masks["liver"].shape[2])
    )
    assert max(len(b) for b in seg.received) == 4


def test_cascade_prepared_images_give_the_same_embeddings(tiny_sam_path):
    from salip.models.sam import load_sam
    from salip.models.sam_runtime import encode_images, resize_for_encoder

    model = load_sam(str(tiny_sam_path)).model
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8) for _ in range(3)]
    plain = encode_images(model, images, 2)
    ready = encode_images(model, images, 2, resized=resize_for_encoder(model, images))
    for a, b in zip(plain, ready, strict=True):
        assert a.input_size == b.input_size and a.original_size == b.original_size
        np.testing.assert_array_equal(a.features.numpy(), b.features.numpy())
    with pytest.raises(ValueError, match="2 resized images for 3"):
        encode_images(model, images, 2, resized=resize_for_encoder(model, images[:2]))
