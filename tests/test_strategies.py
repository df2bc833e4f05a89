"""Strategies on engines: the volume view, the bounded embedding cache, the slices strategy
with simulated engines (known answers through ``salip.segment``), and the method factory.

The simulated engines are stand-ins with the roles' signatures: the encoder keeps the
display image as its "embedding", the proposer finds the bright connected components plus
a whole-slice part (which the area filter must drop), the recogniser picks the first
surviving part, and the refiner fills the box it is given. So the mask salip writes is
known exactly.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import salip
from salip.api.factory import (
    METHODS,
    CaseInput,
    Models,
    build,
    get_method,
)
from salip.apps.bench.methods import SETTINGS
from salip.core.config import MethodConfig, SegmentConfig
from salip.core.errors import ConfigError
from salip.core.organs import get_organ
from salip.core.timing import StageTimer
from salip.engines.encoder import SamEncoder
from salip.engines.everything_mode import Proposals
from salip.engines.proposer import SamProposer
from salip.engines.recogniser import ClipRecogniser, Recognition
from salip.engines.refiner import SamRefiner
from salip.io import read_input
from salip.models.sam_runtime import ImageEmbedding
from salip.strategies.cascade import Engines
from salip.strategies.embedding_cache import EmbeddingCache
from salip.strategies.slices import SlicesStrategy
from salip.strategies.volume_view import VolumeView


class ImageEncoder:
    """Encoder stand-in: the 'embedding' is the display image's first channel."""

    def __init__(self):
        self.encoded: list[int] = []  # images per encode call
        self.prepared_seen: list[object] = []
        self.indices: list[int] = []  # slice indices, in encoding order

    def prepare(self, images):
        return [int(image.sum()) for image in images]

    def encode(self, images, prepared=None, indices=None):
        self.encoded.append(len(images))
        self.prepared_seen.append(prepared)
        self.indices.extend(indices)
        return [
            ImageEmbedding(
                torch.from_numpy(image[..., 0].astype(np.float32))[None, None],
                image.shape[:2],
                image.shape[:2],
            )
            for image in images
        ]


class BrightPartsProposer:
    """Proposer stand-in: a whole-slice part, then each bright (> 128) component (it seeds
    no point, so it has no use for the regions)."""

    def propose(self, embeddings, regions=None):
        out = []
        for emb in embeddings:
            image = emb.features[0, 0].numpy()
            labels, n = ndimage.label(image > 128)
            masks = [np.ones(image.shape, dtype=bool)] + [labels == k for k in range(1, n + 1)]
            boxes = []
            for mask in masks:
                rows, cols = np.nonzero(mask)
                boxes.append([cols.min(), rows.min(), cols.max(), rows.max()])
            k = len(masks)
            out.append(
                Proposals(
                    torch.from_numpy(np.stack(masks)),
                    torch.tensor(boxes, dtype=torch.float32),
                    torch.ones(k),
                    torch.ones(k),
                    torch.zeros(k, 2),
                )
            )
        return out


class FirstPartRecogniser:
    """Recogniser stand-in: every organ takes the first proposal it is given."""

    def __init__(self):
        self.seen: list[int] = []  # proposals per slice, after the area filter

    def recognise(self, images, proposals, organs, indices=None):
        self.seen.extend(len(p) for p in proposals)
        return [
            Recognition(
                picked={o.name: [0] if len(p) else [] for o in organs},
                scores={o.name: {"clip_score": [0.5] * len(p)} for o in organs},
            )
            for p in proposals
        ]


class BoxFillRefiner:
    """Refiner stand-in: each box filled (max corner inclusive)."""

    def refine(self, embedding, boxes):
        h, w = embedding.original_size
        masks = torch.zeros((len(boxes), h, w), dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            masks[i, y0 : y1 + 1, x0 : x1 + 1] = True
        return masks, torch.full((len(boxes),), 0.75)


def simulated(config: SegmentConfig, batch_size: int = 2):
    engines = Engines(
        ImageEncoder(), BrightPartsProposer(), FirstPartRecogniser(), BoxFillRefiner()
    )
    return engines, SlicesStrategy.from_engines(engines, config, batch_size, StageTimer())


def test_simulated_engines_give_the_known_mask_of_a_2d_image(tmp_path):
    image = np.zeros((48, 64), dtype=np.uint8)
    image[20:40, 10:30] = 220  # the organ: rows 20..39, columns 10..29
    path = tmp_path / "slice_ct.png"
    Image.fromarray(image).save(path)
    options = dict(modality="ct", box_margin=0.0)
    engines, strategy = simulated(SegmentConfig().replace(**options))
    result = salip.segment(path, organs="liver", write=False, segmenter=strategy, **options)
    assert np.array_equal(result.masks["liver"].astype(bool), image > 0)
    # The whole-slice part was dropped by the area filter before recognition.
    assert engines.recogniser.seen == [1]
    (chosen,) = result.report["organs"]["liver"]["chosen"]
    assert chosen["bbox"] == [10.0, 20.0, 19.0, 19.0]  # XYWH of the XYXY box 10,20,29,39
    assert chosen["refine_iou"] == 0.75 and chosen["clip_score"] == 0.5
    assert result.report["models"] == {"injected_segmenter": "SlicesStrategy"}


def test_simulated_engines_find_a_cube_in_a_ct_volume(tmp_path):
    """A bright cube in an oblique-free but flipped CT: the mask is the cube, voxel for voxel,
    in the file's own grid, and only slices with body reach the engines."""
    data = np.full((24, 20, 12), -1000, dtype=np.int16)
    data[5:12, 8:15, 3:8] = 200
    affine = np.diag([-1.5, 1.0, 2.5, 1.0])  # x flipped: canonical order differs
    path = tmp_path / "cube.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    # The cube's cross-section is 73.5 mm², under the default speck floor (100 mm²).
    options = dict(box_margin=0.0, largest_component=False, min_area_mm2=50.0)
    engines, strategy = simulated(SegmentConfig().replace(**options), batch_size=2)
    result = salip.segment(path, organs="liver", write=False, segmenter=strategy, **options)
    assert np.array_equal(result.masks["liver"].astype(bool), data > 0)
    assert sum(engines.encoder.encoded) == 5  # the five body slices, each encoded once
    assert engines.encoder.encoded == [2, 2, 1] and engines.encoder.indices == [3, 4, 5, 6, 7]
    chosen = result.report["organs"]["liver"]["chosen"]
    assert sorted(c["slice"] for c in chosen) == [3, 4, 5, 6, 7]
    assert result.report["slicing"]["skipped_slices"] == [0, 1, 2, 8, 9, 10, 11]


def test_volume_view_is_lazy_and_knows_its_geometry(tmp_path):
    data = np.zeros((6, 5, 4), dtype=np.float32)
    data[..., 2] = 1.0
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.75, 3.0, 1.0])), path)
    volume = read_input(path)
    volume8 = (volume.data * 255).astype(np.uint8)
    body = np.array([False, True, True, False])
    view = VolumeView(volume, volume8, "axial", body)
    assert (view.count, view.slice_spacing, view.spacing) == (4, 3.0, (0.5, 0.75, 3.0))
    assert view.body_indices() == [1, 2] and view.mask_shape == (6, 5, 4)
    image = view.image(2)
    assert image.dtype == np.uint8 and image.shape == (5, 6, 3) and image.min() == 255
    assert view.image(1).max() == 0
    with pytest.raises(IndexError):
        view.image(4)
    with pytest.raises(ValueError, match="body has shape"):
        VolumeView(volume, volume8, "axial", np.ones(3, dtype=bool))
    sagittal = VolumeView(volume, volume8, "sagittal", np.ones(6, dtype=bool))
    assert (sagittal.count, sagittal.slice_spacing) == (6, 0.5)


def test_embedding_cache_encodes_each_slice_once_within_its_bound(tmp_path):
    path = tmp_path / "v.nii.gz"
    data = np.arange(8 * 8 * 5, dtype=np.float32).reshape(8, 8, 5)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    volume = read_input(path)
    view = VolumeView(volume, data.astype(np.uint8), "axial", np.ones(5, dtype=bool))
    encoder = ImageEncoder()
    cache = EmbeddingCache(view, encoder, capacity=3)
    first = cache.get([0, 1, 2], prepared="ready")
    assert encoder.encoded == [3] and encoder.prepared_seen == ["ready"]
    again = cache.get([2, 1])
    assert encoder.encoded == [3]  # nothing new encoded
    assert again[0] is first[2] and again[1] is first[1]
    # 0 is the least recently used: asking for 3 evicts it, so 0 is encoded again.
    cache.get([3])
    cache.get([0, 1], prepared="partial")  # 1 is cached: prepared inputs cannot be used
    assert encoder.encoded == [3, 1, 1] and encoder.prepared_seen[-1] is None
    assert cache.encoded == 5
    # The embedding is the view's slice when no images are given.
    expected = view.image(3)[..., 0].astype(np.float32)
    assert np.array_equal(cache.get([3])[0].features[0, 0].numpy(), expected)
    with pytest.raises(ValueError, match="capacity"):
        EmbeddingCache(view, encoder, capacity=0)


def test_slices_strategy_refuses_an_ambiguous_setup():
    engines, _ = simulated(SegmentConfig())
    with pytest.raises(ValueError, match="exactly one"):
        SlicesStrategy(batch_size=2, segmenter=lambda *a: [], engines=engines)
    with pytest.raises(ValueError, match="exactly one"):
        SlicesStrategy(batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        SlicesStrategy(batch_size=0, segmenter=lambda *a: [])
    with pytest.raises(ValueError, match="config"):
        SlicesStrategy(batch_size=2, engines=engines)


def test_every_method_and_flag_value_has_one_factory_entry():
    from salip.apps.bench.kinds import BENCH_METHODS

    assert set(SETTINGS) == set(BENCH_METHODS)  # the benchmark knows every kind's settings
    assert set(METHODS) < set(BENCH_METHODS)  # ... the product's among them
    choices = MethodConfig.__dataclass_fields__["method"].metadata["choices"]
    assert set(choices) <= set(METHODS)  # --method names a product kind
    with pytest.raises(ConfigError, match=r"Did you mean: cascade\? Valid methods: cascade, head,"):
        get_method("cascde")
    # The product's table has no evaluation kind; the benchmark's does.
    with pytest.raises(ConfigError, match="unknown method 'simulated'"):
        get_method("simulated")
    assert get_method("simulated", BENCH_METHODS).needs_label_map


def test_the_factory_builds_the_cascade_from_sam_and_clip_engines(tiny_sam_path, tiny_clip_dir):
    from salip.models.clip import load_clip
    from salip.models.sam import load_sam

    sam = load_sam(str(tiny_sam_path))
    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    case = CaseInput((get_organ("liver"),), "ct", is_2d=True)
    built = build("cascade", Models(sam, clip, "cpu"), SegmentConfig(), case)
    engines = built.strategy.engines
    assert isinstance(engines.encoder, SamEncoder) and isinstance(engines.proposer, SamProposer)
    assert isinstance(engines.recogniser, ClipRecogniser)
    assert isinstance(engines.refiner, SamRefiner)
    assert built.strategy.name == "slices" and built.identity["scoring"]["mode"] == "contrast"
    with pytest.raises(ConfigError, match="needs the CLIP model"):
        build("cascade", Models(sam, None, "cpu"), SegmentConfig(), case)
    from salip.apps.bench.kinds import BENCH_METHODS

    models = Models(sam, None, "cpu")
    baseline = build("sam-unprompted", models, SegmentConfig(), case, kinds=BENCH_METHODS)
    assert baseline.identity == {"device": "cpu", "sam": sam.identity()}


class RecordingStrategy:
    """A whole-volume strategy: marks every body slice it is shown."""

    name = "recording"
    intensity_organs = None

    def __init__(self):
        self.views = []

    def run(self, view, organs, *, progress=False):
        from salip.strategies.base import StrategyResult

        self.views.append(view)
        masks = {o.name: np.zeros(view.mask_shape, dtype=bool) for o in organs}
        for index in view.body_indices():
            masks[organs[0].name][:, :, index] = True
        return StrategyResult(masks, {o.name: [] for o in organs})


def test_segment_runs_an_injected_strategy_on_the_whole_view(tmp_path):
    data = np.full((20, 18, 6), -1000, dtype=np.int16)
    data[2:18, 2:16, 1:4] = 40
    path = tmp_path / "body.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    strategy = RecordingStrategy()
    result = salip.segment(path, organs="liver", write=False, segmenter=strategy)
    (view,) = strategy.views
    assert view.count == 6 and view.body_indices() == [1, 2, 3]
    assert result.masks["liver"].sum() == 20 * 18 * 3
    assert result.report["models"] == {"injected_segmenter": "RecordingStrategy"}
